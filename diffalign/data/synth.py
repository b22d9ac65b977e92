"""Synthetic ranked preference data (RankDPO / Syn-Pic style): K images per prompt from one or more
pipelines with recorded seeds, scored by a scorer ensemble, written as ranked JSONL.

Layout of ``out`` (every step resumes: existing images and scores are kept)::

    out/runs/<model name>/shard-<i>-of-<n>/   run folders (manifest, images, scores.csv) per model and shard
    out/ranked-<i>-of-<n>.jsonl               one ranked record per prompt of the shard

A record's images are the K images of every model in model order; ``labels`` are the RankDPO win
fractions psi_i = C_i / (n_scorers * (K_total - 1)) over all scorers, ``scores`` the mean of the
scorers' per-prompt z-scores, ``raw_scores`` every scorer's own scores (higher is better for all),
``sources`` the model names and ``seeds`` the per-image seeds (shared between models for the same
prompt and sample index, so models start from the same noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from diffalign.data.pairs import DataError
from diffalign.data.ranked import RankedRecord, write_ranked_jsonl
from diffalign.evaluation.generate import GenerationSettings, generate_images, load_eval_pipeline
from diffalign.evaluation.prompts import PromptSet
from diffalign.evaluation.scoring import score_run
from diffalign.scorers.ensemble import win_fractions, zscore_mean
from diffalign.scorers.registry import parse_scorer_spec


@dataclass
class ShardSpec:
    """Shard ``index`` of ``count``: every ``count``-th prompt starting at ``index`` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise DataError(f"shard must satisfy 0 <= index < count, got index {self.index} of {self.count}")

    @property
    def tag(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"

    def select(self, prompts: PromptSet) -> PromptSet:
        return PromptSet(prompts.name, prompts.records[self.index::self.count], prompts.skipped)


def synthesize_ranked(prompts: PromptSet, models: dict[str, str], scorers: list[str], out: str | Path,
                      generation: GenerationSettings, shard: ShardSpec | None = None, dtype: str = "fp32",
                      device: str | None = None) -> Path:
    """Generate, score and rank one shard of ``prompts``; returns the ranked JSONL path.

    ``models``: name -> Hub id or pipeline folder (names become ``sources``); ``scorers``: scorer specs
    (see :func:`diffalign.scorers.get_scorer`); ``generation.images_per_prompt`` images per prompt and model.
    """
    shard = shard or ShardSpec()
    if not models:
        raise DataError("give at least one model to sample from")
    if not scorers:
        raise DataError("give at least one scorer to rank with")
    if len(models) * generation.images_per_prompt < 2:
        raise DataError("ranking needs K >= 2 images per prompt: raise images_per_prompt or add a model")
    names = [parse_scorer_spec(spec)[0] for spec in scorers]
    if len(set(names)) != len(names):
        raise DataError(f"scorer names must be distinct, got {names}")
    selected = shard.select(prompts)
    if not len(selected):
        raise DataError(f"shard {shard.index} of {shard.count} of {prompts.name!r} ({len(prompts)} prompts) is empty")
    out = Path(out)
    tables = []
    for model_name, model in models.items():
        run = out / "runs" / model_name / f"shard-{shard.tag}"
        pipeline = load_eval_pipeline(model, dtype=dtype, device=device)
        generate_images(pipeline, selected, run, generation, run_info={"model": model, "name": model_name})
        del pipeline
        table = score_run(run, scorers, device=device)
        table["image"] = [str((run / image).resolve()) for image in table["image"]]
        table["source"] = model_name
        tables.append(table)
    records = ranked_records(pd.concat(tables, ignore_index=True), names)
    return write_ranked_jsonl(records, out / f"ranked-{shard.tag}.jsonl")


def ranked_records(table: pd.DataFrame, scorer_names: list[str]) -> list[RankedRecord]:
    """One record per prompt id of a score table (columns prompt_id, prompt, image, source, seed and one
    per scorer), images in table order; labels are win fractions over the scorers, scores z-score means."""
    records = []
    for prompt_id, group in table.groupby("prompt_id", sort=False):
        raw = torch.tensor(group[scorer_names].to_numpy(dtype="float64").T).unsqueeze(1)  # [n, 1, K]
        records.append(RankedRecord(
            prompt=str(group["prompt"].iloc[0]), images=group["image"].tolist(),
            labels=win_fractions(raw)[0].tolist(), scores=zscore_mean(raw)[0].tolist(),
            raw_scores={name: group[name].astype(float).tolist() for name in scorer_names},
            sources=group["source"].tolist(), seeds=[int(seed) for seed in group["seed"]], id=str(prompt_id)))
    return records

