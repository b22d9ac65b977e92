"""The ``diffalign`` command.

    diffalign demo [--out DIR] [--methods dpo,...] [key=value ...] the end-to-end demo on the embedded tiny model
    diffalign train dpo --config FILE [key=value ...]      Diffusion-DPO (LoRA or full)
    diffalign train sft --config FILE [key=value ...]      SFT on preferred images (baseline)
    diffalign train rank-dpo --config FILE [key=value ...] ranked DPO on K images per prompt (RankDPO, LiPO-λ)
    diffalign train curriculum-dpo --config FILE curriculum.stages=S [...]  DPO on pairs from easy to hard
    diffalign train draft --config FILE [reward.method=draft|draft-k|draft-lv|alignprop|refl ...]  reward backprop
    diffalign train d3po --config FILE [d3po.labels=scorer|human ...]   per-step DPO on trajectory pairs
    diffalign label sample --config FILE --out DIR [--limit N]          K rollouts per prompt for people to rank
    diffalign label serve DIR [--host 127.0.0.1] [--port 8765]          the local labeling page
    diffalign cache --config FILE [key=value ...]          only build the latent/text cache
    diffalign config show --config FILE [key=value ...]    print the resolved, validated config
    diffalign config reference                             every option with its default and help
    diffalign tiny-model --out DIR [--sdxl] [--seed S]     a tiny random SD/SDXL pipeline folder
    diffalign tiny-scorer --name NAME --out DIR [--full-size]    random scorer weights; prints the spec
    diffalign eval generate --model M --prompts SPEC --out RUN [...]   N images per prompt, fixed seeds
    diffalign eval import --images DIR --prompts SPEC [--out RUN]      a run folder for existing images
    diffalign eval score RUN [RUN ...] --scorer SPEC [...]             scores.csv + summary.json
    diffalign eval compare RUN_A RUN_B [--out DIR]                     paired win rates with CIs
    diffalign eval report RUN [RUN ...] --out DIR                      HTML report (first run = baseline)
    diffalign eval scorer-accuracy --scorer SPEC --pairs SRC | --ranked SRC
    diffalign scorers                                                  registered scorers and options
    diffalign data synth --prompts SPEC --model [NAME=]M --scorer SPEC --out DIR [--shard I/N]   ranked data
    diffalign data pairs --ranked FILE --out FILE [--selection S --margin M --gap score|rank]   pairs from ranked data

Multi-GPU and multi-node: ``accelerate launch -m diffalign.cli train dpo --config ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path

import yaml

from diffalign.config import ConfigError, DPORunConfig, load_config, to_dict, type_name


def _config_from_args(args, objective: str | None = None) -> DPORunConfig:
    from accelerate import PartialState

    overrides = list(args.overrides)
    if objective is not None:
        overrides.append(f"train.objective={objective}")
    return load_config(args.config, overrides, num_processes=PartialState().num_processes)


def reference_text(cls: type = DPORunConfig, prefix: str = "") -> list[str]:
    """Markdown table rows (key, type, default, help) for every option of ``cls``."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(reference_text(hint, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        help_text = f.metadata.get("help", "")
        if choices:
            help_text += " Choices: " + ", ".join(str(c) for c in choices) + "."
        rows.append(f"| `{prefix}{f.name}` | {type_name(hint)} | `{default!r}` | {help_text} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffalign", description="Align diffusion models to preferences.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="end-to-end demo on the tiny embedded model (CPU, minutes)")
    demo.add_argument("--out", default="outputs/demo", help="output folder")
    demo.add_argument("--steps", type=int, default=None,
                      help="optimizer steps of dpo and rank-dpo (default: DemoSettings.dpo_steps)")
    demo.add_argument("--methods", default="dpo",
                      help="comma-separated methods to train and compare: dpo, rank-dpo, draft-k, d3po "
                           "(each adds several minutes on a 2-core CPU; see docs/embedded-model.md)")
    demo.add_argument("--train-prompts", type=int, default=64, help="training captions drawn from the shapes grammar")
    demo.add_argument("--images-per-prompt", type=int, default=4, help="images generated and ranked per caption")
    demo.add_argument("--eval-images-per-prompt", type=int, default=4, help="held-out images per prompt and model")
    demo.add_argument("--eval-limit", type=int, default=None, help="use only the first N held-out prompts")
    demo.add_argument("--inference-steps", type=int, default=20, help="DDIM steps per image")
    demo.add_argument("--guidance", type=float, default=None,
                      help="CFG scale of the training samples and of the held-out images (default: "
                           "DemoSettings.guidance_scale)")
    demo.add_argument("--margin", type=float, default=None,
                      help="drop pairs whose shapes-clip scores differ by at most this (default: DemoSettings.margin)")
    demo.add_argument("--model", default=None, help="base pipeline folder (default: the embedded assets/models/shapes-sd)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("overrides", nargs="*",
                      help="key=value overrides of assets/configs/shapes-dpo.yaml (dpo and rank-dpo), e.g. "
                           "train.beta=1000; METHOD:key=value for one method, e.g. draft-k:train.max_steps=30")

    train = commands.add_parser("train", help="train a model")
    train.add_argument("method", choices=["dpo", "sft", "rank-dpo", "curriculum-dpo", "draft", "d3po"])
    for sub in (train, commands.add_parser("cache", help="build the latent/text-embedding cache only")):
        sub.add_argument("--config", required=True, help="YAML config (see assets/configs/)")
        sub.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.beta=2500")

    config_cmd = commands.add_parser("config", help="inspect configs")
    config_cmd.add_argument("action", choices=["show", "reference"])
    config_cmd.add_argument("--config", help="YAML config (for show)")
    config_cmd.add_argument("overrides", nargs="*")

    tiny = commands.add_parser("tiny-model", help="write a tiny random-weight pipeline folder")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--sdxl", action="store_true", help="SDXL architecture (two text encoders, time ids)")
    tiny.add_argument("--seed", type=int, default=0)

    tiny_scorer = commands.add_parser("tiny-scorer", help="random-weight scorer files in the published format")
    tiny_scorer.add_argument("--name", required=True, help="a registered scorer, e.g. hpsv2.1 or pickscore")
    tiny_scorer.add_argument("--out", required=True)
    tiny_scorer.add_argument("--full-size", action="store_true", help="the published architecture (GBs)")
    tiny_scorer.add_argument("--seed", type=int, default=0)

    _add_eval_commands(commands)
    _add_data_commands(commands)
    _add_label_commands(commands)
    commands.add_parser("scorers", help="list the registered scorers and their options")

    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if "=" not in item or item.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if not isinstance(error, _user_errors()):
            raise
        print(f"error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type, ...]:
    """Errors about the user's input or files: printed as one message, without a traceback."""
    from diffalign.data.pairs import DataError
    from diffalign.evaluation.generate import GenerationError
    from diffalign.evaluation.prompts import PromptSetError
    from diffalign.evaluation.report import ReportError
    from diffalign.evaluation.scorer_accuracy import AccuracyDataError
    from diffalign.evaluation.scoring import RunFolderError
    from diffalign.evaluation.stats import StatsError
    from diffalign.evaluation.tables import EvaluationError
    from diffalign.models import ModelLoadError
    from diffalign.scorers import ScorerLoadError, ScorerSpecError, UnknownScorerError

    return (DataError, GenerationError, PromptSetError, ReportError, AccuracyDataError, RunFolderError, StatsError,
            EvaluationError, ModelLoadError, ScorerLoadError, ScorerSpecError, UnknownScorerError)


def _add_eval_commands(commands) -> None:
    evaluation = commands.add_parser("eval", help="generate, score, compare and report on prompt sets")
    actions = evaluation.add_subparsers(dest="action", required=True)

    generate = actions.add_parser("generate", help="generate N images per prompt with fixed seeds (resumable)")
    generate.add_argument("--model", required=True, help="diffusers pipeline folder or Hub id")
    generate.add_argument("--lora", help="LoRA folder or file loaded with pipe.load_lora_weights")
    generate.add_argument("--unet", help="fully fine-tuned UNet folder (replaces the pipeline's UNet)")
    generate.add_argument("--prompts", required=True, help="prompt set spec, e.g. parti:PartiPrompts.tsv, "
                          "hpsv2:DIR, drawbench:FILE.csv, text:FILE, hf:NAME:SPLIT:COLUMN, or a builtin name")
    generate.add_argument("--out", required=True, help="run folder")
    generate.add_argument("--name", help="display name in reports (default: the folder name)")
    generate.add_argument("--limit", type=int, help="only the first N prompts")
    generate.add_argument("--categories", help="comma-separated categories to keep")
    generate.add_argument("--images-per-prompt", type=int, default=4)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--steps", type=int, default=30, help="sampling steps")
    generate.add_argument("--guidance", type=float, default=7.5, help="CFG scale (7.5 for SD 1.x, 5.0 for SDXL)")
    generate.add_argument("--height", type=int)
    generate.add_argument("--width", type=int)
    generate.add_argument("--negative-prompt", default="")
    generate.add_argument("--scheduler", default="default", help="default, ddim, euler, euler-ancestral, dpmpp-2m")
    generate.add_argument("--batch-size", type=int, default=4)
    generate.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                          help="auto: fp16 on CUDA, fp32 on CPU")
    generate.add_argument("--device")
    generate.add_argument("--attention", choices=["auto", "sdpa", "xformers"], default="auto")

    imported = actions.add_parser("import", help="make a run folder for images named <prompt_id>[_<k>].png/jpg")
    imported.add_argument("--images", required=True)
    imported.add_argument("--prompts", required=True)
    imported.add_argument("--out", help="run folder (default: the image folder)")
    imported.add_argument("--name")

    score = actions.add_parser("score", help="score run folders (scores.csv, summary.json)")
    score.add_argument("runs", nargs="+")
    score.add_argument("--scorer", action="append", required=True,
                       help="scorer spec, repeatable: pickscore, hpsv2.1:checkpoint=FILE, aesthetic, ...")
    score.add_argument("--batch-size", type=int)
    score.add_argument("--device")
    score.add_argument("--dtype", choices=["fp32", "fp16", "bf16"])
    score.add_argument("--path", choices=["pil", "tensor"], default="pil",
                       help="pil: official preprocessing (reported numbers); tensor: the differentiable path")
    score.add_argument("--overwrite", action="store_true", help="replace scores computed with another spec")

    compare = actions.add_parser("compare", help="paired win rates of run A vs run B per scorer")
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.add_argument("--out", help="folder for comparison.json and comparison.csv")
    for sub in (score, compare):
        sub.add_argument("--confidence", type=float, default=0.95)
        sub.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")

    report = actions.add_parser("report", help="HTML report: tables with CIs, win rates vs the first run, grids")
    report.add_argument("runs", nargs="+")
    report.add_argument("--out", required=True)
    report.add_argument("--title", default="diffalign evaluation")
    report.add_argument("--grid-prompts", type=int, default=8)

    accuracy = actions.add_parser("scorer-accuracy", help="a scorer's agreement with human preference test sets")
    accuracy.add_argument("--scorer", required=True)
    source = accuracy.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", help="Pick-a-Pic-schema parquet file/folder, Hub id, or diffalign JSONL pairs")
    source.add_argument("--ranked", help="HPDv2-schema JSON (prompt, image_path, rank)")
    accuracy.add_argument("--images-root", help="folder the ranked set's image paths are relative to")
    accuracy.add_argument("--tie-threshold", type=float, help="fixed |p0 - p1| tie threshold (pairs)")
    accuracy.add_argument("--validation-fraction", type=float, default=0.0,
                          help="fit the tie threshold on this fraction, report the rest (pairs)")
    accuracy.add_argument("--limit", type=int)
    accuracy.add_argument("--batch-size", type=int, default=16)
    accuracy.add_argument("--device")
    accuracy.add_argument("--out", help="write the result JSON here")


def _add_data_commands(commands) -> None:
    data = commands.add_parser("data", help="make preference data")
    actions = data.add_subparsers(dest="action", required=True)
    synth = actions.add_parser("synth", help="K images per prompt from one or more models, ranked by scorers "
                                             "(ranked JSONL; sharded and resumable)")
    synth.add_argument("--prompts", required=True, help="prompt set spec (as for eval generate)")
    synth.add_argument("--model", action="append", required=True,
                       help="[NAME=]pipeline folder or Hub id, repeatable; NAME is recorded as each image's source")
    synth.add_argument("--scorer", action="append", required=True, help="scorer spec, repeatable (the ensemble)")
    synth.add_argument("--out", required=True, help="output folder (run folders + ranked-<shard>.jsonl)")
    synth.add_argument("--images-per-prompt", type=int, default=4, help="images per prompt and model")
    synth.add_argument("--shard", default="0/1", help="INDEX/COUNT: every COUNT-th prompt from INDEX (0-based)")
    synth.add_argument("--limit", type=int, help="only the first N prompts (before sharding)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--steps", type=int, default=30, help="sampling steps")
    synth.add_argument("--guidance", type=float, default=7.5, help="CFG scale (7.5 for SD 1.x, 5.0 for SDXL)")
    synth.add_argument("--height", type=int)
    synth.add_argument("--width", type=int)
    synth.add_argument("--batch-size", type=int, default=4)
    synth.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                       help="auto: fp16 on CUDA, fp32 on CPU")
    synth.add_argument("--device")
    pairs = actions.add_parser("pairs", help="pair JSONL (with a curriculum gap) from ranked JSONL, for DPO and "
                                             "Curriculum DPO")
    pairs.add_argument("--ranked", required=True, help="ranked JSONL (e.g. from data synth)")
    pairs.add_argument("--out", required=True, help="pair JSONL to write")
    pairs.add_argument("--selection", choices=["all", "adjacent", "best-rest", "best-worst"], default="all")
    pairs.add_argument("--margin", type=float, default=0.0, help="pairs whose value gap is <= this are ties, dropped")
    pairs.add_argument("--gap", choices=["score", "rank"], default="score",
                       help="difficulty written as each pair's gap: value difference or position difference")
    pairs.add_argument("--scorer", help="order by raw_scores[SCORER] (default: scores, else labels)")


def _add_label_commands(commands) -> None:
    label = commands.add_parser("label", help="rollouts for people to rank, and the labeling page (D3PO human mode)")
    actions = label.add_subparsers(dest="action", required=True)
    sample = actions.add_parser("sample", help="K trajectories per prompt from one shared noise, stored with images")
    sample.add_argument("--config", required=True, help="a D3PO config (model, prompts.train, sampling, d3po.images_per_prompt)")
    sample.add_argument("--out", required=True, help="the label folder to write (resumable)")
    sample.add_argument("--limit", type=int, help="only the first N prompts")
    sample.add_argument("--device")
    sample.add_argument("overrides", nargs="*", help="key=value overrides, e.g. d3po.images_per_prompt=4")
    serve = actions.add_parser("serve", help="the labeling page for a label folder")
    serve.add_argument("folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    serve.add_argument("--port", type=int, default=8765)


def _run_label(args) -> int:
    from diffalign.config import D3PORunConfig

    if args.action == "sample":
        from diffalign.labeling import sample_rollouts

        config = load_config(args.config, list(args.overrides), cls=D3PORunConfig)
        print(f"label folder: {sample_rollouts(config, args.out, args.limit, args.device)}; label it with "
              f"`diffalign label serve {args.out}`")
        return 0
    from diffalign.labeling import make_server

    server = make_server(args.folder, args.host, args.port)
    print(f"labeling page: http://{args.host}:{server.server_address[1]}/  (labels go to "
          f"{Path(args.folder) / 'labels.jsonl'}; Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _run_data(args) -> int:
    if args.action == "pairs":
        import json

        from diffalign.data.ranked import ranked_to_pairs, read_ranked_jsonl
        from diffalign.evaluation.generate import write_text_atomic

        records = read_ranked_jsonl(args.ranked)
        rows = ranked_to_pairs(records, args.selection, args.margin, args.gap, args.scorer)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, "".join(json.dumps(row) + "\n" for row in rows))
        print(f"{len(rows)} pairs from {len(records)} ranked records -> {out}")
        return 0
    import torch

    from diffalign.data.pairs import DataError
    from diffalign.data.synth import ShardSpec, synthesize_ranked
    from diffalign.evaluation.generate import GenerationSettings
    from diffalign.evaluation.prompts import load_prompt_set

    index, _, count = args.shard.partition("/")
    if not (index.isdigit() and count.isdigit()):
        raise DataError(f"--shard must be INDEX/COUNT, e.g. 0/4, got {args.shard!r}")
    models = {}
    for item in args.model:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (f"model{len(models)}", item)
        if name in models:
            raise DataError(f"model name {name!r} is given twice; use NAME=PATH with distinct names")
        models[name] = path
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype != "auto" else ("fp16" if device.startswith("cuda") else "fp32")
    settings = GenerationSettings(images_per_prompt=args.images_per_prompt, seed=args.seed,
                                  num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height,
                                  width=args.width, batch_size=args.batch_size)
    path = synthesize_ranked(load_prompt_set(args.prompts).subset(args.limit), models, args.scorer, args.out,
                             settings, ShardSpec(int(index), int(count)), dtype=dtype, device=device)
    print(f"ranked records: {path}")
    return 0


def _run_eval(args) -> int:
    import json

    from diffalign.evaluation import runs

    if args.action == "generate":
        import torch

        from diffalign.evaluation.generate import GenerationSettings, generate_images, load_eval_pipeline
        from diffalign.evaluation.prompts import load_prompt_set

        prompts = load_prompt_set(args.prompts).subset(args.limit, args.categories.split(",") if args.categories else None)
        settings = GenerationSettings(images_per_prompt=args.images_per_prompt, seed=args.seed,
                                      num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height,
                                      width=args.width, negative_prompt=args.negative_prompt,
                                      scheduler=args.scheduler, batch_size=args.batch_size)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = args.dtype if args.dtype != "auto" else ("fp16" if device.startswith("cuda") else "fp32")
        pipeline = load_eval_pipeline(args.model, lora=args.lora, unet=args.unet, dtype=dtype, device=device,
                                      attention=args.attention, scheduler=args.scheduler)
        info = {"model": args.model, "lora": args.lora, "unet": args.unet, "prompts": args.prompts, "dtype": dtype}
        if args.name:
            info["name"] = args.name
        out = generate_images(pipeline, prompts, args.out, settings, info)
        print(f"{len(prompts) * settings.images_per_prompt} images in {out}")
    elif args.action == "import":
        from diffalign.evaluation.prompts import load_prompt_set
        from diffalign.evaluation.scoring import import_images

        print(f"run folder: {import_images(args.images, load_prompt_set(args.prompts), args.out, args.name)}")
    elif args.action == "score":
        from diffalign.evaluation.scoring import score_run
        from diffalign.models import DTYPES

        for run_dir in args.runs:
            score_run(run_dir, args.scorer, batch_size=args.batch_size, device=args.device,
                      dtype=DTYPES[args.dtype] if args.dtype else None, path=args.path, overwrite=args.overwrite)
            print(runs.format_summary(runs.summarize_run(run_dir, args.confidence, args.resamples)))
    elif args.action == "compare":
        from diffalign.evaluation import tables

        comparison = runs.compare_runs(args.run_a, args.run_b, confidence=args.confidence, resamples=args.resamples)
        print(runs.format_comparison(comparison))
        if args.out:
            import pandas as pd

            Path(args.out).mkdir(parents=True, exist_ok=True)
            Path(args.out, "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n")
            pd.DataFrame(tables.comparison_rows(comparison)).to_csv(Path(args.out, "comparison.csv"), index=False)
    elif args.action == "report":
        print(f"report: {runs.report_runs(args.runs, args.out, title=args.title, grid_prompts=args.grid_prompts)}")
    elif args.action == "scorer-accuracy":
        from diffalign.evaluation.scorer_accuracy import evaluate_pairwise, evaluate_ranking
        from diffalign.scorers import get_scorer

        scorer = get_scorer(args.scorer, device=args.device)
        if args.pairs:
            result = evaluate_pairwise(scorer, args.pairs, batch_size=args.batch_size, tie_threshold=args.tie_threshold,
                                       validation_fraction=args.validation_fraction, limit=args.limit)
        else:
            result = evaluate_ranking(scorer, args.ranked, images_root=args.images_root, batch_size=args.batch_size,
                                      limit=args.limit)
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
    return 0


def _list_scorers() -> int:
    from diffalign.scorers import available_scorers, scorer_entry

    for name in available_scorers():
        entry = scorer_entry(name)
        options = ", ".join(f"{key}={value!r}" for key, value in entry.options().items())
        print(f"{name}\n    {entry.description}\n    options: {options}")
    return 0


def _run(args) -> int:
    if args.command == "eval":
        return _run_eval(args)
    if args.command == "data":
        return _run_data(args)
    if args.command == "scorers":
        return _list_scorers()
    if args.command == "demo":
        from diffalign.demo import DemoSettings, run_demo

        settings = DemoSettings(train_prompts=args.train_prompts, images_per_prompt=args.images_per_prompt,
                                eval_images_per_prompt=args.eval_images_per_prompt, eval_limit=args.eval_limit,
                                num_inference_steps=args.inference_steps, seed=args.seed,
                                methods=tuple(method.strip() for method in args.methods.split(",") if method.strip()),
                                **({"model": args.model} if args.model else {}),
                                **({"margin": args.margin} if args.margin is not None else {}),
                                **({"dpo_steps": args.steps} if args.steps is not None else {}),
                                **({"guidance_scale": args.guidance} if args.guidance is not None else {}))
        run_demo(args.out, settings, args.overrides)
    elif args.command == "train" and args.method == "d3po":
        from accelerate import PartialState

        from diffalign.config import D3PORunConfig
        from diffalign.training.d3po import train_d3po

        train_d3po(load_config(args.config, list(args.overrides), cls=D3PORunConfig,
                               num_processes=PartialState().num_processes))
    elif args.command == "label":
        return _run_label(args)
    elif args.command == "train" and args.method == "draft":
        from accelerate import PartialState

        from diffalign.config import RewardRunConfig
        from diffalign.training.reward import train_reward

        train_reward(load_config(args.config, list(args.overrides), cls=RewardRunConfig,
                                 num_processes=PartialState().num_processes))
    elif args.command == "train":
        from diffalign.training import train_dpo

        config = _config_from_args(args, objective={"rank-dpo": "rank", "curriculum-dpo": "dpo"}.get(args.method,
                                                                                                     args.method))
        if args.method == "curriculum-dpo" and not config.curriculum.stages:
            raise ConfigError("train curriculum-dpo needs curriculum.stages > 0 (e.g. curriculum.stages=5).")
        train_dpo(config)
    elif args.command == "cache":
        from diffalign.training import DPOTrainer

        config = _config_from_args(args)
        if not config.cache.enabled:
            raise ConfigError("the cache command needs cache.enabled=true (in the file or as an override).")
        DPOTrainer(config).setup()
    elif args.command == "config" and args.action == "show":
        print(yaml.safe_dump(to_dict(_config_from_args(args)), sort_keys=False))
    elif args.command == "config":
        from diffalign.config import D3PORunConfig, RewardRunConfig

        header = "| key | type | default | description |\n| --- | --- | --- | --- |"
        print(f"## Preference runs (`train dpo`, `sft`, `rank-dpo`, `curriculum-dpo`)\n\n{header}")
        print("\n".join(reference_text()))
        print(f"\n## Direct reward runs (`train draft`)\n\n{header}")
        print("\n".join(reference_text(RewardRunConfig)))
        print(f"\n## D3PO runs (`train d3po`, `label sample`)\n\n{header}")
        print("\n".join(reference_text(D3PORunConfig)))
    elif args.command == "tiny-model":
        from diffalign.tiny import build_random_pipeline, pipeline_config_dir

        path = build_random_pipeline(pipeline_config_dir("tiny-sdxl" if args.sdxl else "tiny-sd"), args.out, args.seed)
        print(f"wrote {path}")
    elif args.command == "tiny-scorer":
        from diffalign.scorers import scorer_entry
        from diffalign.tiny import build_random_scorer

        scorer_entry(args.name)
        print(build_random_scorer(args.name, args.out, seed=args.seed, full_size=args.full_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
