"""The paper's Table 2, Table 3 and Figure 3 from the judge's per-row verdict files.

- Table 2: rows = policy models, columns = objectives grouped by dataset; a cell is
  metric(aligned) - metric(original) over the same rows (same judge, same candidate positions), with a
  paired bootstrap 95% interval (rows resampled together). Markdown, CSV and LaTeX.
- Table 3: methods (MetaAligner, MORLHF, MODPO, SFT, then any other) x objectives: metric of each
  method's ``aligned_responses`` vs the golden answer, plus training GPU hours read from each method's
  training log (``read_device_hours``) when given.
- Figure 3: mean 0-10 rating per objective, seen vs unseen (zero-shot) objectives, aligned vs
  unaligned, with bootstrap 95% intervals; PNG via matplotlib (Agg) plus the numbers as CSV/Markdown.

Metrics (see ``metaaligner.judge.metrics``): ``win_half_tie`` = (W + T/2)/N (default), ``win`` = W/N,
``paper`` = (W + T)/N, which is what the released scripts printed.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.io import atomic_open, read_records, write_csv
from metaaligner.judge.positions import VERDICTS
from metaaligner.judge.metrics import METRIC_LABELS, METRICS, bootstrap_ci, paired_bootstrap_diff, verdict_scores

ROW_KEYS = ("dataset", "policy", "target", "objective", "row", "verdict")
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


# ----------------------------------------------------------------------------- Table 2

@dataclass
class GainCell:
    dataset: str
    policy: str
    objective: str
    objective_name: str
    n: int
    aligned: float
    origin: float
    gain: float
    low: float
    high: float
    metric: str


def table2(rows: list[dict[str, Any]], metric: str = "win_half_tie", n_boot: int = 1000, seed: int = 0) -> list[GainCell]:
    """One cell per (dataset, policy, objective) that has both targets, over the rows both have."""
    _check_metric(metric)
    cells = []
    groups = _group([r for r in rows if r.get("mode", "pairwise") == "pairwise"], "dataset", "policy", "objective")
    for (dataset, policy, objective), group in groups.items():
        aligned = {r["row"]: r for r in group if r["target"] == ALIGNED}
        origin = {r["row"]: r for r in group if r["target"] == ORIGIN}
        common = sorted(set(aligned) & set(origin))
        if not common:
            continue
        for i in common:
            a, o = aligned[i], origin[i]
            if str(a.get("position", "")) != str(o.get("position", "")):
                raise MetaAlignerError(f"{policy}/{objective} row {i}: the aligned and original answers were judged "
                                       "with different candidate positions (different --seed?); Table 2 needs the same")
            for key in ("judge_model", "judge_prompt"):
                if a.get(key, "") != o.get(key, ""):
                    raise MetaAlignerError(f"{policy}/{objective} row {i}: aligned and original were judged by "
                                           f"different {key} ({a.get(key)!r} vs {o.get(key)!r})")
        sa = verdict_scores([aligned[i]["verdict"] for i in common], metric)
        so = verdict_scores([origin[i]["verdict"] for i in common], metric)
        gain, low, high = paired_bootstrap_diff(sa, so, n_boot=n_boot, seed=seed)
        name = aligned[common[0]].get("objective_name") or objective
        cells.append(GainCell(dataset, policy, objective, name, len(common), float(sa.mean()), float(so.mean()),
                              gain, low, high, metric))
    return cells


def objective_rank(dataset: str, objective: str) -> tuple[int, str]:
    """Sort key: the dataset config's objective order (seen, then unseen), then others by name."""
    from metaaligner.datasets import available, load_dataset_config

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
    return f"{value * 100:+.2f}%" if signed else f"{value * 100:.2f}%"


def _ci(low: float, high: float, signed: bool = True) -> str:
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return f"[{fmt.format(low * 100)}, {fmt.format(high * 100)}]"


def table2_markdown(cells: list[GainCell]) -> str:
    columns = _columns(cells)
    index = {(c.policy, c.dataset, c.objective): c for c in cells}
    metric = cells[0].metric if cells else "win_half_tie"
    header = ["Policy"] + [f"{d}: {name}" for d, _, name in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for policy in _row_names(cells, "policy"):
        out = [policy]
        for dataset, objective, _ in columns:
            cell = index.get((policy, dataset, objective))
            out.append(DASH if cell is None else f"{fmt_pct(cell.gain)} {_ci(cell.low, cell.high)}")
        lines.append("| " + " | ".join(out) + " |")
    lines.append("")
    lines.append(f"Gain in win rate after alignment, metric {METRIC_LABELS[metric]}: aligned minus original answer, "
                 "each judged against the golden answer with the same judge and candidate positions; "
                 "[95% paired bootstrap interval], percentage points.")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return (str(text).replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%")
            .replace("_", r"\_").replace("#", r"\#").replace("$", r"\$"))


def table2_latex(cells: list[GainCell]) -> str:
    columns = _columns(cells)
    index = {(c.policy, c.dataset, c.objective): c for c in cells}
    groups: dict[str, int] = {}
    for dataset, _, _ in columns:
        groups[dataset] = groups.get(dataset, 0) + 1
    lines = [r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule"]
    lines.append(" & ".join([""] + [rf"\multicolumn{{{n}}}{{c}}{{{_tex(d)}}}" for d, n in groups.items()]) + r" \\")
    start = 2
    rules = []
    for n in groups.values():
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    lines.append(" ".join(rules))
    lines.append(" & ".join(["Policy"] + [_tex(name) for _, _, name in columns]) + r" \\")
    lines.append(r"\midrule")
    for policy in _row_names(cells, "policy"):
        out = [_tex(policy)]
        for dataset, objective, _ in columns:
            cell = index.get((policy, dataset, objective))
            out.append("--" if cell is None else
                       rf"{cell.gain * 100:+.2f}\% {{\scriptsize [{cell.low * 100:+.1f}, {cell.high * 100:+.1f}]}}")
        lines.append(" & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- Table 3

@dataclass
class RateCell:
    dataset: str
    method: str
    objective: str
    objective_name: str
    n: int
    rate: float
    low: float
    high: float
    metric: str


def table3(rows: list[dict[str, Any]], metric: str = "win_half_tie", target: str = ALIGNED, n_boot: int = 1000,
           seed: int = 0) -> list[RateCell]:
    """Each method's (= policy file's) win rate of ``target`` against the golden answer."""
    _check_metric(metric)
    cells = []
    pairwise = [r for r in rows if r.get("mode", "pairwise") == "pairwise" and r["target"] == target]
    for (dataset, method, objective), group in _group(pairwise, "dataset", "policy", "objective").items():
        scores = verdict_scores([r["verdict"] for r in group], metric)
        low, high = bootstrap_ci(scores, n_boot=n_boot, seed=seed)
        name = group[0].get("objective_name") or objective
        cells.append(RateCell(dataset, method, objective, name, len(group), float(scores.mean()), low, high, metric))
    return cells


def resolve_log(path: str | Path) -> list[Path]:
    """A training log file, or the ``train_log.jsonl`` files in a training output folder
    (``training_log.jsonl``: the name ``training/train_aligner.py`` writes)."""
    path = Path(path)
    if path.is_dir():
        for name in ("train_log.jsonl", "training_log.jsonl"):
            if (path / name).exists():
                return [path / name]
        return sorted(path.rglob("train_log.jsonl")) or sorted(path.rglob("training_log.jsonl"))
    return [path]


def device_hours(logs: dict[str, str | Path]) -> dict[str, float | None]:
    """Training GPU (device) hours per method from its training log(s), None when absent."""
    from metaaligner.training.common import read_device_hours

    hours: dict[str, float | None] = {}
    for method, path in logs.items():
        values = [h for h in (read_device_hours(p) for p in resolve_log(path)) if h is not None]
        hours[method] = sum(values) if values else None
    return hours


def table3_markdown(cells: list[RateCell], hours: dict[str, float | None] | None = None,
                    order: Iterable[str] = TABLE3_ORDER) -> str:
    hours = hours or {}
    columns = _columns(cells)
    index = {(c.method, c.dataset, c.objective): c for c in cells}
    metric = cells[0].metric if cells else "win_half_tie"
    header = ["Method"] + [f"{d}: {name}" for d, _, name in columns] + ["GPU hours"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in _row_names(cells, "method", order):
        out = [method]
        for dataset, objective, _ in columns:
            cell = index.get((method, dataset, objective))
            out.append(DASH if cell is None else f"{fmt_pct(cell.rate, False)} {_ci(cell.low, cell.high, False)}")
        h = hours.get(method)
        out.append(DASH if h is None else f"{h:.2f}")
        lines.append("| " + " | ".join(out) + " |")
    lines.append("")
    lines.append(f"Win rate against the golden answer, metric {METRIC_LABELS[metric]} [95% bootstrap interval]; "
                 "GPU hours = training device hours from the training logs (– = no log given).")
    return "\n".join(lines) + "\n"


def table3_latex(cells: list[RateCell], hours: dict[str, float | None] | None = None,
                 order: Iterable[str] = TABLE3_ORDER) -> str:
    hours = hours or {}
    columns = _columns(cells)
    index = {(c.method, c.dataset, c.objective): c for c in cells}
    lines = [r"\begin{tabular}{l" + "c" * len(columns) + "r}", r"\toprule",
             " & ".join(["Method"] + [_tex(f"{d}: {n}") for d, _, n in columns] + ["GPU hours"]) + r" \\",
             r"\midrule"]
    for method in _row_names(cells, "method", order):
        out = [_tex(method)]
        for dataset, objective, _ in columns:
            cell = index.get((method, dataset, objective))
            out.append("--" if cell is None else rf"{cell.rate * 100:.2f}\%")
        h = hours.get(method)
        out.append("--" if h is None else f"{h:.2f}")
        lines.append(" & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- Figure 3

@dataclass
class RatingBar:
    dataset: str
    policy: str
    objective: str
    objective_name: str
    unseen: bool
    target: str
    n: int
    valid: int
    mean: float | None
    low: float | None
    high: float | None


def figure3_data(rows: list[dict[str, Any]], n_boot: int = 1000, seed: int = 0) -> list[RatingBar]:
    bars = []
    rating = [r for r in rows if r.get("mode") == "rating"]
    for (dataset, policy, objective, target), group in _group(rating, "dataset", "policy", "objective",
                                                              "target").items():
        scores = [float(r["score"]) for r in group if r.get("verdict") != "invalid" and str(r.get("score", "")) != ""]
        mean = sum(scores) / len(scores) if scores else None
        low, high = bootstrap_ci(scores, n_boot=n_boot, seed=seed) if scores else (None, None)
        unseen = str(group[0].get("unseen", "0")).lower() in ("1", "true")
        bars.append(RatingBar(dataset, policy, objective, group[0].get("objective_name") or objective, unseen, target,
                              len(group), len(scores), mean, low, high))
    return bars


def plot_figure3(bars: list[RatingBar], path: str | Path) -> Path:
    """Grouped bars per objective (seen first, then unseen), unaligned vs aligned, one panel per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(b.policy for b in bars))
    if not policies:
        raise MetaAlignerError("no rating rows found for Figure 3 (run evaluation/judge.py --mode rating)")
    fig, axes = plt.subplots(len(policies), 1, figsize=(max(6.0, 1.1 * _n_objectives(bars) + 2), 3.6 * len(policies)),
                             squeeze=False)
    styles = {ORIGIN: ("unaligned", "#9e9e9e"), ALIGNED: ("aligned", "#1f77b4")}
    for ax, policy in zip(axes[:, 0], policies):
        mine = [b for b in bars if b.policy == policy]
        objectives = list(dict.fromkeys(b.objective for b in sorted(
            mine, key=lambda b: (b.unseen, objective_rank(b.dataset, b.objective)))))
        names = {b.objective: b.objective_name for b in mine}
        unseen = {b.objective: b.unseen for b in mine}
        width = 0.38
        for k, target in enumerate((ORIGIN, ALIGNED)):
            label, color = styles[target]
            xs, means, errs = [], [], [[], []]
            for x, objective in enumerate(objectives):
                bar = next((b for b in mine if b.objective == objective and b.target == target), None)
                if bar is None or bar.mean is None:
                    continue
                xs.append(x + (k - 0.5) * width)
                means.append(bar.mean)
                errs[0].append(max(0.0, bar.mean - bar.low))
                errs[1].append(max(0.0, bar.high - bar.mean))
            if xs:
                ax.bar(xs, means, width, yerr=errs, capsize=2, color=color, label=label)
        n_seen = sum(1 for o in objectives if not unseen[o])
        if 0 < n_seen < len(objectives):
            ax.axvline(n_seen - 0.5, color="black", linestyle="--", linewidth=0.8)
            ax.text(n_seen - 0.45, 10.2, "unseen (zero-shot) →", fontsize=8, va="bottom")
        ax.set_xticks(range(len(objectives)))
        ax.set_xticklabels([names[o] for o in objectives], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 11)
        ax.set_ylabel("judge rating (0-10)")
        ax.set_title(policy, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    plt.close(fig)
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getvalue())
    return path


def _n_objectives(bars: list[RatingBar]) -> int:
    return len({b.objective for b in bars})


def figure3_markdown(bars: list[RatingBar]) -> str:
    lines = ["| Policy | Objective | Unseen | Unaligned | Aligned | Δ |", "|---|---|---|---|---|---|"]
    index = {(b.policy, b.objective, b.target): b for b in bars}
    ordered = sorted(bars, key=lambda b: (b.policy, b.unseen, objective_rank(b.dataset, b.objective)))
    for policy, objective in dict.fromkeys((b.policy, b.objective) for b in ordered):
        o, a = index.get((policy, objective, ORIGIN)), index.get((policy, objective, ALIGNED))
        ref = o or a
        fmt = (lambda b: DASH if b is None or b.mean is None else f"{b.mean:.2f} [{b.low:.2f}, {b.high:.2f}]")
        delta = DASH if not (o and a and o.mean is not None and a.mean is not None) else f"{a.mean - o.mean:+.2f}"
        lines.append(f"| {policy} | {ref.objective_name} | {'yes' if ref.unseen else 'no'} | {fmt(o)} | {fmt(a)} | {delta} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- all at once

def _write_text(path: Path, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def write_reports(output_dir: str | Path, table2_inputs: list[str] | None = None,
                  table3_inputs: list[str] | None = None, rating_inputs: list[str] | None = None,
                  metric: str = "win_half_tie", n_boot: int = 1000, seed: int = 0,
                  training_logs: dict[str, str] | None = None, methods: list[str] | None = None) -> dict[str, Any]:
    """Write every report whose inputs are given, into a temporary folder swapped in for
    ``output_dir`` at the end (whole or absent); returns the paths written and the cells."""
    from metaaligner.io import atomic_folder

    final = Path(output_dir)
    with atomic_folder(final) as tmp:
        written = _write_reports(tmp, table2_inputs, table3_inputs, rating_inputs, metric, n_boot, seed,
                                 training_logs, methods)
    written["files"] = [final / Path(p).relative_to(tmp) for p in written["files"]]
    return written


def _write_reports(output_dir: Path, table2_inputs: list[str] | None, table3_inputs: list[str] | None,
                   rating_inputs: list[str] | None, metric: str, n_boot: int, seed: int,
                   training_logs: dict[str, str] | None, methods: list[str] | None) -> dict[str, Any]:
    written: dict[str, Any] = {"files": []}
    if table2_inputs:
        cells = table2(load_verdicts(table2_inputs, "pairwise"), metric, n_boot, seed)
        if not cells:
            raise MetaAlignerError("Table 2 needs pairwise verdicts for both aligned_responses and origin_responses "
                                   f"under {table2_inputs}")
        _write_text(output_dir / "table2.md", table2_markdown(cells))
        _write_text(output_dir / "table2.tex", table2_latex(cells))
        write_csv(output_dir / "table2.csv", [asdict(c) for c in cells], list(GainCell.__dataclass_fields__))
        written["table2"] = cells
        written["files"] += [output_dir / f"table2.{ext}" for ext in ("md", "tex", "csv")]
    if table3_inputs:
        cells3 = table3(load_verdicts(table3_inputs, "pairwise"), metric, ALIGNED, n_boot, seed)
        if not cells3:
            raise MetaAlignerError(f"Table 3 found no pairwise aligned_responses verdicts under {table3_inputs}")
        hours = device_hours(training_logs or {})
        order = methods or list(TABLE3_ORDER)
        _write_text(output_dir / "table3.md", table3_markdown(cells3, hours, order))
        _write_text(output_dir / "table3.tex", table3_latex(cells3, hours, order))
        rows = [{**asdict(c), "gpu_hours": hours.get(c.method)} for c in cells3]
        write_csv(output_dir / "table3.csv", rows, list(RateCell.__dataclass_fields__) + ["gpu_hours"])
        written["table3"] = cells3
        written["gpu_hours"] = hours
        written["files"] += [output_dir / f"table3.{ext}" for ext in ("md", "tex", "csv")]
    if rating_inputs:
        bars = figure3_data(load_verdicts(rating_inputs, "rating"), n_boot, seed)
        plot_figure3(bars, output_dir / "figure3.png")
        _write_text(output_dir / "figure3.md", figure3_markdown(bars))
        write_csv(output_dir / "figure3.csv", [asdict(b) for b in bars], list(RatingBar.__dataclass_fields__))
        written["figure3"] = bars
        written["files"] += [output_dir / f"figure3.{ext}" for ext in ("png", "md", "csv")]
    if not written["files"]:
        raise MetaAlignerError("nothing to report: give --inputs (Table 2), --table3_inputs and/or --ratings")
    return written
