"""Ablations of the demo's alignment on the embedded tiny model (the tables in docs/embedded-model.md).

    python scripts/demo_ablation.py pool --out outputs/ablation             # 256 captions x 8 images, scored
    python scripts/demo_ablation.py pool --model FOLDER --out outputs/other  # another base model: pass the same
                                                                           # --model to its variants
    python scripts/demo_ablation.py variant NAME --captions 256 --images 4 --out outputs/ablation \\
        [--selection all|best-worst] [--margin 2] [--label-scorer SPEC] [--pairs FILE] [key=value ...]
    python scripts/demo_ablation.py ground-truth --out outputs/ablation    # pairs whose winner is a true render
    python scripts/demo_ablation.py synth --captions 128 --images 4 --out outputs/ranked   # ranked data + pairs
    python scripts/demo_ablation.py variant NAME --ranked FILE --out outputs/ranked [key=value ...]   # RankDPO
    python scripts/demo_ablation.py variant NAME --trainer draft|d3po --out outputs/ranked [key=value ...]
    python scripts/demo_ablation.py person-labels --label-dir DIR    # labels.jsonl written by the checker as a "person"

``pool`` generates the training samples once (the demo's generation settings, seed 0; the first 64
and 128 captions are the demo's own), scores them with shapes-clip and the checker, and generates
the base model's images for the held-out ``shapes-demo`` captions (4 seeds) and for 36 training
captions with new seeds. ``variant`` labels pairs from the first ``--captions`` captions and first
``--images`` images of each (or takes ``--pairs``), trains DPO with assets/configs/shapes-dpo.yaml
plus the overrides, generates the aligned images on both prompt sets with the same seeds, and
appends paired differences and win rates against the base to ``OUT/results.jsonl`` (for the three
demo scorers, and for ``--label-scorer`` when it is another one, e.g. ``shapes-area``).

``synth`` makes the data of the DPO / RankDPO / Curriculum DPO comparison (docs/embedded-model.md)
with ``diffalign data synth``'s code: ``--images`` samples for each of the first ``--captions``
training captions, ranked by shapes-clip (``OUT/synth/ranked-00000-of-00001.jsonl``), and their pairs
with a shapes-clip gap above ``--margin`` (``OUT/synth/pairs.jsonl``, score gap as the curriculum
difficulty); it also makes the base runs if ``pool`` has not. ``variant --ranked FILE`` trains
ranked DPO on those records instead of pairs; ``variant --trainer draft|d3po`` trains the online
methods (assets/configs/tiny-draft.yaml / tiny-d3po.yaml plus the overrides) on the synth captions.
``person-labels`` stands in for a person on a folder of ``diffalign label sample``: it ranks each
prompt's images by the shapes checker and marks those with no attribute right as bad.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from diffalign.config import load_config
from diffalign.demo import CHECKER, CHECKER_FRACTION, SCORER, _quiet_diffusers, training_captions, write_pairs
from diffalign.evaluation.generate import GenerationSettings, generate_images, load_eval_pipeline, write_text_atomic
from diffalign.evaluation.prompts import load_prompt_set
from diffalign.evaluation.runs import compare_runs
from diffalign.evaluation.scoring import read_scores, score_run
from diffalign.paths import asset
from diffalign.scorers import parse_scorer_spec

DEFAULT_MODEL = str(asset("models", "shapes-sd"))
GENERATION = dict(num_inference_steps=20, guidance_scale=5.0, height=64, width=64, batch_size=32)
SCORERS = [SCORER, CHECKER, CHECKER_FRACTION]
POOL_CAPTIONS, POOL_IMAGES, TRAIN_EVAL_CAPTIONS = 256, 8, 36


def prompt_file(path: Path, captions: list[str]):
    write_text_atomic(path, "".join(json.dumps({"prompt": caption}) + "\n" for caption in captions))
    return load_prompt_set(f"jsonl:{path}")


def generate_and_score(pipeline, prompts, run: Path, images: int, seed: int, name: str, model: str,
                       scorers: list[str] = SCORERS) -> Path:
    settings = GenerationSettings(images_per_prompt=images, seed=seed, **GENERATION)
    generate_images(pipeline, prompts, run, settings, run_info={"model": model, "name": name})
    score_run(run, scorers)
    return run


def pool_captions() -> list[str]:
    return training_captions(POOL_CAPTIONS, 0, {record.text for record in load_prompt_set("shapes-demo")})


def make_base(out: Path, pipeline, captions: list[str], model: str) -> None:
    """The base model's images on the held-out captions and on 36 training captions (new seeds)."""
    generate_and_score(pipeline, load_prompt_set("shapes-demo"), out / "held-out-base", 4, 1000, "base", model)
    generate_and_score(pipeline, prompt_file(out / "train-eval-prompts.jsonl", captions[:TRAIN_EVAL_CAPTIONS]),
                       out / "train-eval-base", 4, 2000, "base", model)


def make_pool(out: Path, model: str) -> None:
    captions = pool_captions()
    pipeline = load_eval_pipeline(model, device="cpu")
    generate_and_score(pipeline, prompt_file(out / "pool-prompts.jsonl", captions), out / "pool", POOL_IMAGES, 0,
                       "pool", model)
    make_base(out, pipeline, captions, model)


def make_ranked(out: Path, captions: int, images: int, margin: float, model: str) -> None:
    """Ranked records of the first ``captions`` pool captions (``images`` samples each, seed 0) and their pairs."""
    from diffalign.data.ranked import ranked_to_pairs, read_ranked_jsonl
    from diffalign.data.synth import synthesize_ranked

    chosen = pool_captions()
    prompts = prompt_file(out / "synth-prompts.jsonl", chosen[:captions])
    ranked = synthesize_ranked(prompts, {"shapes-sd": model}, [SCORER], out / "synth",
                               GenerationSettings(images_per_prompt=images, seed=0, **GENERATION), device="cpu")
    rows = ranked_to_pairs(read_ranked_jsonl(ranked), "all", margin, "score", SCORER)
    write_text_atomic(out / "synth" / "pairs.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    print(f"{ranked}: {captions} records; {len(rows)} pairs -> {out / 'synth' / 'pairs.jsonl'}")
    make_base(out, load_eval_pipeline(model, device="cpu"), chosen, model)


def write_ground_truth_pairs(out: Path) -> Path:
    """``OUT/ground-truth/pairs.jsonl``: for every pool caption a procedural render that matches it (the
    winner) against the model's first sample (for the SFT control: training on correct images)."""
    import random

    from diffalign import shapes

    folder = out / "ground-truth"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng, lines = random.Random(5), []
    captions = [json.loads(line)["prompt"] for line in (out / "pool-prompts.jsonl").read_text().splitlines()]
    for index, caption in enumerate(captions):
        scene = next(scene for scene in iter(lambda: shapes.sample_scene(rng), None) if scene.caption == caption)
        image = folder / "images" / f"{index:05d}.png"
        shapes.render(scene, rng).save(image)
        sample = out / "pool" / "images" / f"{index:05d}_00.png"
        lines.append(json.dumps({"caption": caption, "image_0": str(image.resolve()), "image_1": str(sample.resolve()),
                                 "label_0": 1.0}))
    write_text_atomic(folder / "pairs.jsonl", "\n".join(lines) + "\n")
    return folder / "pairs.jsonl"


def train_online(out: Path, folder: Path, trainer: str, overrides: list[str], model: str) -> dict:
    """DRaFT-family (``draft``) or D3PO (``d3po``) training on the synth captions, with the tiny configs."""
    from diffalign.config import D3PORunConfig, RewardRunConfig
    from diffalign.training.d3po import train_d3po
    from diffalign.training.reward import train_reward

    config_class, train, file = {"draft": (RewardRunConfig, train_reward, "tiny-draft.yaml"),
                                 "d3po": (D3PORunConfig, train_d3po, "tiny-d3po.yaml")}[trainer]
    config = load_config(asset("configs", file), [
        f"model.pretrained={model}", f"prompts.train=jsonl:{out / 'synth-prompts.jsonl'}",
        f"output_dir={folder / 'dpo'}", "train.seed=0", *overrides], cls=config_class)
    return train(config)


def write_person_labels(folder: Path) -> Path:
    """A script standing in for a person on a label folder: ranks each prompt's images by the shapes checker's
    share of attributes right (ties share a rank) and marks images with no attribute right as bad."""
    from diffalign.scorers import get_scorer
    from PIL import Image

    checker = get_scorer(CHECKER_FRACTION)
    lines = []
    for line in (folder / "prompts.jsonl").read_text().splitlines():
        row = json.loads(line)
        images = [Image.open(folder / image).convert("RGB") for image in row["images"]]
        shares = checker(images, [row["prompt"]] * len(images)).tolist()
        ranks = [1 + sum(other > share for other in shares) for share in shares]
        bad = [share == 0 for share in shares]
        lines.append(json.dumps({"annotator": "checker-script", "prompt_id": row["prompt_id"],
                                 "ranks": [None if b else r for r, b in zip(ranks, bad)], "bad": bad}))
    write_text_atomic(folder / "labels.jsonl", "\n".join(lines) + "\n")
    return folder / "labels.jsonl"


def run_variant(out: Path, name: str, captions: int, images: int, selection: str, margin: float,
                pairs_file: str | None, ranked_file: str | None, overrides: list[str], trainer: str = "dpo",
                label_scorer: str = SCORER, model: str = DEFAULT_MODEL) -> dict:
    start = time.perf_counter()
    folder = out / name
    for stale in ("dpo", "held-out", "train-eval"):
        shutil.rmtree(folder / stale, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    data = [f"data.path={folder / 'pairs.jsonl'}"]
    if trainer != "dpo":
        labels = {}
    elif ranked_file:
        labels = {}
        data = [f"data.path={Path(ranked_file).resolve()}", "data.format=ranked", "train.objective=rank"]
    elif pairs_file:
        shutil.copy(pairs_file, folder / "pairs.jsonl")
        labels = {}
    else:
        pool = read_scores(out / "pool")
        keep = pool["prompt_id"].isin(list(dict.fromkeys(pool["prompt_id"]))[:captions]) & (pool["sample"] < images)
        table = pool[keep].assign(image=lambda t: [str((out / "pool" / image).resolve()) for image in t["image"]])
        if label_scorer not in table.columns:  # e.g. a preference-tuned scorer: shapes-clip:model=FOLDER
            from PIL import Image

            from diffalign.scorers import get_scorer

            images = [Image.open(path).convert("RGB") for path in table["image"]]
            table[label_scorer] = get_scorer(label_scorer, device="cpu")(images, table["prompt"].tolist()).tolist()
        labels = write_pairs(table, folder, label_scorer, margin, selection)
    from diffalign.training import train_dpo

    if trainer == "dpo":
        config = load_config(asset("configs", "shapes-dpo.yaml"), [
            f"model.pretrained={model}", *data, f"output_dir={folder / 'dpo'}",
            f"cache.dir={out / 'cache'}", "train.seed=0", *overrides])
        final = train_dpo(config)
    else:
        final = train_online(out, folder, trainer, overrides, model)
    if not any(item == "lora.enabled=false" for item in overrides):
        pipeline = load_eval_pipeline(model, device="cpu")
        with _quiet_diffusers():
            pipeline.load_lora_weights(folder / "dpo")
    else:
        pipeline = load_eval_pipeline(model, device="cpu", unet=str(folder / "dpo" / "unet"))
    result = {"name": name, "model": model, "captions": captions, "images": images, "selection": selection,
              "margin": margin, "label_scorer": label_scorer,
              "pairs_file": pairs_file, "ranked_file": ranked_file, "trainer": trainer, "overrides": overrides,
              "labels": labels, "final_loss": final.get("loss"), "final": final}
    evaluations = [("held_out", load_prompt_set("shapes-demo"), 1000),
                   ("train_eval", load_prompt_set(f"jsonl:{out / 'train-eval-prompts.jsonl'}"), 2000)]
    names = [parse_scorer_spec(spec)[0] for spec in SCORERS]
    scorers = list(SCORERS)
    if trainer == "dpo" and parse_scorer_spec(label_scorer)[0] not in names:
        scorers.append(label_scorer)
        names.append(parse_scorer_spec(label_scorer)[0])
    for tag, prompts, seed in evaluations:
        run_name = tag.replace("_", "-")
        run = generate_and_score(pipeline, prompts, folder / run_name, 4, seed, "dpo", model, scorers)
        base = out / f"{run_name}-base"
        score_run(base, scorers)  # scores the base with a new label scorer too (e.g. shapes-area)
        comparison = compare_runs(run, base)
        result[tag] = {name: {"difference": comparison["scorers"][name]["mean_difference"],
                              "win_rate": comparison["scorers"][name]["win_rate"]}
                       for name in names}
    result["minutes"] = (time.perf_counter() - start) / 60
    with (out / "results.jsonl").open("a") as handle:
        handle.write(json.dumps(result, default=str) + "\n")
    print(json.dumps(result, indent=1, default=str))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["pool", "ground-truth", "synth", "variant", "person-labels"])
    parser.add_argument("name", nargs="?", help="variant name (its folder under --out)")
    parser.add_argument("--out", default="outputs/ablation")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="the base pipeline folder (default: the embedded shapes-sd); use one --out per model")
    parser.add_argument("--captions", type=int, default=POOL_CAPTIONS)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--selection", default="all", choices=["all", "best-worst"])
    parser.add_argument("--margin", type=float, default=2.0)
    parser.add_argument("--pairs", help="train on this pairs JSONL instead of labelling the pool")
    parser.add_argument("--label-scorer", default=SCORER,
                        help="scorer spec that labels the pool's pairs: a column of pool/scores.csv (shapes-clip, "
                             "shapes-checker-fraction for oracle labels) or any scorer spec, scored on the fly")
    parser.add_argument("--ranked", help="train ranked DPO on this ranked JSONL instead of pairs")
    parser.add_argument("--trainer", choices=["dpo", "draft", "d3po"], default="dpo",
                        help="draft / d3po: the online trainers with assets/configs/tiny-{draft,d3po}.yaml")
    parser.add_argument("--label-dir", help="person-labels: the label folder of `diffalign label sample`")
    args, overrides = parser.parse_known_args()
    names = [item for item in overrides if "=" not in item and not item.startswith("-")]
    if args.name is None and names:  # argparse leaves a name given after the options among the unknown arguments
        args.name = names[0]
        overrides.remove(names[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.command == "pool":
        make_pool(out, args.model)
    elif args.command == "ground-truth":
        print(write_ground_truth_pairs(out))
    elif args.command == "synth":
        make_ranked(out, args.captions, args.images, args.margin, args.model)
    elif args.command == "person-labels":
        print(write_person_labels(Path(args.label_dir)))
    elif not args.name:
        parser.error("variant needs a NAME")
    else:
        run_variant(out, args.name, args.captions, args.images, args.selection, args.margin, args.pairs, args.ranked,
                    overrides, args.trainer, args.label_scorer, args.model)


if __name__ == "__main__":
    main()
