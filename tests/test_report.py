"""The static HTML report: files written, escaping, links, grid geometry, tables and errors."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFont

from diffalign.evaluation import report, tables
from diffalign.evaluation.report import ReportError, RunResult, write_report

SCORERS = ["pickscore", "hpsv2.1"]
PROMPTS = ["a photo of a dog", "<script>alert('x')</script> a cat"] + [f"a photo of thing {i}" for i in range(2, 10)]
CATEGORIES = ["animals"] * 5 + ["objects & tools"] * 5
SAMPLES = 2


def color(run: int, prompt: int, sample: int) -> tuple[int, int, int]:
    """A distinct solid color per image, so grid tiles can be told apart."""
    return (40 + 100 * run, 20 * prompt, 100 + 100 * sample)


def make_run(root: Path, name: str, index: int, categories: list[str], size: int = 32,
             run_json: bool = True) -> RunResult:
    """A scored run folder: images/, manifest.jsonl, optional run.json; scores drawn at random."""
    folder = root / name
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(index)
    rows = []
    for prompt_index, (prompt, category) in enumerate(zip(PROMPTS, categories)):
        for sample in range(SAMPLES):
            image = f"images/{prompt_index:05d}_{sample:02d}.png"
            Image.new("RGB", (size, size), color(index, prompt_index, sample)).save(folder / image)
            rows.append({"image": image, "prompt_id": f"{prompt_index:05d}", "prompt": prompt, "category": category,
                         "sample": sample, "seed": 1000 * prompt_index + sample})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if run_json:
        (folder / "run.json").write_text(json.dumps({"model": f"model-{name}", "lora": None, "seed": 7,
                                                     "images_per_prompt": SAMPLES, "num_inference_steps": 30,
                                                     "guidance_scale": 7.5, "name": name}))
    table = pd.DataFrame(rows)
    for scorer in SCORERS:
        table[scorer] = rng.normal(20.0 + index, 1.0, len(table)).round(3)
    summary = tables.summarize(table, SCORERS, run=name, resamples=200)
    return RunResult(name=name, folder=folder, table=table, summary=summary)


class ImageSources(HTMLParser):
    """Collects the src attribute of every <img>."""

    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


@pytest.fixture
def two_runs(tmp_path):
    base = make_run(tmp_path, "baseline", 0, CATEGORIES)
    tuned = make_run(tmp_path, "dpo-lora", 1, CATEGORIES, run_json=False)
    comparison = tables.compare(tuned.table, base.table, SCORERS, "dpo-lora", "baseline", resamples=200)
    return base, tuned, comparison


def test_report_files_tables_and_links(tmp_path, two_runs):
    base, tuned, comparison = two_runs
    out = tmp_path / "report"
    index = write_report(out, [base, tuned], [comparison], title="eval <v1>", grid_prompts=4)

    assert index == out / "index.html"
    page = index.read_text()
    assert "<title>eval &lt;v1&gt;</title>" in page
    for text in ("baseline", "dpo-lora", "model-baseline", *SCORERS, "objects &amp; tools", "HPSv2 protocol"):
        assert text in page
    win = comparison["scorers"]["pickscore"]["win_rate"]
    assert f"{win['rate']:.3f} [{win['low']:.3f}, {win['high']:.3f}]" in page
    assert f"{win['wins']} / {win['losses']} / {win['ties']}" in page
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "(wins + 0.5 ties) / n" in page and "clustered by prompt" in page and "http" not in page

    parser = ImageSources()
    parser.feed(page)
    assert "grids/grid.png" in parser.sources
    assert len(parser.sources) == 1 + 2 * len(SCORERS)  # grid, per scorer a histogram and a category chart
    for source in parser.sources:
        with Image.open(out / source) as image:
            image.verify()

    assert json.loads((out / "summary.json").read_text()) == {
        "title": "eval <v1>", "runs": [base.summary, tuned.summary], "comparisons": [comparison]}
    results = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert len(results) == 2 * len(SCORERS) * (1 + 2)
    assert set(results["category"]) == {"all", "animals", "objects & tools"}
    assert {"run", "scorer", "category", "mean", "low", "high", "n", "std"} <= set(results.columns)
    comparisons = pd.read_csv(out / "comparisons.csv", keep_default_na=False)
    assert len(comparisons) == len(SCORERS) * 3
    overall = comparisons[(comparisons["scorer"] == "pickscore") & (comparisons["category"] == "all")].iloc[0]
    assert (overall["a"], overall["b"], overall["wins"]) == ("dpo-lora", "baseline", win["wins"])
    assert not list(out.rglob(".tmp-*"))


def test_grid_geometry_labels_and_tiles(tmp_path, two_runs):
    base, tuned, _ = two_runs
    out = tmp_path / "report"
    write_report(out, [base, tuned], grid_prompts=3, grid_samples=3)

    tile = 32
    column = max(3 * tile + 2 * report.PAD, report.MIN_COLUMN_WIDTH)
    with Image.open(out / "grids" / "grid.png") as grid:
        assert grid.size == (report.PAD + report.LABEL_WIDTH + 2 * (report.PAD + column) + report.PAD,
                             report.HEADER_HEIGHT + 3 * (tile + report.PAD))
        grid = grid.convert("RGB")
        for run in range(2):
            left = 2 * report.PAD + report.LABEL_WIDTH + run * (report.PAD + column) + (column - 3 * tile
                                                                                       - 2 * report.PAD) // 2
            for prompt in range(3):
                top = report.HEADER_HEIGHT + prompt * (tile + report.PAD)
                for sample in range(3):
                    center = (left + sample * (tile + report.PAD) + tile // 2, top + tile // 2)
                    expected = color(run, prompt, sample) if sample < SAMPLES else report._EMPTY
                    assert grid.getpixel(center) == expected


def test_run_without_categories_downscales_and_skips_comparisons(tmp_path):
    run = make_run(tmp_path, "solo", 0, [""] * len(PROMPTS), size=300)
    out = tmp_path / "report"
    page = write_report(out, [run], grid_prompts=2).read_text()

    assert run.summary["scorers"]["pickscore"]["categories"] == {}
    assert "HPSv2 protocol" not in page and "Win rates" not in page
    assert not (out / "comparisons.csv").exists()
    assert sorted(path.name for path in (out / "plots").iterdir()) == ["hist-00-pickscore.png", "hist-01-hpsv2.1.png"]
    assert len(pd.read_csv(out / "results.csv")) == len(SCORERS)
    with Image.open(out / "grids" / "grid.png") as grid:
        assert grid.height == report.HEADER_HEIGHT + 2 * (report.TILE_MAX + report.PAD)


def test_comparison_naming_unknown_run_raises(tmp_path, two_runs):
    base, tuned, comparison = two_runs
    with pytest.raises(ReportError, match="'dpo-lora' as A, which is not one of the report's runs"):
        write_report(tmp_path / "report", [base], [comparison])
    assert not (tmp_path / "report").exists()


def test_mismatched_inputs_raise(tmp_path, two_runs):
    base, tuned, _ = two_runs
    with pytest.raises(ReportError, match="unique"):
        write_report(tmp_path / "report", [base, base])
    renamed = RunResult(name="other", folder=base.folder, table=base.table, summary=base.summary)
    with pytest.raises(ReportError, match="has the summary of run 'baseline'"):
        write_report(tmp_path / "report", [renamed])
    (base.folder / base.table["image"].iloc[0]).unlink()
    with pytest.raises(ReportError, match="cannot be read"):
        write_report(tmp_path / "report", [base, tuned], grid_prompts=1)


def test_grid_columns_follow_run_order(tmp_path, two_runs):
    base, tuned, comparison = two_runs
    out = tmp_path / "report"
    write_report(out, [tuned, base], [comparison], grid_prompts=1)

    column = report.MIN_COLUMN_WIDTH
    with Image.open(out / "grids" / "grid.png") as grid:
        for position, run in enumerate((1, 0)):
            left = 2 * report.PAD + report.LABEL_WIDTH + position * (report.PAD + column) + (column - 32) // 2
            assert grid.convert("RGB").getpixel((left + 16, report.HEADER_HEIGHT + 16)) == color(run, 0, 0)


def test_wrap_and_fit_stay_within_width():
    font = ImageFont.load_default()
    text = "a very long prompt " * 10 + "x" * 80
    lines = report._wrap(text, font, 100)
    assert len(lines) > 5 and all(font.getlength(line) <= 100 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert report._wrap("", font, 100) == [""]
    fitted = report._fit("a run name that is far too long", font, 60)
    assert fitted.endswith("...") and font.getlength(fitted) <= 60
