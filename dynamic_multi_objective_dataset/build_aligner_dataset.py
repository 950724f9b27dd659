r"""Stage 2: turn a scored preference CSV into the MetaAligner training sets (Algorithm 1).

    python dynamic_multi_objective_dataset/build_aligner_dataset.py \
        --input runs/hh/rewards.csv --config hh-rlhf --output_dir runs/hh/aligner_data --seed 0 --val_size 0.1

Input columns: ``prompt, chosen_response, rejected_response, chosen_score{i}, rejected_score{i}``
(i = 1..n, in the dataset config's objective order; what ``reward_labelling.py`` writes). Output, in
FastChat conversation JSON: ``no_equal/{train,val}.json`` (contrastive items), ``all_equal/train.json``
(equal items), ``warmup/train.json`` (copy items) and ``stats.json``.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("build_aligner_dataset")


@dataclass
class BuildConfig:
    input: str = field(metadata={"help": "stage-1 CSV/JSONL: prompt, chosen_response, rejected_response, "
                                         "chosen_score{i}, rejected_score{i}"})
    output_dir: str = field(metadata={"help": "folder for no_equal/, all_equal/, warmup/ and stats.json"})
    config: str = field(default="hh-rlhf", metadata={
        "help": "dataset config: hh-rlhf, ultrafeedback, imhi, or a YAML path (template + objectives in score order)"})
    seed: int = field(default=0, metadata={"help": "seeds the aspect shuffles, the split and the item order"})
    val_size: float = field(default=0.1, metadata={
        "help": "validation prompts: a fraction (< 1) or a number (>= 1) of distinct prompts"})
    template: str | None = field(default=None, metadata={
        "help": "override the config's template (hh-rlhf, ultrafeedback, imhi, paper, or a YAML file)"})
    objectives: str | None = field(default=None, metadata={
        "help": "comma-separated objective keys in score-column order (default: the config's)"})
    objectives_file: str | None = field(default=None, metadata={"help": "YAML/JSON of extra objectives key -> description"})
    add_objective: list[str] = field(default_factory=list, metadata={
        "help": "extra objective 'key=description' (repeatable)"})
    tie_tolerance: float = field(default=0.0, metadata={"help": "|chosen - rejected| <= this counts as equal"})
    keep_identical_pairs: bool = field(default=False, metadata={
        "help": "keep pairs whose chosen and rejected texts are identical but scored differently (the released "
                "scripts did; their items' target equals the input); default: drop and count them"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N input rows"})


def main(cfg: BuildConfig) -> dict:
    from metaaligner.cli import split_csv
    from metaaligner.datasets import load_dataset_config
    from metaaligner.io import atomic_folder, read_records
    from metaaligner.objectives import build_registry
    from metaaligner.reformulation import build_dataset, pairs_from_rows, to_fastchat
    from metaaligner.templates import get_template

    start = time.perf_counter()
    dataset = load_dataset_config(cfg.config)
    registry = build_registry(cfg.objectives_file, cfg.add_objective)
    keys = split_csv(cfg.objectives) or list(dataset.objectives)
    objectives = registry.resolve(keys, dataset.objective_group)
    template = get_template(cfg.template or dataset.template)
    rows = read_records(cfg.input)
    rows_in = len(rows)
    if cfg.limit is not None:
        rows = rows[:cfg.limit]
    pairs, dropped = pairs_from_rows(rows, len(objectives), path=cfg.input, keep_identical=cfg.keep_identical_pairs)
    result = build_dataset(pairs, [o.key for o in objectives], [o.description for o in objectives], template,
                           seed=cfg.seed, val_size=cfg.val_size, tolerance=cfg.tie_tolerance,
                           dropped=dropped, rows_in=len(rows))
    out = Path(cfg.output_dir)
    stats = dict(result.stats, input=str(cfg.input), config=dataset.name, rows_in_file=rows_in)
    with atomic_folder(out) as tmp:  # whole or absent: a failure mid-write leaves the old folder as it was
        write_outputs(tmp, result, to_fastchat, stats)
    seconds = time.perf_counter() - start
    items = stats["items"]
    print(f"build_aligner_dataset: {len(rows)} rows in, {len(pairs)} pairs used, dropped "
          f"{sum(dropped.values())} ({', '.join(f'{k}={v}' for k, v in sorted(dropped.items())) or 'none'}); "
          f"no_equal train/val {items['no_equal/train']}/{items['no_equal/val']}, "
          f"all_equal {items['all_equal/train']}, warmup {items['warmup/train']}; "
          f"{seconds:.1f}s ({len(rows) / max(seconds, 1e-9):.0f} rows/s) -> {out}")
    return stats


def write_outputs(folder: Path, result, to_fastchat, stats: dict) -> None:
    """The four FastChat files and stats.json (stats last) into ``folder``."""
    from metaaligner.io import write_fastchat, write_json

    write_fastchat(folder / "no_equal" / "train.json", to_fastchat(result.no_equal_train))
    write_fastchat(folder / "no_equal" / "val.json", to_fastchat(result.no_equal_val))
    write_fastchat(folder / "all_equal" / "train.json", to_fastchat(result.all_equal))
    write_fastchat(folder / "warmup" / "train.json", to_fastchat(result.warmup))
    write_json(folder / "stats.json", stats)


def make_parser():
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(BuildConfig, description=__doc__)


if __name__ == "__main__":
    from metaaligner.cli import parse, run_main
    sys.exit(run_main(main, *parse(make_parser())))
