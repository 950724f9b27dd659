"""Every report at once (``write_reports``): each artefact's files written into a temporary folder
swapped in whole for the output folder."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from metaaligner.errors import MetaAlignerError
from metaaligner.io import atomic_open, write_csv
from metaaligner.reports.common import (
    ALIGNED,
    TABLE3_ORDER,
    load_verdicts,
    parse_metrics,
)
from metaaligner.reports.controls import (
    latex_with_controls,
    load_controls,
    with_controls,
)
from metaaligner.reports.figure3 import (
    PAPER_STEPS,
    Figure3Point,
    figure3_markdown,
    figure3_points,
    labelled_inputs,
    plot_figure3,
)
from metaaligner.reports.ratings import (
    RatingCell,
    plot_ratings,
    ratings_data,
    ratings_markdown,
)
from metaaligner.reports.table2 import (
    GainCell,
    table2,
    table2_latex,
    table2_markdown,
    task_rows_markdown,
)
from metaaligner.reports.table3 import (
    RateCell,
    device_hours,
    table3,
    table3_latex,
    table3_markdown,
)


def _write_text(path: Path, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def _write_table2(output_dir: Path, inputs: list[str], metrics: list[str], n_boot: int, seed: int,
                  written: dict[str, Any]) -> None:
    rows = load_verdicts(inputs, "pairwise")
    cells = [c for m in metrics for c in table2(rows, m, n_boot, seed)]
    if not cells:
        raise MetaAlignerError("Table 2 needs pairwise verdicts for both aligned_responses and origin_responses "
                               f"under {inputs}")
    controls = load_controls(inputs)
    tasks = task_rows_markdown(cells)
    _write_text(output_dir / "table2.md",
                with_controls(table2_markdown(cells), rows, controls) + ("\n" + tasks if tasks else ""))
    _write_text(output_dir / "table2.tex", latex_with_controls(table2_latex(cells), rows, controls))
    write_csv(output_dir / "table2.csv", [asdict(c) for c in cells], list(GainCell.__dataclass_fields__))
    written["table2"] = cells
    written["files"] += [output_dir / f"table2.{ext}" for ext in ("md", "tex", "csv")]
    if tasks:   # the supplement: one row per policy/task of the pooled datasets
        pooled = {c.dataset for c in cells if c.task_rows}
        task_cells = [c for m in metrics for c in table2([r for r in rows if r.get("dataset") in pooled], m, n_boot,
                                                          seed, pool_tasks=False)]
        text = ("Supplement to table2.md: one row per policy/task of " + ", ".join(sorted(pooled))
                + " (Table 2 pools each policy's tasks).\n\n" + table2_markdown(task_cells))
        _write_text(output_dir / "table2_tasks.md", with_controls(text, rows, controls))
        write_csv(output_dir / "table2_tasks.csv", [asdict(c) for c in task_cells],
                  list(GainCell.__dataclass_fields__))
        written["table2_tasks"] = task_cells
        written["files"] += [output_dir / f"table2_tasks.{ext}" for ext in ("md", "csv")]


def _write_table3(output_dir: Path, inputs: list[str], metrics: list[str], n_boot: int, seed: int,
                  training_logs: dict[str, str] | None, methods: list[str] | None, written: dict[str, Any]) -> None:
    rows = load_verdicts(inputs, "pairwise")
    cells = [c for m in metrics for c in table3(rows, m, ALIGNED, n_boot, seed)]
    if not cells:
        raise MetaAlignerError(f"Table 3 found no pairwise aligned_responses verdicts under {inputs}")
    hours = device_hours(training_logs or {})
    order = methods or list(TABLE3_ORDER)
    controls = load_controls(inputs)
    shown = [r for r in rows if r["target"] == ALIGNED]
    _write_text(output_dir / "table3.md", with_controls(table3_markdown(cells, hours, order), shown, controls))
    _write_text(output_dir / "table3.tex", latex_with_controls(table3_latex(cells, hours, order), shown, controls))
    out_rows = [{**asdict(c), "gpu_hours": hours.get(c.method)} for c in cells]
    write_csv(output_dir / "table3.csv", out_rows, list(RateCell.__dataclass_fields__) + ["gpu_hours"])
    written.update(table3=cells, gpu_hours=hours)
    written["files"] += [output_dir / f"table3.{ext}" for ext in ("md", "tex", "csv")]


def _write_figure3(output_dir: Path, inputs: list[str], metric: str, n_boot: int, seed: int,
                   written: dict[str, Any]) -> None:
    steps = labelled_inputs(inputs, PAPER_STEPS)
    runs = [(label, load_verdicts([path], "pairwise")) for label, path in steps]
    points = figure3_points(runs, metric, n_boot, seed)
    labels = [label for label, _ in steps]
    plot_figure3(points, labels, output_dir / "figure3.png")
    rows = [r for _, step_rows in runs for r in step_rows]
    text = with_controls(figure3_markdown(points, labels), rows, load_controls(path for _, path in steps))
    _write_text(output_dir / "figure3.md", text)
    write_csv(output_dir / "figure3.csv", [asdict(p) for p in points], list(Figure3Point.__dataclass_fields__))
    written["figure3"] = points
    written["files"] += [output_dir / f"figure3.{ext}" for ext in ("png", "md", "csv")]


def _write_ratings(output_dir: Path, inputs: list[str], n_boot: int, seed: int, written: dict[str, Any]) -> None:
    labelled = labelled_inputs(inputs)
    runs = [(label, load_verdicts([path], "rating")) for label, path in labelled]
    cells = ratings_data(runs, n_boot, seed)
    plot_ratings(cells, output_dir / "ratings.png")
    rows = [r for _, run_rows in runs for r in run_rows]
    text = with_controls(ratings_markdown(cells), rows, load_controls(path for _, path in labelled))
    _write_text(output_dir / "ratings.md", text)
    write_csv(output_dir / "ratings.csv", [asdict(c) for c in cells], list(RatingCell.__dataclass_fields__))
    written["ratings"] = cells
    written["files"] += [output_dir / f"ratings.{ext}" for ext in ("png", "md", "csv")]


def write_reports(output_dir: str | Path, table2_inputs: list[str] | None = None,
                  table3_inputs: list[str] | None = None, rating_inputs: list[str] | None = None,
                  metric: str | list[str] = "win_half_tie", n_boot: int = 1000, seed: int = 0,
                  training_logs: dict[str, str] | None = None, methods: list[str] | None = None,
                  figure3_inputs: list[str] | None = None) -> dict[str, Any]:
    """Write every report whose inputs are given, into a temporary folder swapped in for
    ``output_dir`` at the end (whole or absent); returns the paths written and the cells.

    ``metric``: one name or several (comma-separated or a list), shown side by side in Tables 2/3;
    Figure 3 uses the first. ``figure3_inputs``: the step folders in order (``label=path`` or a path;
    up to 7 bare paths take the paper's step labels). ``rating_inputs``: rating-mode judge folders,
    one per alignment condition (``label=path`` or a path labelled by its folder name).
    """
    from metaaligner.io import atomic_folder

    final = Path(output_dir)
    inputs = {"table2": table2_inputs, "table3": table3_inputs, "figure3": figure3_inputs, "ratings": rating_inputs}
    with atomic_folder(final) as tmp:
        written = _write_reports(tmp, inputs, parse_metrics(metric), n_boot, seed, training_logs, methods)
    written["files"] = [final / Path(p).relative_to(tmp) for p in written["files"]]
    return written


def _write_reports(output_dir: Path, inputs: dict[str, list[str] | None], metrics: list[str], n_boot: int,
                   seed: int, training_logs: dict[str, str] | None, methods: list[str] | None) -> dict[str, Any]:
    table2_inputs, table3_inputs = inputs["table2"], inputs["table3"]
    figure3_inputs, rating_inputs = inputs["figure3"], inputs["ratings"]
    written: dict[str, Any] = {"files": []}
    if table2_inputs:
        _write_table2(output_dir, table2_inputs, metrics, n_boot, seed, written)
    if table3_inputs:
        _write_table3(output_dir, table3_inputs, metrics, n_boot, seed, training_logs, methods, written)
    if figure3_inputs:
        _write_figure3(output_dir, figure3_inputs, metrics[0], n_boot, seed, written)
    if rating_inputs:
        _write_ratings(output_dir, rating_inputs, n_boot, seed, written)
    if not written["files"]:
        raise MetaAlignerError("nothing to report: give --inputs (Table 2), --table3_inputs, --figure3_inputs "
                               "and/or --ratings")
    return written
