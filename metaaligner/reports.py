"""The paper's Table 2, Table 3, Figure 3 and the rating study from the judge's per-row verdict files.

- Table 2: rows = policy models, columns = objectives grouped by dataset; a cell is
  metric(aligned) - metric(original) over the same rows (same judge, same candidate positions), with a
  paired bootstrap 95% interval (rows resampled together). Markdown, CSV and LaTeX. A dataset whose
  config names ``tasks`` (IMHI: verdicts of ``<policy>/<task>``) gets one row per policy, its tasks'
  rows pooled, as the paper reports it; the rows per task are listed under the table and the per-task
  table is the supplement ``table2_tasks.{md,csv}``.
- Table 3: methods (MetaAligner, MORLHF, MODPO, SFT, then any other) x objectives: metric of each
  method's ``aligned_responses`` vs the golden answer, plus training GPU hours read from each method's
  training log (``read_device_hours``) when given.
- Figure 3 (the paper's protocol): win rate against the golden answer on all 10 UltraFeedback
  objectives after each of the cumulative alignment steps ("Aligned Obj.", "+Specificity", ...,
  "+Length"), one line per objective (o supervised, ^ unseen; solid = after alignment, dashed = the
  unaligned answers); ``figure3.{png,md,csv}`` with every point and its bootstrap 95% interval.
- The rating study (released UltraFeedback_GPT4_rate.py): mean 0-10 ratings per alignment condition
  (unaligned, aligned on all objectives, on each single one) and objective; ``ratings.{png,md,csv}``.

Metrics (see ``metaaligner.judge.metrics``): ``win_half_tie`` = (W + T/2)/N (default), ``win`` = W/N,
``win_plus_tie`` (alias ``paper``) = (W + T)/(W + T + L), what the released scripts printed. Every
caption names its metric(s) and the verdict parser recorded in the rows (``judge_parser``).

Controls (``metaaligner.judge.controls``): where the judge run wrote ``<policy>.controls.json`` beside
the verdicts, every table prints under it how often each control answer ('.', a refusal, the first
half, the answer twice) beat the original answer with the same judge on the same rows, and its
caption says "judge unusable for this table" when '.' won on more than half of them. Rows the judge
left out because it was trained on their query are counted in the caption.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.io import atomic_open, read_records, write_csv
from metaaligner.judge.controls import LABELS as CONTROL_LABELS, unusable_note
from metaaligner.judge.metrics import (
    METRIC_LABELS,
    METRIC_SHORT,
    METRICS,
    bootstrap_ci,
    paired_bootstrap_diff,
    rate,
    verdict_scores,
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


def _tex(text: str) -> str:
    return (str(text).replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%")
            .replace("_", r"\_").replace("#", r"\#").replace("$", r"\$"))


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


# ----------------------------------------------------------------------------- Figure 3 (paper protocol)

# The paper's Figure 3 x axis: the aligner gets the 4 supervised UltraFeedback objectives, then the
# unseen ones one by one (cumulatively) in the dataset config's unseen order.
PAPER_STEPS = ("Aligned Obj.", "+Specificity", "+Factuality", "+Readability", "+Fairness", "+Repetition", "+Length")
BEFORE = "before alignment"


@dataclass
class Figure3Point:
    dataset: str
    policy: str
    step_index: int        # 0 = the unaligned answers (dashed lines), 1.. = the cumulative alignment steps
    step: str
    objective: str
    objective_name: str
    unseen: bool
    aligned_on: bool       # the objective was among the aligner's objectives at this step
    target: str
    n: int
    rate: float
    low: float
    high: float
    metric: str
    parser: str = ""


def labelled_inputs(items: Iterable[str], default_labels: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``label=path`` or ``path`` entries -> (label, path); a bare path takes the next default label,
    else its folder name."""
    defaults = list(default_labels)
    items = list(items)
    out = []
    for i, item in enumerate(items):
        label, sep, path = item.partition("=")
        if not sep:
            path = item
            label = defaults[i] if len(items) <= len(defaults) else Path(item.rstrip("/")).name
        out.append((label.strip(), path.strip()))
    return out


def _aligned_on(dataset: str, objective: str, step: int) -> bool:
    """Step k aligns on the supervised objectives plus the first k-1 unseen ones."""
    from metaaligner.registry.datasets import load_dataset_config

    if step < 1:
        return False
    try:
        config = load_dataset_config(dataset)
    except MetaAlignerError:
        return False
    return objective in config.objectives or objective in list(config.unseen_objectives)[: step - 1]


def _point(group: list[dict[str, Any]], step_index: int, step: str, metric: str, n_boot: int,
           seed: int) -> Figure3Point:
    first = group[0]
    scores = verdict_scores([r["verdict"] for r in group], metric)
    low, high = bootstrap_ci(scores, n_boot=n_boot, seed=seed)
    unseen = str(first.get("unseen", "0")).lower() in ("1", "true")
    return Figure3Point(first["dataset"], first["policy"], step_index, step, first["objective"],
                        first.get("objective_name") or first["objective"], unseen,
                        _aligned_on(first["dataset"], first["objective"], step_index), first["target"], len(group),
                        rate(scores), low, high, metric, parser_of(group))


def figure3_points(steps: list[tuple[str, list[dict[str, Any]]]], metric: str = "win_half_tie", n_boot: int = 1000,
                   seed: int = 0) -> list[Figure3Point]:
    """Win rate vs the golden answer per (policy, objective) at every step (aligned answers), plus the
    unaligned answers (step 0, from the first step folder that judged them)."""
    _check_metric(metric)
    points: list[Figure3Point] = []
    unaligned_done = False
    for k, (label, rows) in enumerate(steps, start=1):
        pairwise = [r for r in rows if r.get("mode", "pairwise") == "pairwise"]
        if not unaligned_done and any(r["target"] == ORIGIN for r in pairwise):
            for group in _group([r for r in pairwise if r["target"] == ORIGIN], "dataset", "policy",
                                "objective").values():
                points.append(_point(group, 0, BEFORE, metric, n_boot, seed))
            unaligned_done = True
        for group in _group([r for r in pairwise if r["target"] == ALIGNED], "dataset", "policy",
                            "objective").values():
            points.append(_point(group, k, label, metric, n_boot, seed))
    return points


def _fig3_objectives(points: list[Figure3Point]) -> list[tuple[str, str, bool]]:
    """(key, name, unseen) in the dataset config's order: supervised first, then unseen."""
    seen: dict[str, tuple[str, str, bool]] = {}
    for p in sorted(points, key=lambda p: (p.unseen, objective_rank(p.dataset, p.objective))):
        seen.setdefault(p.objective, (p.objective, p.objective_name, p.unseen))
    return list(seen.values())


def _fig3_panel(ax, points: list[Figure3Point], steps: list[str], metric: str, title: str) -> None:
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10").colors
    xs = list(range(1, len(steps) + 1))
    for i, (key, name, unseen) in enumerate(_fig3_objectives(points)):
        color, marker = colors[i % len(colors)], ("^" if unseen else "o")
        after = sorted((p for p in points if p.objective == key and p.step_index > 0), key=lambda p: p.step_index)
        before = next((p for p in points if p.objective == key and p.step_index == 0), None)
        if after:
            ax.plot([p.step_index for p in after], [p.rate * 100 for p in after], linestyle="-", marker=marker,
                    color=color, markersize=5, linewidth=1.4, label=name)
        if before is not None:
            ax.plot([xs[0], xs[-1]], [before.rate * 100] * 2, linestyle="--", color=color, linewidth=1.0,
                    marker=marker, markersize=3, markevery=[0], label=None if after else name)
    ax.set_xticks(xs)
    ax.set_xticklabels(steps, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(0.7, len(steps) + 0.3)
    ax.set_ylabel(f"win rate vs golden, {METRIC_SHORT[metric]} (%)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def plot_figure3(points: list[Figure3Point], steps: list[str], path: str | Path) -> Path:
    """The paper's layout: x = the alignment steps, one line per objective (o supervised, ^ unseen),
    solid = after alignment, dashed = before (the unaligned answers); one panel per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    policies = list(dict.fromkeys(p.policy for p in points))
    if not policies:
        raise MetaAlignerError("no pairwise verdicts found for Figure 3 (judge each step folder with "
                               "evaluation/judge.py on all 10 objectives)")
    metric = points[0].metric
    fig, axes = plt.subplots(1, len(policies), figsize=(4.8 * len(policies) + 2.2, 4.2), squeeze=False)
    for ax, policy in zip(axes[0], policies):
        _fig3_panel(ax, [p for p in points if p.policy == policy], steps, metric, policy)
    handles = axes[0][0].get_legend_handles_labels()[0]
    handles += [Line2D([], [], color="black", linestyle="-", label="after alignment"),
                Line2D([], [], color="black", linestyle="--", label="before alignment"),
                Line2D([], [], color="black", marker="o", linestyle="", label="supervised objective"),
                Line2D([], [], color="black", marker="^", linestyle="", label="unseen objective")]
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    return _save_png(fig, path)


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


def figure3_markdown(points: list[Figure3Point], steps: list[str]) -> str:
    """One table per policy: objectives x (before alignment, step 1, ..., step K), win rate in %."""
    metric = points[0].metric if points else "win_half_tie"
    index = {(p.policy, p.objective, p.step_index): p for p in points}
    lines = []
    for policy in dict.fromkeys(p.policy for p in points):
        mine = [p for p in points if p.policy == policy]
        lines += [f"**{policy}**", "", "| Objective | Unseen | Before | " + " | ".join(steps) + " |",
                  "|---|---|---|" + "---|" * len(steps)]
        for key, name, unseen in _fig3_objectives(mine):
            cells = []
            for k in range(len(steps) + 1):
                p = index.get((policy, key, k))
                cells.append(DASH if p is None else fmt_pct(p.rate, False))
            lines.append(f"| {name} | {'yes' if unseen else 'no'} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"Figure 3: win rate against the golden answer, {_caption_metrics([metric])}; "
                 f"{parser_label(p.parser for p in points)}; Before = the unaligned answers (dashed lines), "
                 "steps = the aligner given the objectives named cumulatively (solid lines); 95% bootstrap "
                 "intervals in figure3.csv.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- controls under every table

def load_controls(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The ``<policy>.controls.json`` files the judge wrote under the folders in ``paths``."""
    import json

    found = []
    for path in paths:
        path = Path(path)
        for file in sorted(path.rglob("*.controls.json")) if path.is_dir() else []:
            try:
                info = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DataError(file, f"not a controls file ({exc})") from None
            found.append(info)
    return found


def controls_for(rows: list[dict[str, Any]], controls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The control entries of the table's rows: same dataset, policy, mode and judge configuration,
    objectives the table shows; one per (policy, objective, control) when several folders hold them."""
    shown = {(r.get("dataset"), r.get("policy"), r.get("mode", "pairwise"), str(r.get("judge_config") or ""),
              r.get("objective")) for r in rows}
    out: dict[tuple, dict[str, Any]] = {}
    for info in controls:
        for entry in info.get("controls", []):
            key = (info.get("dataset"), info.get("policy"), info.get("mode"), str(info.get("judge_config") or ""),
                   entry.get("objective"))
            if key in shown:
                out.setdefault(key + (entry.get("control"),), {**entry, "policy": info.get("policy")})
    return list(out.values())


def excluded_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Rows left out per policy because the judge was trained on their query, from the summary file
    beside each verdict file (``excluded_training_prompts``)."""
    import json

    out: dict[str, int] = {}
    for file in dict.fromkeys(r["_file"] for r in rows if r.get("_file")):
        summary = Path(file).with_name(Path(file).name[: -len(".csv")] + ".summary.json")
        try:
            info = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        count = int(info.get("excluded_training_prompts") or 0) if isinstance(info, dict) else 0
        policy = str(info.get("policy", ""))
        out[policy] = max(out.get(policy, 0), count)
    return {k: v for k, v in out.items() if v}


def controls_caption(entries: list[dict[str, Any]], excluded: dict[str, int]) -> str:
    """The caption's sentences on the judge: unusable ('.' preferred on most rows), rows left out."""
    parts = []
    dot = [e for e in entries if e["control"] == "dot"]
    note = unusable_note(sum(e["wins"] for e in dot), sum(e["n"] for e in dot))
    if note:
        objectives = len({(e["policy"], e["objective"]) for e in dot})
        over = f" (judged rows summed over {objectives} policy-objective cells)" if objectives > 1 else ""
        parts.append(note[0].upper() + note[1:] + over + ".")
    if excluded:
        each = ", ".join(f"{p} {n}" for p, n in excluded.items())
        parts.append(f"{sum(excluded.values())} row(s) left out because the judge was trained on their query "
                     f"({each}).")
    return " ".join(parts)


def controls_markdown(entries: list[dict[str, Any]]) -> str:
    """The control rows under a table: per policy and objective, how often each control answer beat
    the original answer (wins/rows)."""
    if not entries:
        return ""
    names = list(dict.fromkeys(e["control"] for e in entries))
    index = {(e["policy"], e["objective"], e["control"]): e for e in entries}
    lines = ["Controls: the same judge on the same rows, each control answer against the original answer "
             "(wins/rows; a judge that prefers '.' on more than half of the rows is unusable).", "",
             "| Policy | Objective | " + " | ".join(CONTROL_LABELS.get(n, n) for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for policy, objective, name in dict.fromkeys((e["policy"], e["objective"], e["objective_name"])
                                                 for e in entries):
        cells = [index.get((policy, objective, n)) for n in names]
        lines.append(f"| {policy} | {name} | " + " | ".join(
            DASH if c is None else f"{c['wins']}/{c['n']}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def with_controls(text: str, rows: list[dict[str, Any]], controls: list[dict[str, Any]]) -> str:
    """A report's Markdown with the judge's caption sentences appended to its caption (the last line)
    and the control rows under it."""
    entries = controls_for(rows, controls)
    extra = controls_caption(entries, excluded_counts(rows))
    if extra:
        text = text.rstrip("\n") + " " + extra + "\n"
    block = controls_markdown(entries)
    return text + ("\n" + block if block else "")


def latex_with_controls(text: str, rows: list[dict[str, Any]], controls: list[dict[str, Any]]) -> str:
    """The LaTeX table's caption comment (its first line) with the judge's caption sentences."""
    extra = controls_caption(controls_for(rows, controls), excluded_counts(rows))
    if not extra:
        return text
    first, _, rest = text.partition("\n")
    return f"{first}; {extra}\n{rest}"


# ----------------------------------------------------------------------------- the 0-10 rating study

UNALIGNED = "Unaligned"


@dataclass
class RatingCell:
    dataset: str
    policy: str
    condition: str         # "Unaligned" or the label of the alignment run
    objective: str
    objective_name: str
    unseen: bool
    n: int
    valid: int
    mean: float | None
    low: float | None
    high: float | None


def _rating_cell(group: list[dict[str, Any]], condition: str, n_boot: int, seed: int) -> RatingCell:
    first = group[0]
    scores = [float(r["score"]) for r in group if r.get("verdict") != "invalid" and str(r.get("score", "")) != ""]
    low, high = bootstrap_ci(scores, n_boot=n_boot, seed=seed) if scores else (None, None)
    return RatingCell(first["dataset"], first["policy"], condition, first["objective"],
                      first.get("objective_name") or first["objective"],
                      str(first.get("unseen", "0")).lower() in ("1", "true"), len(group), len(scores),
                      sum(scores) / len(scores) if scores else None, low, high)


def ratings_data(runs: list[tuple[str, list[dict[str, Any]]]], n_boot: int = 1000, seed: int = 0) -> list[RatingCell]:
    """Mean 0-10 rating per (policy, condition, objective): ``Unaligned`` from the first run that rated
    the original answers, then each run's aligned answers under its label."""
    cells: list[RatingCell] = []
    unaligned_done = False
    for label, rows in runs:
        rating = [r for r in rows if r.get("mode") == "rating"]
        if not unaligned_done and any(r["target"] == ORIGIN for r in rating):
            for group in _group([r for r in rating if r["target"] == ORIGIN],
                                "dataset", "policy", "objective").values():
                cells.append(_rating_cell(group, UNALIGNED, n_boot, seed))
            unaligned_done = True
        for group in _group([r for r in rating if r["target"] == ALIGNED], "dataset", "policy", "objective").values():
            cells.append(_rating_cell(group, label, n_boot, seed))
    return cells


def _rating_axes(cells: list[RatingCell]) -> tuple[list[str], list[tuple[str, str]]]:
    conditions = list(dict.fromkeys(c.condition for c in cells))
    ordered = sorted(cells, key=lambda c: (c.unseen, objective_rank(c.dataset, c.objective)))
    objectives = list(dict.fromkeys((c.objective, c.objective_name) for c in ordered))
    return conditions, objectives


def plot_ratings(cells: list[RatingCell], path: str | Path) -> Path:
    """A heat-map per policy: rows = conditions (unaligned, aligned on ...), columns = rated objectives."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(c.policy for c in cells))
    if not policies:
        raise MetaAlignerError("no rating rows found (run evaluation/judge.py --mode rating)")
    conditions, objectives = _rating_axes(cells)
    fig, axes = plt.subplots(1, len(policies), figsize=(1.3 * len(objectives) * len(policies) + 3,
                                                        0.5 * len(conditions) + 2), squeeze=False)
    index = {(c.policy, c.condition, c.objective): c for c in cells}
    for ax, policy in zip(axes[0], policies):
        grid = [[(index.get((policy, cond, key)) or RatingCell("", "", "", "", "", False, 0, 0, None, None, None)).mean
                 for key, _ in objectives] for cond in conditions]
        values = [[float("nan") if v is None else v for v in row] for row in grid]
        image = ax.imshow(values, vmin=0, vmax=10, cmap="viridis", aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, DASH if v is None else f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if v is not None and v < 6 else "black")
        ax.set_xticks(range(len(objectives)))
        ax.set_xticklabels([name for _, name in objectives], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(conditions)))
        ax.set_yticklabels(conditions, fontsize=8)
        ax.set_title(f"{policy}: mean judge rating (0-10)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return _save_png(fig, path)


def ratings_markdown(cells: list[RatingCell]) -> str:
    conditions, objectives = _rating_axes(cells)
    index = {(c.policy, c.condition, c.objective): c for c in cells}
    lines = ["| Policy | Condition | " + " | ".join(name for _, name in objectives) + " |",
             "|---|---|" + "---|" * len(objectives)]
    for policy in dict.fromkeys(c.policy for c in cells):
        for cond in conditions:
            out = []
            for key, _ in objectives:
                c = index.get((policy, cond, key))
                out.append(DASH if c is None or c.mean is None else f"{c.mean:.2f} [{c.low:.2f}, {c.high:.2f}]")
            lines.append(f"| {policy} | {cond} | " + " | ".join(out) + " |")
    lines.append("")
    lines.append("The rating study (released UltraFeedback_GPT4_rate.py): mean 0-10 judge rating of each answer "
                 "on each objective [95% bootstrap interval]; Unaligned = the policy's own answers, the other rows "
                 "= the answers aligned on the objectives named.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- all at once

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
