"""A self-contained static report of evaluated runs: one HTML page, JSON/CSV tables, image grids and plots.

Report folder (every path relative to it, no external URLs, no JavaScript)::

    index.html         runs, score tables with CIs, HPSv2-protocol table, win rates, grids, plots
    summary.json       {"title", "runs": [summary, ...], "comparisons": [comparison, ...]}
    results.csv        tables.summary_rows of every run (category "all" = overall)
    comparisons.csv    tables.comparison_rows of every comparison (only when there are comparisons)
    grids/grid.png     first ``grid_prompts`` prompts: one row per prompt, one column per run
    plots/*.png        figures given by the caller (e.g. training curves), then per scorer: score
                       histogram of every run; per-category means with CIs

Summaries and comparisons follow the schemas of :mod:`diffalign.evaluation.tables`. Text files
are written atomically (temporary file in the same folder, then ``os.replace``), and so are images.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from diffalign.evaluation.tables import OVERALL, comparison_rows, summary_rows

TILE_MAX = 256  # largest grid tile side in pixels; images are downscaled (never upscaled) to fit
PAD = 8  # pixels around and between grid cells
LABEL_WIDTH = 240  # width of the prompt-text column of a grid
HEADER_HEIGHT = 28  # height of the run-name header row of a grid
LINE_HEIGHT = 14  # height of one line of grid text (PIL's default font)
MIN_COLUMN_WIDTH = 96  # narrowest run column of a grid, so that run names stay readable
HISTOGRAM_BINS = 30
GRID_COLUMNS = ("image", "prompt_id", "prompt", "category", "sample")  # score-table columns the grid reads
_BACKGROUND, _EMPTY, _INK = (255, 255, 255), (230, 230, 230), (20, 20, 20)
_RUN_COLUMNS = (("model", "model"), ("lora", "LoRA"), ("seed", "seed"), ("images_per_prompt", "images / prompt"),
                ("num_inference_steps", "steps"), ("guidance_scale", "guidance"))
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
td.better { background: #e3f4e3; }
td.worse { background: #f8e1e1; }
td.sub { padding-left: 1.5em; }
img { max-width: 100%; border: 1px solid #ddd; }
footer { margin-top: 3em; font-size: 0.9em; color: #555; border-top: 1px solid #ccc; padding-top: 1em; }
"""


class ReportError(ValueError):
    """Report inputs that do not fit together: unknown run names, mismatched summaries, missing images."""


@dataclass
class RunResult:
    """One evaluated run: display name, run folder (image paths of ``table`` are relative to it),
    score table (manifest columns + one column per scorer) and its summary (tables.summarize)."""

    name: str
    folder: Path
    table: pd.DataFrame
    summary: dict


def write_report(out_dir: str | Path, runs: Sequence[RunResult], comparisons: Sequence[dict] = (),
                 title: str = "diffalign evaluation", grid_prompts: int = 8, grid_samples: int | None = None,
                 figures: Sequence[tuple[str, str | Path]] = ()) -> Path:
    """Write the report folder (layout in the module docstring) and return the path of its index.html.

    ``figures`` are (caption, PNG path) pairs copied into plots/ and shown before the score plots.

    ``comparisons`` are tables.compare dicts whose "a" and "b" name runs of ``runs``. The grid
    (one column per run, in ``runs`` order) shows the first ``grid_prompts`` prompts of the first
    run's table (0 = no grid) with sample 0 of each run, or samples 0..grid_samples-1 side by side.
    """
    out_dir = Path(out_dir)
    runs, comparisons = list(runs), list(comparisons)
    _check_inputs(runs, comparisons, grid_prompts, grid_samples)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {"title": title, "runs": [run.summary for run in runs], "comparisons": comparisons}
    _write_text(out_dir / "summary.json", json.dumps(document, indent=2) + "\n")
    _write_csv(out_dir / "results.csv", [row for run in runs for row in summary_rows(run.summary)])
    if comparisons:
        _write_csv(out_dir / "comparisons.csv", [row for item in comparisons for row in comparison_rows(item)])
    grid = None
    if grid_prompts:
        columns = [(run.name, run) for run in runs]
        grid = (write_grid(out_dir / "grids" / "grid.png", columns, grid_prompts, grid_samples or 1),
                _grid_prompts(columns[0][1].table, grid_prompts))
    plots = [(caption, _copy_figure(Path(path), out_dir / "plots" / f"figure-{i:02d}.png"))
             for i, (caption, path) in enumerate(figures)] + write_plots(out_dir / "plots", runs)
    index = out_dir / "index.html"
    _write_text(index, render_html(out_dir, title, runs, comparisons, grid, plots))
    return index


def _check_inputs(runs: list[RunResult], comparisons: list[dict], grid_prompts: int, grid_samples: int | None) -> None:
    """Runs present with unique names matching their summaries; comparisons name known runs; grid sizes valid."""
    if not runs:
        raise ReportError("a report needs at least one run")
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ReportError(f"run names must be unique in a report, got {names}")
    for run in runs:
        if run.summary.get("run") != run.name:
            raise ReportError(f"run {run.name!r} has the summary of run {run.summary.get('run')!r}")
        needed = [*run.summary["scorers"], *(GRID_COLUMNS if grid_prompts else ())]
        missing = [column for column in needed if column not in run.table.columns]
        if missing:
            raise ReportError(f"run {run.name!r}: score table has no column(s) {missing}; columns are "
                              f"{list(run.table.columns)}")
    for index, comparison in enumerate(comparisons):
        for side in ("a", "b"):
            if comparison.get(side) not in names:
                raise ReportError(f"comparison {index} ({comparison.get('a')!r} vs {comparison.get('b')!r}) names "
                                  f"run {comparison.get(side)!r} as {side.upper()}, which is not one of the "
                                  f"report's runs {names}")
    if grid_prompts < 0:
        raise ReportError(f"grid_prompts must be >= 0, got {grid_prompts}")
    if grid_samples is not None and grid_samples < 1:
        raise ReportError(f"grid_samples must be None or >= 1, got {grid_samples}")


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary name next to ``path``, then move it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_figure(source: Path, path: Path) -> Path:
    if not source.is_file():
        raise ReportError(f"figure {source} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, lambda tmp: tmp.write_bytes(source.read_bytes()))
    return path


def _write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_csv(path: Path, rows: list[dict]) -> None:
    """Write dict rows as CSV (header from the first row's keys) to ``path`` atomically."""
    _write_text(path, pd.DataFrame(rows).to_csv(index=False))


# Image grid


def write_grid(path: Path, columns: list[tuple[str, RunResult]], prompts: int, samples: int = 1) -> Path:
    """A PNG grid of the first ``prompts`` prompts (rows, in the first column's table order) by
    ``columns`` of (header, run).

    Each run column holds samples 0..samples-1 side by side; a run without that image shows an
    empty tile. Geometry: tiles are squares of side ``min(TILE_MAX, largest image side)``; a
    column is ``max(samples * tile + (samples - 1) * PAD, MIN_COLUMN_WIDTH)`` wide; the image is
    ``PAD + LABEL_WIDTH + len(runs) * (PAD + column) + PAD`` wide and ``HEADER_HEIGHT + sum(row +
    PAD)`` high, where a row is ``max(tile, LINE_HEIGHT * lines of wrapped prompt text)`` high.
    """
    runs = [run for _, run in columns]
    rows = _grid_prompts(runs[0].table, prompts)
    cells = {(row, column, sample): _grid_image(run, prompt_id, sample)
             for row, prompt_id in enumerate(rows["prompt_id"]) for column, run in enumerate(runs)
             for sample in range(samples)}
    tile = min(TILE_MAX, max((max(image.size) for image in cells.values() if image is not None), default=TILE_MAX))
    font = ImageFont.load_default()
    labels = [_wrap(f"{prompt_id}: {text}", font, LABEL_WIDTH) for prompt_id, text in zip(rows["prompt_id"],
                                                                                          rows["prompt"])]
    heights = [max(tile, LINE_HEIGHT * len(lines)) for lines in labels]
    column_width = max(samples * tile + (samples - 1) * PAD, MIN_COLUMN_WIDTH)
    width = PAD + LABEL_WIDTH + len(runs) * (PAD + column_width) + PAD
    canvas = Image.new("RGB", (width, HEADER_HEIGHT + sum(heights) + PAD * len(rows)), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    lefts = [2 * PAD + LABEL_WIDTH + column * (PAD + column_width) for column in range(len(runs))]
    for left, (header, _) in zip(lefts, columns):
        draw.text((left, PAD), _fit(header, font, column_width), font=font, fill=_INK)
    top = HEADER_HEIGHT
    for row, (lines, height) in enumerate(zip(labels, heights)):
        for number, line in enumerate(lines):
            draw.text((PAD, top + number * LINE_HEIGHT), line, font=font, fill=_INK)
        for column, left in enumerate(lefts):
            start = left + (column_width - samples * tile - (samples - 1) * PAD) // 2
            for sample in range(samples):
                _paste_tile(canvas, cells[row, column, sample], (start + sample * (tile + PAD), top), tile)
        top += height + PAD
    _write_atomic(path, lambda tmp: canvas.save(tmp, format="PNG"))
    return path


def _grid_prompts(table: pd.DataFrame, prompts: int) -> pd.DataFrame:
    """The first row of each of the first ``prompts`` distinct prompt ids, in table order (prompt_id as str)."""
    first = table.drop_duplicates("prompt_id").head(prompts)
    return first.assign(prompt_id=first["prompt_id"].astype(str))


def _grid_image(run: RunResult, prompt_id: str, sample: int) -> Image.Image | None:
    """The RGB image of (prompt_id, sample) of a run, None when its table has no such row."""
    match = run.table[(run.table["prompt_id"].astype(str) == prompt_id) & (run.table["sample"].astype(int) == sample)]
    if match.empty:
        return None
    path = Path(run.folder) / str(match["image"].iloc[0])
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ReportError(f"run {run.name!r}: image of prompt {prompt_id!r} sample {sample} at {path} cannot be "
                          f"read ({error})") from error


def _paste_tile(canvas: Image.Image, image: Image.Image | None, corner: tuple[int, int], tile: int) -> None:
    """Paste ``image`` downscaled to fit a tile x tile square at ``corner`` (an empty square for None)."""
    if image is None:
        canvas.paste(Image.new("RGB", (tile, tile), _EMPTY), corner)
        return
    image = image.copy()
    image.thumbnail((tile, tile))
    canvas.paste(image, (corner[0] + (tile - image.width) // 2, corner[1] + (tile - image.height) // 2))


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide (long words are split)."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while len(word) > 1 and font.getlength(word) > width:
            cut = next((i for i in range(len(word) - 1, 0, -1) if font.getlength(word[:i]) <= width), 1)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    return [*lines, line] if line else lines or [""]


def _fit(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text`` cut to at most ``width`` pixels, ending in "..." when cut."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


# Plots


def write_plots(plot_dir: Path, runs: list[RunResult]) -> list[tuple[str, Path]]:
    """Per scorer a histogram of every run's scores and, when runs have categories, a bar chart of the
    per-category means with CI error bars. Returns (caption, path) per PNG written."""
    plots = []
    for index, scorer in enumerate(_scorers(runs)):
        stem = f"{index:02d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', scorer)}"
        plots.append((f"{scorer}: score distribution per run", _histogram(plot_dir / f"hist-{stem}.png", runs, scorer)))
        if _categories(runs, scorer):
            plots.append((f"{scorer}: mean per category with CI",
                          _category_bars(plot_dir / f"categories-{stem}.png", runs, scorer)))
    return plots


def _histogram(path: Path, runs: list[RunResult], scorer: str) -> Path:
    """Overlaid semi-transparent histograms (shared bins) of ``scorer`` for every run that has it."""
    series = [(run.name, run.table[scorer].to_numpy(float)) for run in runs if scorer in run.table.columns]
    bins = np.histogram_bin_edges(np.concatenate([values for _, values in series]), bins=HISTOGRAM_BINS)
    figure = _figure()
    axes = figure.subplots()
    for name, values in series:
        axes.hist(values, bins=bins, alpha=0.5, label=name)
    axes.set_xlabel(f"{scorer} score")
    axes.set_ylabel("images")
    axes.legend()
    return _save_figure(figure, path)


def _category_bars(path: Path, runs: list[RunResult], scorer: str) -> Path:
    """Grouped bars of the per-category means of ``scorer`` per run, with asymmetric CI error bars."""
    categories = _categories(runs, scorer)
    figure = _figure(width=max(6.4, 0.4 * len(categories) * len(runs) + 2))
    axes = figure.subplots()
    width = 0.8 / len(runs)
    bounds = []
    for index, run in enumerate(runs):
        values = run.summary["scorers"].get(scorer, {}).get("categories", {})
        stats = [values.get(category, {"mean": np.nan, "low": np.nan, "high": np.nan}) for category in categories]
        means = np.array([value["mean"] for value in stats], float)
        errors = np.array([[value["mean"] - value["low"] for value in stats],
                           [value["high"] - value["mean"] for value in stats]], float)
        axes.bar(np.arange(len(categories)) + (index - (len(runs) - 1) / 2) * width, means, width, yerr=errors,
                 capsize=3, label=run.name)
        bounds += [value[key] for value in stats for key in ("low", "high")]
    low, high = np.nanmin(bounds), np.nanmax(bounds)
    margin = 0.1 * (high - low) or 0.1 * abs(high) or 1.0
    axes.set_ylim(low - margin, high + margin)
    axes.set_xticks(np.arange(len(categories)), categories, rotation=30, ha="right")
    axes.set_ylabel(f"mean {scorer} score")
    axes.legend()
    return _save_figure(figure, path)


def _figure(width: float = 6.4, height: float = 4.0) -> Figure:
    """A matplotlib Figure on an Agg canvas: headless, without pyplot or a change of the global backend."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure: Figure, path: Path) -> Path:
    """Save ``figure`` as PNG to ``path`` atomically and return ``path``."""
    _write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    return path


def _scorers(runs: list[RunResult]) -> list[str]:
    """Scorer names of all run summaries, in order of first appearance."""
    return list(dict.fromkeys(scorer for run in runs for scorer in run.summary["scorers"]))


def _categories(runs: list[RunResult], scorer: str, key: str = "categories") -> list[str]:
    """Categories of ``scorer`` under ``key`` ("categories" or "hpsv2_protocol") over all runs, first-seen order."""
    return list(dict.fromkeys(category for run in runs
                              for category in run.summary["scorers"].get(scorer, {}).get(key, {})))


# HTML


def render_html(out_dir: Path, title: str, runs: list[RunResult], comparisons: list[dict],
                grid: tuple[Path, pd.DataFrame] | None, plots: list[tuple[str, Path]]) -> str:
    """The report page; every user-provided text is escaped, images are linked relative to ``out_dir``.

    ``grid`` is the grid PNG with the table rows of the prompts it shows, ``plots`` (caption, PNG) pairs.
    """
    downloads = ["summary.json", "results.csv", *(["comparisons.csv"] if comparisons else [])]
    sections = [
        f"<h1>{_e(title)}</h1>",
        "<p>Data: " + ", ".join(f'<a href="{_e(name)}">{_e(name)}</a>' for name in downloads) + "</p>",
        "<h2>Runs</h2>", _runs_table(runs),
        "<h2>Scores</h2>", *(_scores_section(runs, scorer) for scorer in _scorers(runs)),
        _hpsv2_section(runs),
        _comparisons_section(comparisons),
        _grid_section(out_dir, grid),
        _plots_section(out_dir, plots),
        _footer(runs, comparisons),
    ]
    body = "\n".join(section for section in sections if section)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _e(value) -> str:
    """``value`` as text, HTML-escaped for element content and quoted attributes."""
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table from escaped header texts and rows of ready ``<td>`` cells."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "\n".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _td(text: str, css: str = "") -> str:
    """A cell holding escaped ``text`` with optional CSS classes."""
    return f'<td class="{css}">{_e(text)}</td>' if css else f"<td>{_e(text)}</td>"


def _mean_ci(value: dict | None) -> str:
    """A MeanCI dict as "mean [low, high]" (— for None)."""
    return "—" if value is None else f"{value['mean']:.4f} [{value['low']:.4f}, {value['high']:.4f}]"


def _win_rate(value: dict) -> str:
    """A WinRate dict as "rate [low, high]" with three decimals."""
    return f"{value['rate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def _runs_table(runs: list[RunResult]) -> str:
    """Name, generation settings from RUN/run.json (— when absent) and image counts of every run."""
    rows = []
    for run in runs:
        info = _run_info(run)
        settings = [_td("—" if info.get(key) is None else info[key]) for key, _ in _RUN_COLUMNS]
        rows.append([_td(run.name), *settings, _td(run.summary.get("n_images", "—"), "num"),
                     _td(run.summary.get("n_prompts", "—"), "num")])
    return _table(["run", *(_e(label) for _, label in _RUN_COLUMNS), "images", "prompts"], rows)


def _run_info(run: RunResult) -> dict:
    """RUN/run.json as a dict, {} when the run folder has none."""
    path = Path(run.folder) / "run.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReportError(f"run {run.name!r}: {path} is not valid JSON ({error})") from error
    if not isinstance(info, dict):
        raise ReportError(f"run {run.name!r}: {path} must hold a JSON object, got {type(info).__name__}")
    return info


def _scores_section(runs: list[RunResult], scorer: str) -> str:
    """Mean [CI] of ``scorer``: rows overall and per category, columns runs."""
    header = ["category", *(_e(run.name) for run in runs)]
    rows = [[_td(category, "" if category == OVERALL else "sub"),
             *(_td(_mean_ci(_summary_value(run, scorer, category)), "num") for run in runs)]
            for category in [OVERALL, *_categories(runs, scorer)]]
    return f"<h3>{_e(scorer)}</h3>\n<p>mean [confidence interval]</p>\n{_table(header, rows)}"


def _summary_value(run: RunResult, scorer: str, category: str) -> dict | None:
    """The MeanCI of ``scorer`` in ``category`` (OVERALL = overall) of a run's summary, None if absent."""
    result = run.summary["scorers"].get(scorer, {})
    return result.get("overall") if category == OVERALL else result.get("categories", {}).get(category)


def _hpsv2_section(runs: list[RunResult]) -> str:
    """HPSv2-protocol tables (mean ± std of the 10 chunk means per style), for scorers that have them."""
    parts = []
    for scorer in _scorers(runs):
        categories = _categories(runs, scorer, "hpsv2_protocol")
        if not categories:
            continue
        rows = []
        for category in categories:
            cells = []
            for run in runs:
                value = run.summary["scorers"].get(scorer, {}).get("hpsv2_protocol", {}).get(category)
                cells.append(_td("—" if value is None else f"{value['mean']:.4f} ± {value['std']:.4f}", "num"))
            rows.append([_td(category), *cells])
        parts.append(f"<h3>{_e(scorer)}</h3>\n{_table(['style', *(_e(run.name) for run in runs)], rows)}")
    if not parts:
        return ""
    return ("<h2>HPSv2 protocol</h2>\n<p>Per style: the scores in table order split into 10 consecutive chunks; "
            "mean ± std (ddof 0) of the chunk means. Numbers are in the scorer's own scale.</p>\n" + "\n".join(parts))


def _comparisons_section(comparisons: list[dict]) -> str:
    """Per comparison: win rate of A over B [CI], W/L/T, n and mean difference A − B [CI], per scorer and category."""
    if not comparisons:
        return ""
    parts = ["<h2>Win rates</h2>"]
    header = ["scorer", "category", "win rate of A [CI]", "W / L / T", "pairs", "mean difference A − B [CI]"]
    for comparison in comparisons:
        rows = []
        for scorer, result in comparison["scorers"].items():
            rows.append(_comparison_row(scorer, OVERALL, result, ""))
            rows += [_comparison_row(scorer, category, value, "sub")
                     for category, value in result.get("categories", {}).items()]
        parts.append(f"<h3>A: {_e(comparison['a'])} vs B: {_e(comparison['b'])}</h3>\n"
                     f"<p>{_e(comparison.get('n_pairs', '—'))} paired images (same prompt and seed)</p>\n"
                     f"{_table(header, rows)}")
    return "\n".join(parts)


def _comparison_row(scorer: str, category: str, value: dict, css: str) -> list[str]:
    """One win-rate row; the win-rate cell is marked better/worse when its CI excludes 0.5."""
    win, difference = value["win_rate"], value["mean_difference"]
    verdict = "better" if win["low"] > 0.5 else "worse" if win["high"] < 0.5 else ""
    return [_td(scorer), _td(category, css), _td(_win_rate(win), f"num {verdict}".strip()),
            _td(f"{win['wins']} / {win['losses']} / {win['ties']}", "num"), _td(win["n"], "num"),
            _td(_mean_ci(difference), "num")]


def _grid_section(out_dir: Path, grid: tuple[Path, pd.DataFrame] | None) -> str:
    """The grid image and the list of the prompts it shows (id, text, category)."""
    if grid is None:
        return ""
    path, rows = grid
    items = "\n".join(f"<li><code>{_e(prompt_id)}</code> {_e(prompt)}{_category_note(category)}</li>"
                      for prompt_id, prompt, category in zip(rows["prompt_id"], rows["prompt"], rows["category"]))
    return (f"<h2>Images</h2>\n{_img(out_dir, path, 'image grid: one row per prompt, one column per run')}\n"
            f"<ol>\n{items}\n</ol>")


def _category_note(category) -> str:
    """The category in italics after a grid prompt; nothing for an empty or missing category."""
    return f" <em>({_e(category)})</em>" if isinstance(category, str) and category else ""


def _plots_section(out_dir: Path, plots: list[tuple[str, Path]]) -> str:
    """Every plot as a captioned figure."""
    if not plots:
        return ""
    return "<h2>Distributions</h2>\n" + "\n".join(f"<figure>{_img(out_dir, path, caption)}"
                                                  f"<figcaption>{_e(caption)}</figcaption></figure>"
                                                  for caption, path in plots)


def _img(out_dir: Path, path: Path, alt: str) -> str:
    """An <img> linking ``path`` relative to ``out_dir``."""
    return f'<img src="{_e(path.relative_to(out_dir).as_posix())}" alt="{_e(alt)}">'


def _footer(runs: list[RunResult], comparisons: list[dict]) -> str:
    """Statistical conventions, with the confidence levels and resample counts the summaries record."""
    documents = [run.summary for run in runs] + comparisons
    confidences = sorted({document["confidence"] for document in documents if "confidence" in document})
    resamples = sorted({document["resamples"] for document in documents if "resamples" in document})
    levels = ", ".join(f"{level:.0%}" for level in confidences) or "95% (default; not recorded)"
    counts = ", ".join(str(count) for count in resamples) or "2000 (default; not recorded in the summaries)"
    return ("<footer>\n<p>Intervals: percentile bootstrap clustered by prompt (prompts resampled with replacement, "
            f"all images of a drawn prompt kept), confidence {_e(levels)}, resamples {_e(counts)}.</p>\n"
            "<p>Win rate of A over B on paired images (same prompt and sample seed): (wins + 0.5 ties) / n, a win "
            "being a higher score of A. Cells are green/red when the interval excludes 0.5.</p>\n"
            "<p>Higher is better for every scorer. Category \"all\" is the overall result.</p>\n</footer>")
