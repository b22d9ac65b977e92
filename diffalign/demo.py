"""``diffalign demo``: align the embedded tiny model to the embedded tiny scorer, offline, on a CPU.

The base model is assets/models/shapes-sd (a 64 px Stable-Diffusion-architecture pipeline trained by
scripts/pretrain_tiny.py on the procedural scenes of :mod:`diffalign.shapes`); the preference
scorer is assets/models/shapes-clip (scripts/pretrain_tiny_scorer.py). The demo:

1. samples training captions from the shapes grammar (none of them in the held-out prompt set);
2. generates K images per caption with recorded seeds (``diffalign eval generate``'s code);
3. scores them with ``shapes-clip`` and turns each caption's K scores into preference pairs
   (all pairs, ties within ``margin`` dropped) in the JSONL pair format;
4. trains a LoRA with each chosen method (:data:`METHODS`; default Diffusion-DPO on the pairs,
   assets/configs/shapes-dpo.yaml, through the latent cache; RankDPO on the ranked samples; DRaFT-K
   and D3PO online, on rollouts of the training captions);
5. generates base and aligned images on the held-out ``shapes-demo`` prompts with the same seeds,
   scores them with the scorer and the programmatic checker, and writes the HTML report: paired
   win rates and means with bootstrap CIs against the base, a before/after grid and the training
   curves of every method.

Everything lands in ``out``; ``demo_summary.json`` holds the numbers that are printed.
"""

from __future__ import annotations

import json
import random
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from diffalign import shapes
from diffalign.config import load_config
from diffalign.data.selectors import select_pairs
from diffalign.evaluation.generate import GenerationSettings, generate_images, load_eval_pipeline, write_text_atomic
from diffalign.evaluation.prompts import load_prompt_set
from diffalign.evaluation.runs import report_runs
from diffalign.evaluation.scoring import score_run
from diffalign.paths import asset

SCORER = "shapes-clip"
CHECKER = "shapes-checker"
CHECKER_FRACTION = "shapes-checker-fraction"


@dataclass
class DemoSettings:
    """What the demo does; the defaults are the README's run (minutes on a 2-core CPU)."""

    model: str | None = None  # None: the embedded assets/models/shapes-sd
    train_prompts: int = 64
    images_per_prompt: int = 4
    eval_prompts: str = "shapes-demo"
    eval_images_per_prompt: int = 4
    eval_limit: int | None = None
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    margin: float = 2.0
    dpo_steps: int = 600  # dpo and rank-dpo; the online methods' steps are in METHODS
    seed: int = 0
    methods: tuple[str, ...] = ("dpo",)


@dataclass(frozen=True)
class DemoMethod:
    """One alignment method of the demo: how to name it, which config it starts from, the overrides that fit
    it into the demo's budget and the metrics.jsonl curves its report shows ((key, title) pairs)."""

    title: str
    config: str
    demo_overrides: tuple[str, ...]
    curves: tuple[tuple[str, str], ...]


_DPO_CURVES = (("loss", "loss (log 2 at step 0)"), ("implicit_acc", "implicit accuracy"))
METHODS = {
    "dpo": DemoMethod("Diffusion-DPO", "shapes-dpo.yaml", (),
                      (*_DPO_CURVES, ("implicit_reward", "mean implicit reward margin"))),
    "rank-dpo": DemoMethod("RankDPO (LiPO-lambda weights)", "shapes-dpo.yaml",
                           ("data.format=ranked", "train.objective=rank"),
                           (*_DPO_CURVES, ("implicit_score", "mean implicit score"))),
    "draft-k": DemoMethod("DRaFT-K", "tiny-draft.yaml", ("train.max_steps=60", "logging.every=10"),
                          (("reward", f"{SCORER} reward of the rollouts"),
                           (f"aux/{CHECKER_FRACTION}", "checker: share right (rollouts)"))),
    "d3po": DemoMethod("D3PO", "tiny-d3po.yaml", ("train.max_steps=30", "d3po.timestep_fraction=0.25"),
                       (("loss", "loss (log 2 at step 0)"), ("implicit_acc", "implicit accuracy"),
                        (f"sample/{SCORER}", f"{SCORER} of the rollouts"))),
}


def training_captions(count: int, seed: int, exclude: set[str]) -> list[str]:
    """``count`` distinct captions from the shapes grammar, none of them in ``exclude``."""
    rng, captions = random.Random(seed), []
    for _ in range(100 * count):
        caption = shapes.sample_scene(rng).caption
        if caption not in exclude and caption not in captions:
            captions.append(caption)
        if len(captions) == count:
            return captions
    raise ValueError(f"could not draw {count} distinct training captions outside the held-out set")


def write_pairs(table, run_dir: Path, scorer: str, margin: float, selection: str = "all") -> dict:
    """``run_dir/pairs.jsonl`` from a scored run (``selection`` pairs per prompt, labels from ``scorer``).

    Returns counts; how often the scorer's preference agrees with the checker's where the checker
    tells the two images apart (label quality); and the checker's numbers over all samples and over
    the scorer's top image of each caption (best-of-K: how far picking by the scorer moves the
    checker on the model's own samples, a rough ceiling for what learning from these labels gains).
    """
    lines, agree, decided, best = [], 0, 0, []
    for _, group in table.groupby("prompt_id", sort=False):
        group = group.sort_values("sample")
        best.append(group.loc[group[scorer].idxmax()])
        for winner, loser in select_pairs(group[scorer].tolist(), selection, margin):
            win, lose = group.iloc[winner], group.iloc[loser]
            lines.append(json.dumps({"caption": win["prompt"], "image_0": win["image"], "image_1": lose["image"],
                                     "label_0": 1.0, "gap": float(win[scorer] - lose[scorer])}))
            if win[CHECKER_FRACTION] != lose[CHECKER_FRACTION]:
                decided += 1
                agree += int(win[CHECKER_FRACTION] > lose[CHECKER_FRACTION])
    write_text_atomic(run_dir / "pairs.jsonl", "\n".join(lines) + "\n")
    return {"pairs": len(lines), "checker_decided_pairs": decided,
            "label_agreement_with_checker": agree / decided if decided else None,
            "samples": {name: {"mean": float(table[name].mean()),
                               "best_of_k": float(sum(row[name] for row in best) / len(best))}
                        for name in (scorer, CHECKER, CHECKER_FRACTION)}}


def plot_training_curves(metrics_file: Path, curves: tuple[tuple[str, str], ...], title: str, path: Path) -> Path:
    """The ``curves`` ((metrics.jsonl key, panel title) pairs) of one training run as one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    figure = Figure(figsize=(3 * len(curves), 3.2))
    FigureCanvasAgg(figure)
    for axis, (key, label) in zip(figure.subplots(1, len(curves), squeeze=False)[0], curves):
        logged = [row for row in rows if key in row]
        axis.plot([row["step"] for row in logged], [row[key] for row in logged])
        axis.set_title(label, fontsize=10)
        axis.set_xlabel("optimizer step")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def split_overrides(overrides: list[str], methods: list[str]) -> dict[str, list[str]]:
    """``METHOD:key=value`` goes to that method, a plain ``key=value`` to the DPO-family methods (dpo, rank-dpo)."""
    routed = {method: [] for method in methods}
    for item in overrides:
        method, separator, setting = item.partition(":")
        if not separator:
            for name in methods:
                if METHODS[name].config == "shapes-dpo.yaml":
                    routed[name].append(item)
        elif method not in routed:
            raise ValueError(f"override {item!r} names method {method!r}, which is not among the demo's methods "
                             f"{methods}")
        else:
            routed[method].append(setting)
    return routed


def train_method(method: str, out: Path, settings: DemoSettings, samples: Path, table, prompt_file: Path,
                 overrides: list[str]) -> dict:
    """Train one demo method into ``out/METHOD`` (a LoRA folder) from the labelled samples (dpo, rank-dpo) or
    from rollouts on the training captions (draft-k, d3po); returns its final metrics."""
    spec = METHODS[method]
    common = [f"model.pretrained={settings.model}", f"output_dir={out / method}", f"train.seed={settings.seed}"]
    if spec.config == "shapes-dpo.yaml":
        from diffalign.training import train_dpo

        if method == "rank-dpo":
            from diffalign.data.ranked import write_ranked_jsonl
            from diffalign.data.synth import ranked_records

            ranked = table.assign(image=[str((samples / image).resolve()) for image in table["image"]], source="base")
            data = write_ranked_jsonl(ranked_records(ranked, [SCORER]), samples / "ranked.jsonl")
            # as many denoising passes per step as DPO's 8 pairs: 16 images, K per record
            batch = [f"train.batch_size={max(1, 16 // settings.images_per_prompt)}"]
        else:
            data, batch = samples / "pairs.jsonl", []
        config = load_config(asset("configs", spec.config), [
            *common, f"data.path={data}", f"cache.dir={out / 'cache'}", f"train.max_steps={settings.dpo_steps}",
            *spec.demo_overrides, *batch, *overrides])
        if method == "dpo":
            pairs = sum(1 for line in Path(data).read_text().splitlines() if line.strip())
            if pairs < config.train.batch_size:
                raise ValueError(
                    f"the {SCORER} labels of {data} hold {pairs} preference pairs, fewer than one DPO batch "
                    f"({config.train.batch_size}): the model's {settings.images_per_prompt} images of a caption score "
                    f"within --margin {settings.margin} of each other. Lower --margin, raise --images-per-prompt "
                    f"or --train-prompts, or choose a less finished base model.")
        return train_dpo(config)
    from diffalign.config import D3PORunConfig, RewardRunConfig

    online = [f"prompts.train=jsonl:{prompt_file}", "prompts.held_out=''",
              f"sampling.num_inference_steps={settings.num_inference_steps}",
              f"sampling.guidance_scale={settings.guidance_scale}", *spec.demo_overrides, *overrides]
    if method == "draft-k":
        from diffalign.training.reward import train_reward

        return train_reward(load_config(asset("configs", spec.config), [*common, *online], cls=RewardRunConfig))
    from diffalign.training.d3po import train_d3po

    return train_d3po(load_config(asset("configs", spec.config), [*common, *online], cls=D3PORunConfig))


def run_demo(out: str | Path, settings: DemoSettings | None = None, overrides: list[str] | None = None) -> dict:
    """Run the demo into ``out``; returns the summary (also written to ``out/demo_summary.json``).

    ``overrides``: ``key=value`` settings of the DPO config (assets/configs/shapes-dpo.yaml) for dpo and
    rank-dpo; ``METHOD:key=value`` for one method's config. Re-run into the same folder, the training samples
    and the base model's images are reused (generation and scoring resume); training and the aligned models'
    images start afresh.
    """
    settings = settings or DemoSettings()
    if settings.model is None:
        settings = replace(settings, model=str(asset("models", "shapes-sd")))
    methods = list(settings.methods)
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown demo methods {unknown}: choose from {list(METHODS)}" if unknown
                         else "give at least one demo method")
    routed = split_overrides(list(overrides or []), methods)
    out = Path(out).resolve()
    held_out = load_prompt_set(settings.eval_prompts).subset(limit=settings.eval_limit)
    captions = training_captions(settings.train_prompts, settings.seed, {record.text for record in held_out})
    prompt_file = out / "train-prompts.jsonl"
    prompt_file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(prompt_file, "".join(json.dumps({"prompt": text}) + "\n" for text in captions))

    generation = dict(num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                      height=shapes.SIZE, width=shapes.SIZE, batch_size=16)
    pipeline = load_eval_pipeline(settings.model, device="cpu")
    print(f"[1/4] generating {settings.images_per_prompt} images for each of {len(captions)} training captions")
    samples = generate_images(pipeline, load_prompt_set(f"jsonl:{prompt_file}"), out / "samples",
                              GenerationSettings(images_per_prompt=settings.images_per_prompt, seed=settings.seed,
                                                 **generation), run_info={"model": settings.model, "name": "samples"})
    print(f"[2/4] labelling them with the {SCORER} scorer")
    table = score_run(samples, [SCORER, CHECKER, CHECKER_FRACTION])
    labels = write_pairs(table, samples, SCORER, settings.margin)

    training, figures = {}, []
    for number, method in enumerate(methods, 1):
        spec = METHODS[method]
        for stale in (out / method, out / "eval" / method):  # training starts afresh, so do the aligned images
            shutil.rmtree(stale, ignore_errors=True)
        data = {"dpo": f" on {labels['pairs']} pairs", "rank-dpo": f" on {len(captions)} ranked captions"}
        print(f"[3/4] training {spec.title}{data.get(method, ' on rollouts of the training captions')}"
              f" ({number}/{len(methods)})")
        training[method] = train_method(method, out, settings, samples, table, prompt_file, routed[method])
        figures.append((f"{spec.title} training curves", plot_training_curves(
            out / method / "metrics.jsonl", spec.curves, spec.title, out / method / "training_curves.png")))

    print(f"[4/4] evaluating the base and aligned models on {len(held_out)} held-out prompts")
    evaluation = GenerationSettings(images_per_prompt=settings.eval_images_per_prompt, seed=settings.seed + 1000,
                                    **generation)
    runs = [generate_images(pipeline, held_out, out / "eval" / "base", evaluation,
                            run_info={"model": settings.model, "name": "base"})]
    for method in methods:
        with _quiet_diffusers():  # its "no LoRA keys for the text encoder" notice is expected: only the UNet is trained
            pipeline.load_lora_weights(out / method)
        runs.append(generate_images(pipeline, held_out, out / "eval" / method, evaluation,
                                    run_info={"model": settings.model, "lora": str(out / method), "name": method}))
        pipeline.unload_lora_weights()
    for run in runs:
        score_run(run, [SCORER, CHECKER, CHECKER_FRACTION])
    titles = ", ".join(METHODS[method].title for method in methods)
    report = report_runs(runs, out / "report", title=f"diffalign demo: {titles} on the tiny model",
                         grid_prompts=12, grid_samples=2, figures=figures)
    document = json.loads((report.parent / "summary.json").read_text())  # every run, each compared with the base
    summaries = {summary["run"]: summary for summary in document["runs"]}
    held_out_results = {scorer: {"base": summaries["base"]["scorers"][scorer]["overall"], "methods": {
        method: {"aligned": summaries[method]["scorers"][scorer]["overall"], "vs_base": comparison["scorers"][scorer]}
        for method, comparison in zip(methods, document["comparisons"])}}
        for scorer in (SCORER, CHECKER, CHECKER_FRACTION)}
    summary = {
        "settings": asdict(settings), "labels": labels, "held_out": held_out_results, "report": str(report),
        "methods": {method: {"config": str(out / method / "config.yaml"), "final_training_metrics": training[method]}
                    for method in methods},
    }
    write_text_atomic(out / "demo_summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    print(format_demo_summary(summary))
    return summary


@contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def format_demo_summary(summary: dict) -> str:
    labels = summary["labels"]
    agreement = labels["label_agreement_with_checker"]
    lines = ["", "diffalign demo finished",
             f"  labels: {labels['pairs']} pairs from {SCORER}; where the checker tells a pair apart, the scorer "
             f"agrees with it {'n/a' if agreement is None else f'{agreement:.0%}'} of the time",
             "  training samples, checker all right: mean {mean:.3f}, the scorer's top image per caption "
             "{best_of_k:.3f}".format(**labels["samples"][CHECKER]),
             "  held-out prompts, aligned vs base, same seeds, 95% cluster-bootstrap CIs:"]
    names = {SCORER: f"{SCORER} score", CHECKER: "checker: all attributes right",
             CHECKER_FRACTION: "checker: share of attributes right"}
    for scorer, result in summary["held_out"].items():
        lines.append(f"    {names[scorer]:<36} base {_ci(result['base'])}")
        for method, outcome in result["methods"].items():
            win, difference = outcome["vs_base"]["win_rate"], outcome["vs_base"]["mean_difference"]
            lines.append(f"      {method:<10} {_ci(outcome['aligned'])}  difference {_ci(difference, '+.3f')}  "
                         f"win rate {win['rate']:.2f} [{win['low']:.2f}, {win['high']:.2f}]")
    lines.append(f"  report: {summary['report']}")
    return "\n".join(lines)


def _ci(value: dict, number: str = ".3f") -> str:
    return f"{value['mean']:{number}} [{value['low']:{number}}, {value['high']:{number}}]"
