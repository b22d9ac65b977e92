"""``diffalign demo``: align the embedded tiny model to the embedded tiny scorer, offline, on a CPU.

The base model is assets/models/shapes-sd (a 64 px Stable-Diffusion-architecture pipeline trained by
scripts/pretrain_tiny.py on the procedural scenes of :mod:`diffalign.shapes`); the preference
scorer is assets/models/shapes-clip (scripts/pretrain_tiny_scorer.py). The demo:

1. samples training captions from the shapes grammar (none of them in the held-out prompt set);
2. generates K images per caption with recorded seeds (``diffalign eval generate``'s code);
3. scores them with ``shapes-clip`` and turns each caption's K scores into preference pairs
   (all pairs, ties within ``margin`` dropped) in the JSONL pair format;
4. trains a Diffusion-DPO LoRA on them (assets/configs/shapes-dpo.yaml, through the latent cache);
5. generates base and aligned images on the held-out ``shapes-demo`` prompts with the same seeds,
   scores them with the scorer and the programmatic checker, and writes the HTML report: paired
   win rates and means with bootstrap CIs, a before/after grid and the training curves.

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
from diffalign.evaluation.runs import compare_runs, report_runs
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
    dpo_steps: int = 200
    seed: int = 0


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


def plot_training_curves(metrics_file: Path, path: Path) -> Path:
    """Loss and implicit accuracy of the DPO run (metrics.jsonl) as one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    steps = [row["step"] for row in rows]
    figure = Figure(figsize=(9, 3.2))
    FigureCanvasAgg(figure)
    for axis, key, label in zip(figure.subplots(1, 3), ("loss", "implicit_acc", "implicit_reward"),
                                ("DPO loss (log 2 at step 0)", "implicit accuracy", "mean implicit reward margin")):
        axis.plot(steps, [row[key] for row in rows])
        axis.set_title(label, fontsize=10)
        axis.set_xlabel("optimizer step")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def run_demo(out: str | Path, settings: DemoSettings | None = None, overrides: list[str] | None = None) -> dict:
    """Run the demo into ``out``; returns the summary (also written to ``out/demo_summary.json``).

    ``overrides`` are ``key=value`` settings of the DPO config (assets/configs/shapes-dpo.yaml).
    Re-run into the same folder, the training samples and the base model's images are reused
    (generation and scoring resume); the DPO run and the aligned model's images start afresh.
    """
    settings = settings or DemoSettings()
    if settings.model is None:
        settings = replace(settings, model=str(asset("models", "shapes-sd")))
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

    print(f"[3/4] training Diffusion-DPO on {labels['pairs']} pairs")
    from diffalign.training import train_dpo

    for stale in (out / "dpo", out / "eval" / "dpo"):  # training starts afresh, so do the aligned model's images
        shutil.rmtree(stale, ignore_errors=True)
    config = load_config(asset("configs", "shapes-dpo.yaml"), [
        f"model.pretrained={settings.model}", f"data.path={samples / 'pairs.jsonl'}", f"output_dir={out / 'dpo'}",
        f"cache.dir={out / 'cache'}", f"train.max_steps={settings.dpo_steps}", f"train.seed={settings.seed}",
        *(overrides or [])])
    final = train_dpo(config)

    print(f"[4/4] evaluating base and aligned models on {len(held_out)} held-out prompts")
    evaluation = GenerationSettings(images_per_prompt=settings.eval_images_per_prompt, seed=settings.seed + 1000,
                                    **generation)
    base_run = generate_images(pipeline, held_out, out / "eval" / "base", evaluation,
                               run_info={"model": settings.model, "name": "base"})
    with _quiet_diffusers():  # its "no LoRA keys for the text encoder" notice is expected: only the UNet is trained
        pipeline.load_lora_weights(out / "dpo")
    dpo_run = generate_images(pipeline, held_out, out / "eval" / "dpo", evaluation,
                              run_info={"model": settings.model, "lora": str(out / "dpo"), "name": "dpo"})
    for run in (base_run, dpo_run):
        score_run(run, [SCORER, CHECKER, CHECKER_FRACTION])
    curves = plot_training_curves(out / "dpo" / "metrics.jsonl", out / "dpo" / "training_curves.png")
    report = report_runs([base_run, dpo_run], out / "report", title="diffalign demo: Diffusion-DPO on the tiny model",
                         grid_prompts=12, grid_samples=2, figures=[("Diffusion-DPO training curves", curves)])
    comparison = compare_runs(dpo_run, base_run)
    base_summary = json.loads((base_run / "summary.json").read_text())
    dpo_summary = json.loads((dpo_run / "summary.json").read_text())

    summary = {
        "settings": asdict(settings), "dpo_config": str(out / "dpo" / "config.yaml"), "labels": labels,
        "final_training_metrics": final,
        "held_out": {scorer: {"base": base_summary["scorers"][scorer]["overall"],
                              "dpo": dpo_summary["scorers"][scorer]["overall"],
                              "dpo_vs_base": comparison["scorers"][scorer]}
                     for scorer in (SCORER, CHECKER, CHECKER_FRACTION)},
        "report": str(report),
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
             "  held-out prompts, aligned (dpo) vs base, same seeds, 95% cluster-bootstrap CIs:"]
    names = {SCORER: f"{SCORER} score", CHECKER: "checker: all attributes right",
             CHECKER_FRACTION: "checker: share of attributes right"}
    for scorer, result in summary["held_out"].items():
        base, dpo, win = result["base"], result["dpo"], result["dpo_vs_base"]["win_rate"]
        lines.append(f"    {names[scorer]:<36} base {_ci(base)}  ->  dpo {_ci(dpo)}   "
                     f"win rate {win['rate']:.2f} [{win['low']:.2f}, {win['high']:.2f}]")
    lines.append(f"  report: {summary['report']}")
    return "\n".join(lines)


def _ci(value: dict) -> str:
    return f"{value['mean']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
