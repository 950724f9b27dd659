"""Figure 3 (the paper's protocol): win rate against the golden answer on all 10 UltraFeedback
objectives after each of the cumulative alignment steps ("Aligned Obj.", "+Specificity", ...,
"+Length"), one line per objective (o supervised, ^ unseen; solid = after alignment, dashed = the
unaligned answers); ``figure3.{png,md,csv}`` with every point and its bootstrap 95% interval."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from metaaligner.errors import MetaAlignerError
from metaaligner.judge.metrics import (
    METRIC_SHORT,
    bootstrap_ci,
    rate,
    verdict_scores,
)
from metaaligner.reports.common import (
    ALIGNED,
    DASH,
    ORIGIN,
    _caption_metrics,
    _check_metric,
    _group,
    _save_png,
    fmt_pct,
    objective_rank,
    parser_label,
    parser_of,
)

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
