"""The rating study (released UltraFeedback_GPT4_rate.py): mean 0-10 ratings per alignment condition
(unaligned, aligned on all objectives, on each single one) and objective; ``ratings.{png,md,csv}``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaaligner.errors import MetaAlignerError
from metaaligner.judge.metrics import (
    bootstrap_ci,
)
from metaaligner.reports.common import (
    ALIGNED,
    DASH,
    ORIGIN,
    _group,
    _save_png,
    objective_rank,
)

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
