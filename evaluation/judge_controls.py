"""Print how often the offline probe judge prefers a control answer to the real one.

    python evaluation/judge_controls.py --n_rows 100 --seed 0

Rows: a seeded sample of the probe's held-out harmless-base pairs (``heldout_rows`` of its
probe.json: prompts it was never fitted on). Each control ('.', a canned refusal, the first half of
the answer by words, the answer twice) is compared with the human-chosen answer and with the
rejected one. With ``--input FILE.csv`` the rows are an aligner output file's instead
(``--answer_column``, ``origin_responses`` by default); rows whose query the probe was trained on
are left out and counted. The rule (``metaaligner.judge.controls``): a judge that prefers '.' to
the original answer on more than half of the rows is unusable for a table of those rows.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check


@dataclass
class ControlsConfig:
    judge_dir: str = field(default=None, metadata={"help": "probe folder (default: the shipped one, "
                                                           "metaaligner/data/offline_judge)"})
    input: str = field(default=None, metadata={"help": "aligner output CSV instead of the held-out pairs"})
    answer_column: str = field(default="origin_responses", metadata={"help": "--input's answer column"})
    query_column: str = field(default="query", metadata={"help": "--input's query column"})
    n_rows: int = field(default=100, metadata={**check(ge=0), "help": "rows sampled (seeded; 0 = all)"})
    seed: int = field(default=0, metadata={"help": "row sample seed"})
    torch_threads: int = field(default=1, metadata={**check(ge=1),
                                                    "help": "CPU threads (1 is fastest on a busy shared CPU)"})


def sample(items: list, n: int, seed: int) -> list:
    """``n`` items in their order, chosen by ``random.Random(f"controls|{seed}")`` (all when n is 0)."""
    import random

    if not n or n >= len(items):
        return list(items)
    return [items[i] for i in sorted(random.Random(f"controls|{seed}").sample(range(len(items)), n))]


def heldout_pairs(judge) -> list:
    """The probe's held-out pairs (usable ones: both answers present and different)."""
    from metaaligner.dataset.rewards import load_preference_rows
    from metaaligner.judge.probe import resolve_input

    ids = set(judge.info["heldout_rows"])
    return [r for r in load_preference_rows(resolve_input(judge.info["input"]))
            if r.row_id in ids and r.status in (None, "", "ok") and r.chosen_response != r.rejected_response]


def file_rows(cfg: ControlsConfig, judge) -> tuple[list[tuple[str, str]], int]:
    """(query, answer) rows of ``--input`` whose query the probe was not trained on, and how many were left out."""
    from metaaligner.io import read_table

    rows = read_table(cfg.input, required=[cfg.query_column, cfg.answer_column])
    kept = [(str(r[cfg.query_column]), str(r[cfg.answer_column] or "")) for r in rows]
    fresh = [(q, a) for q, a in kept if not judge.is_training_prompt(q)]
    return fresh, len(kept) - len(fresh)


def main(cfg: ControlsConfig) -> dict:
    import time

    import torch

    from metaaligner.judge.controls import control_table, format_table
    from metaaligner.judge.probe import ProbeJudge

    torch.set_num_threads(cfg.torch_threads)
    start = time.perf_counter()
    judge = ProbeJudge.load(cfg.judge_dir)
    if cfg.input:
        rows, left_out = file_rows(cfg, judge)
        rows = sample(rows, cfg.n_rows, cfg.seed)
        queries = [q for q, _ in rows]
        tables = {cfg.answer_column: control_table(judge.compare, queries, [a for _, a in rows])}
        where = f"{len(rows)} rows of {cfg.input} ({left_out} left out: the probe was trained on their query)"
    else:
        pairs = sample(heldout_pairs(judge), cfg.n_rows, cfg.seed)
        queries = [p.prompt for p in pairs]
        tables = {"human-chosen": control_table(judge.compare, queries, [p.chosen_response for p in pairs]),
                  "rejected": control_table(judge.compare, queries, [p.rejected_response for p in pairs])}
        where = f"{len(pairs)} held-out harmless-base pairs (seed {cfg.seed})"
    print(f"{judge.caption}\ncontrols on {where}; a control wins when the probe scores it above the answer "
          f"({time.perf_counter() - start:.0f}s)\n")
    print(format_table(tables))
    return tables


def make_parser():
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(ControlsConfig, description=__doc__)


if __name__ == "__main__":
    from metaaligner.cli import parse, run_main
    sys.exit(run_main(main, *parse(make_parser())))
