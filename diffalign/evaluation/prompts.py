"""Prompt sets for evaluation: PartiPrompts, the HPSv2 benchmark, DrawBench, text/JSONL files,
Hugging Face datasets and the project's shipped sets in ``assets/prompts``.

Every loader returns a :class:`PromptSet` of :class:`PromptRecord` (id, text, category). Prompt
texts are stripped; empty prompts are skipped and counted in ``PromptSet.skipped``. Ids are the
0-based position among the kept prompts, zero-padded to 5 digits (``"00000"``), unless the
source has better ones (HPSv2: ``"<style>/<index:05d>"``, the benchmark's image names; JSONL: an
``"id"`` field). Ids name image files, so they are restricted to letters, digits, ``.``, ``_``,
``-`` and ``/`` between non-empty parts that start with a letter or digit.

:func:`load_prompt_set` turns a spec string (``"parti:PATH"``, ``"hpsv2:DIR"``, a builtin name,
a bare path, ...) into a prompt set; it is what ``diffalign eval generate --prompts`` takes.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd

from diffalign.paths import ASSETS

BUILTIN_DIR = ASSETS / "prompts"
BUILTIN_SUFFIXES = (".jsonl", ".tsv", ".txt")
SPEC_FORMS = ("parti:PATH (PartiPrompts .tsv)", "hpsv2:DIR (HPSv2 benchmark folder of <style>.json)",
              "drawbench:PATH (.csv or .parquet)", "text:PATH (one prompt per line)",
              "jsonl:PATH (rows {\"prompt\", \"category\"?, \"id\"?})", "hf:NAME[:SPLIT[:COLUMN]]",
              "a builtin name", "an existing .tsv/.csv/.parquet/.txt/.jsonl file or folder of .json files")
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
_DRAWBENCH_PROMPT_COLUMNS = ("prompts", "prompt", "text")
_CATEGORY_COLUMN = "category"


class PromptSetError(ValueError):
    """An unusable prompt file, dataset or spec; the message names the file, row and column."""


@dataclass(frozen=True)
class PromptRecord:
    """One prompt: a stable id (names its images), the text and an optional category ("" if none)."""

    id: str
    text: str
    category: str = ""


@dataclass
class PromptSet:
    """An ordered list of prompts with unique ids; ``skipped`` counts empty prompts left out by the loader."""

    name: str
    records: list[PromptRecord]
    skipped: int = field(default=0)

    def __post_init__(self):
        seen: dict[str, int] = {}
        for index, record in enumerate(self.records):
            if not _ID_PATTERN.fullmatch(record.id):
                raise PromptSetError(f"prompt set {self.name!r}: prompt {index} has id {record.id!r}; ids are "
                                     "letters, digits, '.', '_', '-' and '/' between parts that start with a "
                                     "letter or digit")
            if record.id in seen:
                raise PromptSetError(f"prompt set {self.name!r}: id {record.id!r} is used by prompts "
                                     f"{seen[record.id]} and {index}; ids must be unique")
            seen[record.id] = index

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self.records)

    def categories(self) -> list[str]:
        """Distinct categories in order of first appearance ("" included when some prompt has none)."""
        return list(dict.fromkeys(record.category for record in self.records))

    def subset(self, limit: int | None = None, categories: list[str] | None = None) -> PromptSet:
        """The prompts in ``categories`` (all if None), then the first ``limit`` of them; order and ids kept."""
        records = self.records
        if categories is not None:
            unknown = [c for c in categories if c not in set(self.categories())]
            if unknown:
                raise PromptSetError(f"prompt set {self.name!r} has no categories {unknown}; "
                                     f"it has {self.categories()}")
            records = [record for record in records if record.category in set(categories)]
        if limit is not None:
            if limit < 1:
                raise PromptSetError(f"limit must be >= 1 or None, got {limit}")
            records = records[:limit]
        return PromptSet(self.name, list(records), self.skipped)


def load_partiprompts(path: str | Path) -> PromptSet:
    """PartiPrompts TSV (header ``Prompt Category Challenge Note``; only ``Prompt`` is required).

    Fields are read literally (no quote handling), as in the published file of 1632 prompts.
    """
    path = _existing_file(path)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise PromptSetError(f"{path}: empty file; expected a header line with a 'Prompt' column")
    header = [name.strip() for name in rows[0]]
    if "Prompt" not in header:
        raise PromptSetError(f"{path}: line 1: no 'Prompt' column in the header; columns are {header}")
    prompt_col = header.index("Prompt")
    category_col = header.index("Category") if "Category" in header else None
    entries = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= prompt_col:
            raise PromptSetError(f"{path}: line {line}: {len(row)} fields, no value for column 'Prompt'")
        category = row[category_col] if category_col is not None and category_col < len(row) else ""
        entries.append((row[prompt_col], category))
    return _positional_set(path.stem, entries, path)


def load_hpsv2_benchmark(folder: str | Path) -> PromptSet:
    """HPSv2 benchmark folder: one ``<style>.json`` (a JSON list of prompt strings) per style.

    Files are read in name order (anime, concept-art, paintings, photo); category = style and id
    = ``"<style>/<index:05d>"`` with the index in the style's file, the benchmark's image naming.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PromptSetError(f"{folder}: not a folder; the HPSv2 benchmark is a folder of <style>.json files")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise PromptSetError(f"{folder}: no .json files; expected one JSON list of prompts per style "
                             "(anime.json, concept-art.json, paintings.json, photo.json)")
    records, skipped = [], 0
    for file in files:
        prompts = _read_json(file)
        if not isinstance(prompts, list):
            raise PromptSetError(f"{file}: expected a JSON list of prompt strings, got {type(prompts).__name__}")
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise PromptSetError(f"{file}: item {index}: expected a prompt string, got {type(prompt).__name__}")
            if not prompt.strip():
                skipped += 1
                continue
            records.append(PromptRecord(f"{file.stem}/{index:05d}", prompt.strip(), file.stem))
    return _finish(folder.name, records, skipped, folder)


def load_drawbench(path: str | Path) -> PromptSet:
    """DrawBench-style table (.csv or .parquet): a prompt column (``Prompts``, ``prompt`` or
    ``text``, any case) and an optional ``Category`` column (any case). Rows are numbered from 1
    (the first data row) in errors."""
    path = _existing_file(path)
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
    else:
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise PromptSetError(f"{path}: empty file; expected a header with a prompt column") from None
    prompt_column = _find_column(list(table.columns), _DRAWBENCH_PROMPT_COLUMNS)
    if prompt_column is None:
        raise PromptSetError(f"{path}: no prompt column (one of {list(_DRAWBENCH_PROMPT_COLUMNS)}, any case); "
                             f"columns are {list(table.columns)}")
    category_column = _find_column(list(table.columns), (_CATEGORY_COLUMN,))
    categories = table[category_column] if category_column else [""] * len(table)
    entries = _entries(table[prompt_column], categories, path, prompt_column, category_column, first_row=1)
    return _positional_set(path.stem, entries, path)


def load_text(path: str | Path) -> PromptSet:
    """One prompt per line; lines starting with ``#`` are comments, blank lines count as skipped."""
    path = _existing_file(path)
    entries = [(line, "") for line in path.read_text(encoding="utf-8").splitlines()
               if not line.lstrip().startswith("#")]
    return _positional_set(path.stem, entries, path)


def load_jsonl(path: str | Path) -> PromptSet:
    """JSON lines ``{"prompt": str, "category": str (optional), "id": str (optional)}``.

    Rows without ``id`` get the 0-based position among kept prompts, zero-padded to 5 digits.
    """
    path = _existing_file(path)
    records, skipped, lines_of = [], 0, {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptSetError(f"{path}: line {line_number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise PromptSetError(f"{path}: line {line_number}: expected a JSON object, got {type(row).__name__}")
        if "prompt" not in row:
            raise PromptSetError(f"{path}: line {line_number}: no 'prompt' key; keys are {sorted(row)}")
        for key in ("prompt", "category", "id"):
            if key in row and not isinstance(row[key], str):
                raise PromptSetError(f"{path}: line {line_number}: column {key!r} must be a string, got "
                                     f"{type(row[key]).__name__}")
        if not row["prompt"].strip():
            skipped += 1
            continue
        record = PromptRecord(row.get("id", f"{len(records):05d}").strip(), row["prompt"].strip(),
                              row.get("category", "").strip())
        if record.id in lines_of:
            raise PromptSetError(f"{path}: line {line_number}: id {record.id!r} already used on line "
                                 f"{lines_of[record.id]}")
        lines_of[record.id] = line_number
        records.append(record)
    return _finish(path.stem, records, skipped, path)


def load_hf_dataset(name: str, split: str = "test", column: str = "prompt",
                    category_column: str | None = None) -> PromptSet:
    """Prompts from a Hugging Face dataset: a Hub id, a local dataset folder or a local data file.

    A local .parquet/.csv/.json/.jsonl file is loaded as split ``split`` whatever its name; a
    folder or Hub id goes through ``datasets.load_dataset(name, split=split)``. ``column`` and
    ``category_column`` match exactly, else case-insensitively; ``category_column=None`` uses a
    column named ``category`` (any case) when there is one. Rows in errors are dataset indices (0-based).
    """
    import datasets

    builders = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
    path = Path(name)
    if path.is_file() and path.suffix not in builders:
        raise PromptSetError(f"{name}: cannot load a {path.suffix or 'suffix-less'} file as a dataset; "
                             f"use one of {sorted(builders)}")
    try:
        if path.is_file():
            table = datasets.load_dataset(builders[path.suffix], data_files={split: [str(path)]}, split=split)
        else:
            table = datasets.load_dataset(name, split=split)
    except (ValueError, FileNotFoundError, ConnectionError) as error:
        raise PromptSetError(f"cannot load dataset {name!r} split {split!r}: {error}") from error
    columns = list(table.column_names)
    prompt_column = _find_column(columns, (column,))
    if prompt_column is None:
        raise PromptSetError(f"dataset {name!r} split {split!r}: no column {column!r}; columns are {columns}")
    if category_column is not None and _find_column(columns, (category_column,)) is None:
        raise PromptSetError(f"dataset {name!r} split {split!r}: no category column {category_column!r}; "
                             f"columns are {columns}")
    found_category = _find_column(columns, (category_column or _CATEGORY_COLUMN,))
    source = f"dataset {name!r} split {split!r}"
    categories = table[found_category] if found_category else [""] * len(table)
    entries = _entries(table[prompt_column], categories, source, prompt_column, found_category, first_row=0)
    return _positional_set(path.stem if path.exists() else name, entries, source)


def builtin_prompt_sets() -> list[str]:
    """Names of the prompt sets shipped in ``assets/prompts`` (file stems), sorted."""
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted({file.stem for file in BUILTIN_DIR.iterdir() if file.suffix in BUILTIN_SUFFIXES})


def load_prompt_set(spec: str) -> PromptSet:
    """A prompt set from a spec string.

    Forms: ``parti:PATH``, ``hpsv2:DIR``, ``drawbench:PATH``, ``text:PATH``, ``jsonl:PATH``,
    ``hf:NAME[:SPLIT[:COLUMN]]``, a builtin name (``shapes-demo``; see :func:`builtin_prompt_sets`),
    or an existing path whose suffix picks the format (.tsv parti, .csv/.parquet drawbench, .txt
    text, .jsonl jsonl, a folder of .json files hpsv2). Builtin names win over same-named paths;
    write ``./NAME`` for the path.
    """
    kind, _, rest = spec.partition(":")
    loaders = {"parti": load_partiprompts, "hpsv2": load_hpsv2_benchmark, "drawbench": load_drawbench,
               "text": load_text, "jsonl": load_jsonl}
    if kind in loaders and rest:
        return loaders[kind](rest)
    if kind == "hf" and rest:
        parts = rest.split(":")
        if len(parts) > 3 or not all(parts):
            raise PromptSetError(f"prompt spec {spec!r}: expected hf:NAME[:SPLIT[:COLUMN]]")
        return load_hf_dataset(*parts)
    if spec in builtin_prompt_sets():
        file = next(BUILTIN_DIR / f"{spec}{suffix}" for suffix in BUILTIN_SUFFIXES
                    if (BUILTIN_DIR / f"{spec}{suffix}").is_file())
        return load_prompt_set(str(file))
    path = Path(spec)
    by_suffix = {".tsv": load_partiprompts, ".csv": load_drawbench, ".parquet": load_drawbench, ".txt": load_text,
                 ".jsonl": load_jsonl}
    if path.is_file() and path.suffix in by_suffix:
        return by_suffix[path.suffix](path)
    if path.is_dir() and any(path.glob("*.json")):
        return load_hpsv2_benchmark(path)
    raise PromptSetError(f"unknown prompt set {spec!r}" + (" (the path exists but its format is not recognised)"
                                                          if path.exists() else "")
                         + f"; accepted forms: {'; '.join(SPEC_FORMS)}. Builtin names: {builtin_prompt_sets()}")


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise PromptSetError(f"{path}: prompt file not found")
    return path


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PromptSetError(f"{file}: not valid JSON (line {error.lineno}: {error.msg})") from None


def _find_column(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    """The first of ``wanted`` that is a column: exact match first, then case-insensitive."""
    for name in wanted:
        if name in columns:
            return name
        matches = [column for column in columns if str(column).lower() == name.lower()]
        if matches:
            return matches[0]
    return None


def _entries(texts, categories, source, prompt_column: str, category_column: str | None,
             first_row: int) -> list[tuple[str, str]]:
    """(text, category) pairs from two table columns, rows numbered from ``first_row`` in errors."""
    return [(_text_cell(text, source, row, prompt_column), _text_cell(category, source, row, category_column))
            for row, (text, category) in enumerate(zip(texts, categories), start=first_row)]


def _text_cell(value, source, row: int, column: str | None) -> str:
    """A table cell as text: None and NaN (missing) are "", any other non-string is an error."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    raise PromptSetError(f"{source}: row {row}: column {column!r} must be text, got {type(value).__name__} {value!r}")


def _positional_set(name: str, entries: list[tuple[str, str]], source) -> PromptSet:
    """A prompt set of (text, category) entries with positional ids; empty texts are skipped."""
    records, skipped = [], 0
    for text, category in entries:
        if not text.strip():
            skipped += 1
            continue
        records.append(PromptRecord(f"{len(records):05d}", text.strip(), category.strip()))
    return _finish(name, records, skipped, source)


def _finish(name: str, records: list[PromptRecord], skipped: int, source) -> PromptSet:
    if not records:
        raise PromptSetError(f"{source}: no prompts" + (f" ({skipped} empty prompts skipped)" if skipped else ""))
    return PromptSet(name, records, skipped)
