"""What every report shares: reading the judge's per-row verdict files (``load_verdicts``),
metric and parser captions, the table columns and cell formatting, and saving a figure."""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.io import atomic_open, read_records
from metaaligner.judge.metrics import (
    METRIC_LABELS,
    METRIC_SHORT,
    METRICS,
)
from metaaligner.judge.positions import VERDICTS

ROW_KEYS = ("dataset", "policy", "target", "objective", "row", "verdict")
CONTROL_PREFIX = "control:"  # targets of the judge's control rows: not table rows
ALIGNED, ORIGIN = "aligned_responses", "origin_responses"
TABLE3_ORDER = ("MetaAligner", "MORLHF", "MODPO", "SFT")
DASH = "–"


# ----------------------------------------------------------------------------- loading

def find_row_files(paths: Iterable[str | Path]) -> list[Path]:
    """Per-row verdict CSVs (files or folders searched recursively), recognised by their header."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            candidates = [path]
        elif path.is_dir():
            candidates = sorted(p for p in path.rglob("*.csv") if p.is_file())
        else:
            raise MetaAlignerError(f"{path}: not found")
        for candidate in candidates:
            try:
                with open(candidate, encoding="utf-8-sig", newline="") as fh:
                    header = next(csv.reader(fh), [])
            except UnicodeDecodeError as exc:
                raise DataError(candidate, f"bytes that are not UTF-8 at offset {exc.start}") from None
            if all(key in header for key in ROW_KEYS):
                found.append(candidate)
            elif path.is_file():
                raise DataError(candidate, f"not a judge per-row file (needs columns {', '.join(ROW_KEYS)})")
    return found


def load_verdicts(paths: Iterable[str | Path], mode: str | None = None) -> list[dict[str, Any]]:
    """All per-row verdicts under ``paths`` (optionally only ``mode`` pairwise|rating), ``row`` as int.

    Refused, naming file and row: a header-only file, a column named twice, one row judged twice
    (the same dataset/policy/target/objective/row), a rating that is not a number in 0-10."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple, tuple[str, int, str]] = {}
    files = list(dict.fromkeys(Path(f).resolve() for f in find_row_files(paths)))
    for file in files:
        records = read_records(file)
        if not records:
            raise DataError(file, "has a header but no rows; re-run the judge for it or leave the file out")
        for i, row in enumerate(records, start=1):
            if mode and row.get("mode", "pairwise") != mode:
                continue
            if str(row.get("target", "")).startswith(CONTROL_PREFIX):
                continue  # read through the .controls.json summaries
            try:
                row["row"] = int(row["row"])
            except (TypeError, ValueError):
                raise DataError(file, f"row id {row.get('row')!r} is not an integer", row=i, column="row") from None
            if row.get("mode", "pairwise") == "pairwise" and row.get("verdict") not in VERDICTS:
                # An unknown verdict would silently score 0; refuse it instead.
                raise DataError(file, f"unknown verdict {row.get('verdict')!r}; expected one of {', '.join(VERDICTS)}",
                                row=i, column="verdict")
            if row.get("mode", "pairwise") == "rating":
                _check_rating(file, row, i)
            _check_unique(file, row, i, seen)
            row["_file"] = str(file)
            rows.append(row)
    return rows


def _check_unique(file: Path, row: dict[str, Any], i: int, seen: dict[tuple, tuple[str, int, str]]) -> None:
    """One verdict per (dataset, policy, target, objective, mode, row): a second would reweight it."""
    key = tuple(str(row.get(k, "")) for k in ("dataset", "policy", "target", "objective", "mode")) + (row["row"],)
    if key in seen:
        where, j, verdict = seen[key]
        raise DataError(file, f"row id {row['row']} is judged twice (also {where} row {j}, verdict {verdict!r}; "
                              f"here {row.get('verdict')!r}); keep one judge run per output", row=i, column="row")
    seen[key] = (str(file), i, str(row.get("verdict")))


def _check_rating(file: Path, row: dict[str, Any], i: int) -> None:
    """A valid rating is a finite number in 0-10; an invalid one has an empty score."""
    import math

    if row.get("verdict") == "invalid" and str(row.get("score", "")) == "":
        return
    try:
        score = float(row.get("score"))
    except (TypeError, ValueError):
        raise DataError(file, f"rating {row.get('score')!r} is not a number", row=i, column="score") from None
    if not math.isfinite(score) or not 0 <= score <= 10:
        raise DataError(file, f"rating {row.get('score')!r} is outside 0-10", row=i, column="score")


def _group(rows: list[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(k, "") for k in keys)].append(row)
    return groups


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise MetaAlignerError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")


def parse_metrics(metric: str | list[str] | None, default: str = "win_half_tie") -> list[str]:
    """``"win_plus_tie,win_half_tie"`` -> both, in that order (the first is the headline)."""
    names = [m.strip() for m in (metric.split(",") if isinstance(metric, str) else metric or []) if m.strip()]
    for name in names or [default]:
        _check_metric(name)
    return list(dict.fromkeys(names or [default]))


def parser_of(rows: list[dict[str, Any]]) -> str:
    """The verdict parser(s) named by the rows' ``judge_parser`` column ('' for files written before it)."""
    return ",".join(sorted({str(r.get("judge_parser") or "") for r in rows} - {""}))


def parser_label(parsers: Iterable[str]) -> str:
    names = sorted({p for value in parsers for p in str(value).split(",") if p})
    if not names:
        return "verdict parser not recorded (judged before the judge_parser column)"
    parts = []
    for name in names:
        if name == "released":
            parts.append("the released substring parser (the candidate's position digit anywhere in the reply = "
                         "win, else '0' anywhere = tie, else loss; never invalid)")
        else:
            parts.append(f"the strict parser {name} (anchored; a reply unparsable after one reminder = invalid)")
    return "verdict parser " + " and ".join(parts)


def _caption_metrics(metrics: list[str]) -> str:
    return "metric " + "; ".join(METRIC_LABELS[m] for m in metrics)


def objective_rank(dataset: str, objective: str) -> tuple[int, str]:
    """Sort key: the dataset config's objective order (seen, then unseen), then others by name."""
    from metaaligner.registry.datasets import available, load_dataset_config

    if dataset not in available():  # a cell read from data names a shipped config, never a file
        return (10_000, objective)
    try:
        config = load_dataset_config(dataset)
    except MetaAlignerError:
        return (10_000, objective)
    order = list(config.objectives) + list(config.unseen_objectives)
    return (order.index(objective), objective) if objective in order else (len(order), objective)


def _columns(cells: list[Any]) -> list[tuple[str, str, str]]:
    """(dataset, objective, name) grouped by dataset (first-seen order), objectives in config order."""
    datasets: dict[str, dict[str, str]] = {}
    for cell in cells:
        datasets.setdefault(cell.dataset, {}).setdefault(cell.objective, cell.objective_name)
    return [(d, o, objs[o]) for d, objs in datasets.items() for o in sorted(objs, key=lambda o: objective_rank(d, o))]


def _row_names(cells: list[Any], attr: str, order: Iterable[str] = ()) -> list[str]:
    seen = list(dict.fromkeys(getattr(c, attr) for c in sorted(cells, key=lambda c: c.dataset)))
    first = [name for name in order if name in seen]
    return first + [name for name in seen if name not in first]


def fmt_pct(value: float, signed: bool = True) -> str:
    if math.isnan(value):  # no row counted (e.g. all invalid under win_plus_tie)
        return "n/a"
    return f"{value * 100:+.2f}%" if signed else f"{value * 100:.2f}%"


def _ci(low: float, high: float, signed: bool = True) -> str:
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return f"[{fmt.format(low * 100)}, {fmt.format(high * 100)}]"


def _metrics_of(cells: list[Any]) -> list[str]:
    return list(dict.fromkeys(c.metric for c in cells)) or ["win_half_tie"]


def _header(columns: list[tuple[str, str, str]], metrics: list[str]) -> list[str]:
    """One column per objective, or per (objective, metric) when several metrics sit side by side."""
    if len(metrics) == 1:
        return [f"{d}: {name}" for d, _, name in columns]
    return [f"{d}: {name} {METRIC_SHORT[m]}" for d, _, name in columns for m in metrics]


def resolution_note(cells: list[Any], null: float, what: str) -> str:
    """Whether the table can show an effect at its size: how many cells have a 95% interval that
    excludes ``null`` (0 for a gain, 50% for a win rate), and the rows per cell."""
    if not cells:
        return ""
    sizes = sorted(c.n for c in cells)
    clear = sum(1 for c in cells if not (c.low <= null <= c.high))
    span = f"{sizes[0]}" if sizes[0] == sizes[-1] else f"{sizes[0]}-{sizes[-1]}"
    text = f"Rows per cell: {span}; {clear} of {len(cells)} cells have a 95% interval that excludes {what}."
    if clear == 0:
        text += " At this size the table cannot tell an effect from noise."
    return text


def _tex(text: str) -> str:
    return (str(text).replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%")
            .replace("_", r"\_").replace("#", r"\#").replace("$", r"\$"))


def _save_png(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    plt.close(fig)
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getvalue())
    return path
