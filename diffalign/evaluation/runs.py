"""Run-folder level evaluation: summaries, paired comparisons and reports (what ``diffalign eval`` calls)."""

from __future__ import annotations

import json
from pathlib import Path

from diffalign.evaluation import tables
from diffalign.evaluation.generate import write_text_atomic
from diffalign.evaluation.report import RunResult, write_report
from diffalign.evaluation.scoring import read_scores, run_name


def summarize_run(run_dir: str | Path, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict:
    """Per-scorer summary of a scored run (schema in docs/evaluation.md), also written to RUN/summary.json."""
    run_dir = Path(run_dir)
    table = read_scores(run_dir)
    summary = tables.summarize(table, tables.scorer_columns(table), run=run_name(run_dir), confidence=confidence,
                               resamples=resamples, seed=seed)
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def compare_runs(run_a: str | Path, run_b: str | Path, scorers: list[str] | None = None, confidence: float = 0.95,
                 resamples: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of run A vs run B on the scorers both have (or ``scorers``)."""
    table_a, table_b = read_scores(run_a), read_scores(run_b)
    if scorers is None:
        scorers = [s for s in tables.scorer_columns(table_a) if s in set(tables.scorer_columns(table_b))]
        if not scorers:
            raise tables.EvaluationError(f"{run_a} and {run_b} have no scorer in common; score both with the same "
                                         "--scorer first")
    return tables.compare(table_a, table_b, scorers, run_name(run_a), run_name(run_b), confidence=confidence,
                          resamples=resamples, seed=seed)


def report_runs(run_dirs: list[str | Path], out_dir: str | Path, title: str = "diffalign evaluation",
                grid_prompts: int = 8, confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                grid_samples: int | None = None, figures: list[tuple[str, str | Path]] = ()) -> Path:
    """Summaries of every run, comparisons of each run against the first (the baseline), one HTML report
    (``figures``: extra (caption, PNG) pairs shown with the plots, e.g. training curves)."""
    runs = []
    for run_dir in run_dirs:
        summary = summarize_run(run_dir, confidence, resamples, seed)
        runs.append(RunResult(name=summary["run"], folder=Path(run_dir), table=read_scores(run_dir), summary=summary))
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise tables.EvaluationError(f"run names must be unique in a report, got {names}; set distinct names with "
                                     "`diffalign eval generate --name`")
    comparisons = [compare_runs(run_dir, run_dirs[0], confidence=confidence, resamples=resamples, seed=seed)
                   for run_dir in run_dirs[1:]]
    return write_report(out_dir, runs, comparisons, title=title, grid_prompts=grid_prompts, grid_samples=grid_samples,
                        figures=figures)


def format_summary(summary: dict) -> str:
    """A plain-text table of a run summary (overall and per category, mean [CI] n)."""
    lines = [f"{summary['run']}: {summary['n_images']} images, {summary['n_prompts']} prompts, "
             f"{int(summary['confidence'] * 100)}% cluster-bootstrap CIs"]
    for scorer, result in summary["scorers"].items():
        lines.append(f"  {scorer}: {_mean_ci(result['overall'])}")
        for category, value in result["categories"].items():
            lines.append(f"    {category}: {_mean_ci(value)}")
    return "\n".join(lines)


def format_comparison(comparison: dict) -> str:
    """A plain-text table of a paired comparison (win rate of A over B and mean difference)."""
    lines = [f"{comparison['a']} vs {comparison['b']}: {comparison['n_pairs']} paired images"]
    for scorer, result in comparison["scorers"].items():
        win = result["win_rate"]
        lines.append(f"  {scorer}: win rate {win['rate']:.3f} [{win['low']:.3f}, {win['high']:.3f}] "
                     f"(W/L/T {win['wins']}/{win['losses']}/{win['ties']}), mean difference "
                     f"{_mean_ci(result['mean_difference'])}")
    return "\n".join(lines)


def _mean_ci(value: dict) -> str:
    return f"{value['mean']:.4f} [{value['low']:.4f}, {value['high']:.4f}] n={value['n']}"
