r"""Stage 1 for UltraFeedback: its raw GPT-4 ratings -> the stage-1 CSV and the test queries (as released).

    # a local copy of openbmb/UltraFeedback (JSONL(.gz), parquet, a folder of them, or a save_to_disk folder)
    python dynamic_multi_objective_dataset/prepare_ultrafeedback.py \
        --input /data/ultrafeedback/train.parquet --output_dir data/ultrafeedback
    # straight from the hub (only where one is reachable)
    python dynamic_multi_objective_dataset/prepare_ultrafeedback.py --input openbmb/UltraFeedback \
        --output_dir data/ultrafeedback
    # then stage 2, and the test queries for policy generation
    python dynamic_multi_objective_dataset/build_aligner_dataset.py --input data/ultrafeedback/rewards.csv \
        --dataset ultrafeedback --output_dir runs/uf/aligner_data

Writes ``DIR/rewards.csv`` (one row per pair i < j of a training record's completions whose four
ratings are all digits: ``prompt, chosen_response, rejected_response, chosen_score1..4,
rejected_score1..4``, scores in the order instruction_following, honesty, truthfulness,
helpfulness), ``DIR/test.csv`` (``query, goldens`` for the last ``--test_size`` records; golden = the
completion with the highest rating sum) and ``DIR/stats.json`` (records, pairs, dropped completions
by reason). See docs/dataset.md.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check


@dataclass
class PrepareUltraFeedbackConfig:
    input: str = field(metadata={"help": "UltraFeedback records: a JSONL(.gz)/JSON/parquet file or folder of them, "
                                         "a datasets save_to_disk folder, or the hub name openbmb/UltraFeedback"})
    output_dir: str = field(metadata={"help": "folder for rewards.csv, test.csv and stats.json"})
    test_size: int = field(default=15000, metadata={**check(ge=0),
        "help": "the last N records form the test set (the release's train[-15000:]); 0: all records train"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar (--progress false to hide it)"})


def make_parser():
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(PrepareUltraFeedbackConfig, description=__doc__)


def main(cfg: PrepareUltraFeedbackConfig) -> dict:
    from metaaligner.dataset.ultrafeedback import prepare_ultrafeedback, write_prepared

    result = prepare_ultrafeedback(cfg.input, cfg.test_size, progress=cfg.progress)
    paths = write_prepared(result, cfg.output_dir)
    s = result.stats
    dropped = s["train"]["dropped_completions"]
    print(f"prepare_ultrafeedback: {s['records']['total']} records ({s['records']['train']} train, "
          f"{s['records']['test']} test); {s['train']['pairs']} pairs from {s['train']['completions_used']} of "
          f"{s['train']['completions']} completions (dropped: "
          f"{', '.join(f'{k}={v}' for k, v in dropped.items()) or 'none'}); {s['test']['rows']} test rows; "
          f"{s['seconds']:.1f}s -> {paths['rewards'].parent}")
    return s


if __name__ == "__main__":
    from metaaligner.cli import parse, run_main
    sys.exit(run_main(main, *parse(make_parser())))
