"""The ``diffalign`` command.

    diffalign demo [--out DIR] [--steps N]                 the end-to-end demo on the tiny model
    diffalign train dpo --config FILE [key=value ...]      Diffusion-DPO (LoRA or full)
    diffalign train sft --config FILE [key=value ...]      SFT on preferred images (baseline)
    diffalign cache --config FILE [key=value ...]          only build the latent/text cache
    diffalign config show --config FILE [key=value ...]    print the resolved, validated config
    diffalign config reference                             every option with its default and help
    diffalign tiny-model --out DIR [--sdxl] [--seed S]     a tiny random SD/SDXL pipeline folder

Multi-GPU and multi-node: ``accelerate launch -m diffalign.cli train dpo --config ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing

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
    demo.add_argument("--steps", type=int, default=60, help="DPO optimizer steps")

    train = commands.add_parser("train", help="train a model")
    train.add_argument("method", choices=["dpo", "sft"])
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


def _run(args) -> int:
    if args.command == "demo":
        from diffalign.demo import run_demo

        run_demo(args.out, steps=args.steps)
    elif args.command == "train":
        from diffalign.training import train_dpo

        train_dpo(_config_from_args(args, objective=args.method))
    elif args.command == "cache":
        from diffalign.training import DPOTrainer

        config = _config_from_args(args)
        if not config.cache.enabled:
            raise ConfigError("the cache command needs cache.enabled=true (in the file or as an override).")
        DPOTrainer(config).setup()
    elif args.command == "config" and args.action == "show":
        print(yaml.safe_dump(to_dict(_config_from_args(args)), sort_keys=False))
    elif args.command == "config":
        print("| key | type | default | description |\n| --- | --- | --- | --- |")
        print("\n".join(reference_text()))
    elif args.command == "tiny-model":
        from diffalign.tiny import build_random_pipeline, pipeline_config_dir

        path = build_random_pipeline(pipeline_config_dir("tiny-sdxl" if args.sdxl else "tiny-sd"), args.out, args.seed)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
