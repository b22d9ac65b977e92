"""Shared fixtures: tiny random SD / SDXL pipeline folders and tiny run configs."""

from __future__ import annotations

import pytest
import torch

from diffalign.config import load_config
from diffalign.paths import asset
from diffalign.tiny import build_random_pipeline, pipeline_config_dir

torch.set_num_threads(2)

TINY_PAIRS = asset("data", "tiny-prefs", "pairs.jsonl")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """A tiny SD-architecture pipeline folder saved with save_pretrained (random weights, seed 0)."""
    return build_random_pipeline(pipeline_config_dir("tiny-sd"), tmp_path_factory.mktemp("tiny-sd"), seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    """A tiny SDXL-architecture pipeline folder (two text encoders, text_time conditioning)."""
    return build_random_pipeline(pipeline_config_dir("tiny-sdxl"), tmp_path_factory.mktemp("tiny-sdxl"), seed=0)


def tiny_config(tmp_path, model_dir, *overrides):
    """The shipped tiny DPO config pointed at ``model_dir``, quiet and without periodic side work."""
    return load_config(asset("configs", "tiny-dpo.yaml"), [
        f"model.pretrained={model_dir}", f"data.path={TINY_PAIRS}", f"output_dir={tmp_path / 'run'}",
        f"cache.dir={tmp_path / 'cache'}", "logging.tracker=none", "logging.every=1", "validation.prompts=[]",
        "checkpoint.every=0", *overrides])


@pytest.fixture(scope="session")
def tiny_scorer_specs(tmp_path_factory):
    """get_scorer specs of every weighted scorer with tiny random weights saved in its published format."""
    from diffalign.tiny import build_random_scorer

    folder = tmp_path_factory.mktemp("scorers")
    return {name: build_random_scorer(name, folder, seed=0)
            for name in ("pickscore", "clipscore", "clipscore-l14", "aesthetic", "hpsv2", "hpsv2.1")}
