"""Table 2: rows = policy models, columns = objectives grouped by dataset; a cell is
metric(aligned) - metric(original) over the same rows (same judge, same candidate positions), with a
paired bootstrap 95% interval (rows resampled together). Markdown, CSV and LaTeX. A dataset whose
config names ``tasks`` (IMHI: verdicts of ``<policy>/<task>``) gets one row per policy, its tasks'
rows pooled, as the paper reports it; the rows per task are listed under the table and the per-task
table is the supplement ``table2_tasks.{md,csv}``."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from metaaligner.errors import MetaAlignerError
from metaaligner.judge.metrics import (
    paired_bootstrap_diff,
    rate,
    verdict_scores,
)
from metaaligner.reports.common import (
    ALIGNED,
    DASH,
    ORIGIN,
    _caption_metrics,
    _check_metric,
    _ci,
    _columns,
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
    parser: str = ""
    task_rows: str = ""   # a pooled row (IMHI): its rows per task, "CAMS=625,DR=405,..." in the config's task order


@lru_cache(maxsize=None)
def dataset_tasks(dataset: str) -> tuple[str, ...]:
    """The ``tasks`` of a shipped dataset config (IMHI's 9), else ()."""
    from metaaligner.registry.datasets import available, load_dataset_config

    if dataset not in available():  # a name read from data names a shipped config, never a file
        return ()
    try:
        return tuple(load_dataset_config(dataset).tasks)
    except MetaAlignerError:
        return ()


def policy_task(dataset: str, policy: str) -> tuple[str, str]:
    """``("llama2-chat-7B", "CAMS")`` for the verdicts of ``llama2-chat-7B/CAMS`` of a dataset whose
    config names ``tasks`` (IMHI); ``(policy, "")`` otherwise."""
    if dataset_tasks(dataset) and "/" in policy:
        head, task = policy.rsplit("/", 1)
        return head, task
    return policy, ""


def _task_rank(dataset: str, task: str) -> tuple[int, str]:
    tasks = dataset_tasks(dataset)
    return (tasks.index(task), task) if task in tasks else (len(tasks), task)


def table2(rows: list[dict[str, Any]], metric: str = "win_half_tie", n_boot: int = 1000,
           seed: int = 0, pool_tasks: bool = True) -> list[GainCell]:
    """One cell per (dataset, policy, objective) that has both targets, over the rows both have.
    ``pool_tasks``: a dataset with ``tasks`` (IMHI) gets one cell per policy over all its tasks' rows
    (the paper's Table 2 row; ``task_rows`` counts them per task); False: one cell per policy/task."""
    _check_metric(metric)
    cells = []
    groups: dict[tuple, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for r in rows:
        if r.get("mode", "pairwise") == "pairwise":
            policy, task = policy_task(r.get("dataset", ""), r.get("policy", "")) if pool_tasks else (r["policy"], "")
            groups[(r.get("dataset", ""), policy, r.get("objective", ""))].append((task, r))
    for (dataset, policy, objective), group in groups.items():
        aligned = {(task, r["row"]): r for task, r in group if r["target"] == ALIGNED}
        origin = {(task, r["row"]): r for task, r in group if r["target"] == ORIGIN}
        common = sorted(set(aligned) & set(origin), key=lambda k: (_task_rank(dataset, k[0]), k[1]))
        if not common:
            continue
        for key in common:
            a, o = aligned[key], origin[key]
            where = f"{a['policy']}/{objective} row {key[1]}"
            if str(a.get("position", "")) != str(o.get("position", "")):
                raise MetaAlignerError(f"{where}: the aligned and original answers were judged "
                                       "with different candidate positions (different --seed?); "
                                       "Table 2 needs the same")
            for field_name in ("judge_model", "judge_prompt"):
                if a.get(field_name, "") != o.get(field_name, ""):
                    raise MetaAlignerError(f"{where}: aligned and original were judged by different {field_name} "
                                           f"({a.get(field_name)!r} vs {o.get(field_name)!r})")
        sa = verdict_scores([aligned[k]["verdict"] for k in common], metric)
        so = verdict_scores([origin[k]["verdict"] for k in common], metric)
        gain, low, high = paired_bootstrap_diff(sa, so, n_boot=n_boot, seed=seed)
        name = aligned[common[0]].get("objective_name") or objective
        per_task = dict.fromkeys(k[0] for k in common)
        task_rows = ",".join(f"{t}={sum(1 for k in common if k[0] == t)}" for t in per_task) if any(per_task) else ""
        cells.append(GainCell(dataset, policy, objective, name, len(common), rate(sa), rate(so),
                              gain, low, high, metric, parser_of([r for _, r in group]), task_rows))
    return cells


def task_rows_markdown(cells: list[GainCell]) -> str:
    """Under a table of pooled rows: each policy's rows per task (every task of the dataset config,
    '–' where it has no verdicts), from the cells of the headline metric; 'a-b' where its objectives
    were judged on different numbers of rows."""
    pooled = [c for c in cells if c.task_rows and c.metric == _metrics_of(cells)[0]]
    lines = []
    for dataset in dict.fromkeys(c.dataset for c in pooled):
        mine = [c for c in pooled if c.dataset == dataset]
        counts: dict[str, dict[str, set[int]]] = {}
        for c in mine:
            for part in c.task_rows.split(","):
                task, n = part.rsplit("=", 1)
                counts.setdefault(c.policy, {}).setdefault(task, set()).add(int(n))
        tasks = list(dataset_tasks(dataset)) + sorted({t for per in counts.values() for t in per}
                                                      - set(dataset_tasks(dataset)))
        lines += [f"Rows per task ({dataset}: each policy's row pools its tasks; {DASH} = no verdicts for the task):",
                  "", "| Policy | " + " | ".join(tasks) + " | all |", "|---|" + "---|" * (len(tasks) + 1)]
        for policy in _row_names(mine, "policy"):
            per = counts.get(policy, {})
            span = [_span(per[t]) if t in per else DASH for t in tasks]
            totals = {c.n for c in mine if c.policy == policy}
            lines.append(f"| {policy} | " + " | ".join(span) + f" | {_span(totals)} |")
        lines.append("")
    return "\n".join(lines)


def _span(values: set[int]) -> str:
    return str(min(values)) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def table2_markdown(cells: list[GainCell]) -> str:
    columns = _columns(cells)
    metrics = _metrics_of(cells)
    index = {(c.policy, c.dataset, c.objective, c.metric): c for c in cells}
    header = ["Policy"] + _header(columns, metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for policy in _row_names(cells, "policy"):
        out = [policy]
        for dataset, objective, _ in columns:
            for metric in metrics:
                cell = index.get((policy, dataset, objective, metric))
                out.append(DASH if cell is None else f"{fmt_pct(cell.gain)} {_ci(cell.low, cell.high)}")
        lines.append("| " + " | ".join(out) + " |")
    lines.append("")
    lines.append(f"Gain in win rate after alignment, {_caption_metrics(metrics)}; "
                 f"{parser_label(c.parser for c in cells)}: "
                 "aligned minus original answer, each judged against the golden answer with the same judge and "
                 "candidate positions; [95% paired bootstrap interval], percentage points. "
                 + resolution_note(cells, 0.0, "0 (no gain)"))
    return "\n".join(lines) + "\n"


def table2_latex(cells: list[GainCell]) -> str:
    """The headline (first) metric; its metric and parser as a LaTeX comment line (the caption)."""
    metric = _metrics_of(cells)[0]
    cells = [c for c in cells if c.metric == metric]
    columns = _columns(cells)
    index = {(c.policy, c.dataset, c.objective): c for c in cells}
    groups: dict[str, int] = {}
    for dataset, _, _ in columns:
        groups[dataset] = groups.get(dataset, 0) + 1
    lines = [f"% {_caption_metrics([metric])}; {parser_label(c.parser for c in cells)}",
             r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule"]
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
