"""Score the images of a run folder with any registered scorers: ``RUN/scores.csv`` (one column per scorer).

The official PIL preprocessing is used by default, so numbers are comparable with published
ones. Each scorer's spec and scale are recorded in ``RUN/scorers.json``; re-scoring with the same
spec is skipped (resumable), a different spec under the same name needs ``overwrite=True``.
Folders of images made elsewhere (e.g. the HPSv2 benchmark layout ``<style>/<idx:05d>.jpg``)
become run folders with :func:`import_images`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from diffalign.evaluation.generate import write_text_atomic
from diffalign.evaluation.prompts import PromptSet
from diffalign.evaluation.tables import MANIFEST_COLUMNS, UNKNOWN_SEED
from diffalign.jsonl import jsonl_rows
from diffalign.scorers import get_scorer, parse_scorer_spec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class RunFolderError(ValueError):
    """A run folder without a manifest, with missing images or with unreadable files."""


def read_manifest(run_dir: str | Path) -> pd.DataFrame:
    """The manifest of a run as a DataFrame with the manifest columns (prompt_id and category as str)."""
    path = Path(run_dir) / "manifest.jsonl"
    if not path.is_file():
        raise RunFolderError(f"{path} not found: {run_dir} is not a run folder (make one with `diffalign eval "
                             "generate` or `diffalign eval import`)")
    rows = []
    for where, row in jsonl_rows(path, RunFolderError):
        missing = [c for c in MANIFEST_COLUMNS if c not in row]
        if missing:
            raise RunFolderError(f"{where}: missing keys {missing}")
        rows.append({c: row[c] for c in MANIFEST_COLUMNS})
    table = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    return table.astype({"image": str, "prompt_id": str, "prompt": str, "category": str})


def read_scores(run_dir: str | Path) -> pd.DataFrame:
    """``RUN/scores.csv`` with manifest columns typed as in the manifest and scorer columns as float."""
    path = Path(run_dir) / "scores.csv"
    if not path.is_file():
        raise RunFolderError(f"{path} not found: score the run first (`diffalign eval score {run_dir} --scorer ...`)")
    table = pd.read_csv(path, dtype={"image": str, "prompt_id": str, "prompt": str, "category": str},
                        keep_default_na=False)
    for column in table.columns:
        if column not in MANIFEST_COLUMNS:
            table[column] = pd.to_numeric(table[column], errors="raise")
    return table


def run_name(run_dir: str | Path) -> str:
    """The display name of a run (run.json's ``name``, else the folder name)."""
    run_file = Path(run_dir) / "run.json"
    if run_file.is_file():
        return json.loads(run_file.read_text()).get("name") or Path(run_dir).resolve().name
    return Path(run_dir).resolve().name


def score_run(run_dir: str | Path, specs: list[str], batch_size: int | None = None, device: str | None = None,
              dtype: torch.dtype | None = None, path: str = "pil", overwrite: bool = False,
              progress: bool = True) -> pd.DataFrame:
    """Add one column per scorer spec to ``RUN/scores.csv`` and return the score table."""
    run_dir = Path(run_dir)
    table = read_manifest(run_dir)
    scores_file, meta_file = run_dir / "scores.csv", run_dir / "scorers.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if scores_file.is_file():
        previous = read_scores(run_dir)
        columns = list(MANIFEST_COLUMNS)
        if previous[columns].astype(str).equals(table[columns].astype(str)):
            table = previous
    missing = [row for row in table["image"] if not (run_dir / row).is_file()]
    if missing:
        raise RunFolderError(f"{len(missing)} images of {run_dir} are missing (first: {missing[0]}); finish generating "
                             "them (re-run `diffalign eval generate` with the same settings) before scoring")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    for spec in specs:
        name, _ = parse_scorer_spec(spec)
        if name in table.columns and meta.get(name, {}).get("spec") == spec and meta[name].get("path") == path:
            continue
        if name in table.columns and not overwrite:
            raise RunFolderError(f"{run_dir}: scores for {name!r} were computed with {meta.get(name)}, not "
                                 f"{{'spec': {spec!r}, 'path': {path!r}}}; pass overwrite=True (--overwrite) to replace them")
        scorer = get_scorer(spec, device=device, dtype=dtype)
        table[name] = _score_images(scorer, run_dir, table, batch_size or scorer.batch_size, path, progress)
        meta[name] = {"spec": spec, "path": path, "scale": scorer.scale}
        write_text_atomic(scores_file, table.to_csv(index=False))
        write_text_atomic(meta_file, json.dumps(meta, indent=2) + "\n")
        del scorer
    return table


def _score_images(scorer, run_dir: Path, table: pd.DataFrame, batch_size: int, path: str, progress: bool) -> list:
    scores = []
    bar = tqdm(total=len(table), desc=f"scoring {scorer.name}", unit="img", disable=not progress)
    for start in range(0, len(table), batch_size):
        chunk = table.iloc[start:start + batch_size]
        images = [_open(run_dir / name) for name in chunk["image"]]
        prompts = list(chunk["prompt"]) if scorer.needs_prompts else None
        scores.extend(scorer(images, prompts, path=path, batch_size=batch_size).cpu().tolist())
        bar.update(len(chunk))
    bar.close()
    return scores


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise RunFolderError(f"cannot read image {path}: {error}") from error


def import_images(image_dir: str | Path, prompt_set: PromptSet, out_dir: str | Path | None = None,
                  name: str | None = None) -> Path:
    """Make a run folder for existing images named by prompt id.

    For each prompt, ``<prompt_id>.<ext>`` is sample 0 and ``<prompt_id>_<k>.<ext>`` sample k
    (ext in .png/.jpg/.jpeg/.webp), relative to ``image_dir``. The manifest and run.json go to
    ``out_dir`` (default ``image_dir``); image paths are stored relative to it. Seeds are unknown
    (-1), which comparisons accept as matching any seed. Prompts without any image are an error that lists a few.
    """
    image_dir = Path(image_dir).resolve()
    out_dir = Path(out_dir).resolve() if out_dir else image_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, without = [], []
    for record in prompt_set:
        found = sorted(_samples(image_dir, record.id))
        if not found:
            without.append(record.id)
        for sample, file in found:
            rows.append({"image": os.path.relpath(file, out_dir), "prompt_id": record.id, "prompt": record.text,
                         "category": record.category, "sample": sample, "seed": UNKNOWN_SEED})
    if without:
        raise RunFolderError(f"{len(without)} of {len(prompt_set)} prompts have no image in {image_dir} "
                             f"(e.g. {without[:3]}); expected files named <prompt_id>.png or <prompt_id>_<k>.png")
    write_text_atomic(out_dir / "manifest.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    run = {"name": name or out_dir.name, "model": None, "lora": None, "prompt_set": prompt_set.name,
           "n_prompts": len(prompt_set), "imported_from": str(image_dir)}
    write_text_atomic(out_dir / "run.json", json.dumps(run, indent=2) + "\n")
    return out_dir


def _samples(image_dir: Path, prompt_id: str) -> list[tuple[int, Path]]:
    found = []
    base = image_dir / prompt_id
    for suffix in IMAGE_SUFFIXES:
        if base.with_name(base.name + suffix).is_file():
            found.append((0, base.with_name(base.name + suffix)))
        for file in base.parent.glob(f"{base.name}_*{suffix}") if base.parent.is_dir() else ():
            index = file.name[len(base.name) + 1:-len(suffix)]
            if index.isdigit():
                found.append((int(index), file))
    return found
