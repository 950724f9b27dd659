"""Table 3: methods (MetaAligner, MORLHF, MODPO, SFT, then any other) x objectives: metric of each
method's ``aligned_responses`` vs the golden answer, plus training GPU hours read from each method's
training log (``read_device_hours``) when given."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from metaaligner.judge.metrics import (
    bootstrap_ci,
    rate,
    verdict_scores,
)
from metaaligner.reports.common import (
    ALIGNED,
    DASH,
    TABLE3_ORDER,
    _caption_metrics,
    _check_metric,
    _ci,
    _columns,
    _group,
    _header,
    _metrics_of,
    _row_names,
    _tex,
    fmt_pct,
    parser_label,
    parser_of,
    resolution_note,
)


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
    parser: str = ""


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
        cells.append(RateCell(dataset, method, objective, name, len(group), rate(scores), low, high, metric,
                              parser_of(group)))
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
    metrics = _metrics_of(cells)
    index = {(c.method, c.dataset, c.objective, c.metric): c for c in cells}
    header = ["Method"] + _header(columns, metrics) + ["GPU hours"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in _row_names(cells, "method", order):
        out = [method]
        for dataset, objective, _ in columns:
            for metric in metrics:
                cell = index.get((method, dataset, objective, metric))
                out.append(DASH if cell is None else f"{fmt_pct(cell.rate, False)} {_ci(cell.low, cell.high, False)}")
        h = hours.get(method)
        out.append(DASH if h is None else f"{h:.2f}")
        lines.append("| " + " | ".join(out) + " |")
    lines.append("")
    lines.append(f"Win rate against the golden answer, {_caption_metrics(metrics)}; "
                 f"{parser_label(c.parser for c in cells)} [95% bootstrap interval]; "
                 "GPU hours = training device hours from the training logs (– = no log given). "
                 + resolution_note(cells, 0.5, "50% (as good as the golden answer)"))
    return "\n".join(lines) + "\n"


def table3_latex(cells: list[RateCell], hours: dict[str, float | None] | None = None,
                 order: Iterable[str] = TABLE3_ORDER) -> str:
    hours = hours or {}
    metric = _metrics_of(cells)[0]
    cells = [c for c in cells if c.metric == metric]
    columns = _columns(cells)
    index = {(c.method, c.dataset, c.objective): c for c in cells}
    lines = [f"% {_caption_metrics([metric])}; {parser_label(c.parser for c in cells)}",
             r"\begin{tabular}{l" + "c" * len(columns) + "r}", r"\toprule",
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
