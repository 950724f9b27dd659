"""The paper's Table 2, Table 3, Figure 3 and the rating study from the judge's per-row verdict files.

One module per artefact: ``table2``, ``table3``, ``figure3``, ``ratings``; ``common`` (loading the
verdicts, metric captions, columns and formatting), ``controls`` (the control rows under every table)
and ``write`` (``write_reports``: everything at once, swapped in whole) are shared. This package
re-exports their public names, so ``from metaaligner.reports import table2`` is the function; reach a
module's names with ``from metaaligner.reports.table2 import ...``.

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

from metaaligner.reports.common import (
    ALIGNED,
    CONTROL_PREFIX,
    DASH,
    ORIGIN,
    ROW_KEYS,
    TABLE3_ORDER,
    find_row_files,
    fmt_pct,
    load_verdicts,
    objective_rank,
    parse_metrics,
    parser_label,
    parser_of,
    resolution_note,
)
from metaaligner.reports.controls import (
    controls_caption,
    controls_for,
    controls_markdown,
    excluded_counts,
    latex_with_controls,
    load_controls,
    with_controls,
)
from metaaligner.reports.figure3 import (
    BEFORE,
    PAPER_STEPS,
    Figure3Point,
    figure3_markdown,
    figure3_points,
    labelled_inputs,
    plot_figure3,
)
from metaaligner.reports.ratings import (
    UNALIGNED,
    RatingCell,
    plot_ratings,
    ratings_data,
    ratings_markdown,
)
from metaaligner.reports.table2 import (
    GainCell,
    dataset_tasks,
    policy_task,
    table2,
    table2_latex,
    table2_markdown,
    task_rows_markdown,
)
from metaaligner.reports.table3 import (
    RateCell,
    device_hours,
    resolve_log,
    table3,
    table3_latex,
    table3_markdown,
)
from metaaligner.reports.write import (
    write_reports,
)

__all__ = [
    "ROW_KEYS",
    "CONTROL_PREFIX",
    "ALIGNED",
    "ORIGIN",
    "TABLE3_ORDER",
    "DASH",
    "find_row_files",
    "load_verdicts",
    "parse_metrics",
    "parser_of",
    "parser_label",
    "objective_rank",
    "fmt_pct",
    "resolution_note",
    "load_controls",
    "controls_for",
    "excluded_counts",
    "controls_caption",
    "controls_markdown",
    "with_controls",
    "latex_with_controls",
    "GainCell",
    "dataset_tasks",
    "policy_task",
    "table2",
    "task_rows_markdown",
    "table2_markdown",
    "table2_latex",
    "RateCell",
    "table3",
    "resolve_log",
    "device_hours",
    "table3_markdown",
    "table3_latex",
    "PAPER_STEPS",
    "BEFORE",
    "Figure3Point",
    "labelled_inputs",
    "figure3_points",
    "plot_figure3",
    "figure3_markdown",
    "UNALIGNED",
    "RatingCell",
    "ratings_data",
    "plot_ratings",
    "ratings_markdown",
    "write_reports",
]
