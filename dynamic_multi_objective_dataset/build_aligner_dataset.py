r"""Stage 2: turn a scored preference CSV into the MetaAligner training sets (Algorithm 1).

    python dynamic_multi_objective_dataset/build_aligner_dataset.py \
        --input runs/hh/rewards.csv --dataset hh-rlhf --output_dir runs/hh/aligner_data --seed 0 --val_size 0.1

Input columns: ``prompt, chosen_response, rejected_response, chosen_score{i}, rejected_score{i}``
(i = 1..n, in the dataset config's objective order; what ``reward_labelling.py`` writes). Output, in
FastChat conversation JSON: ``no_equal/{train,val}.json`` (contrastive items), ``all_equal/train.json``
(equal items), ``warmup/train.json`` (copy items) and ``stats.json``.

The warm-up copy set is this project's reading of the paper's "warming up" step (the release ships
only ``no_equal/`` and ``all_equal/``); ``--warmup none`` writes the release's data. ``--test_input``
(a stage-1 CSV of a held-out split, e.g. the HH-RLHF test split labelled like ``--input``) adds
``no_equal/test.json``, its contrastive items, as released:

    python dynamic_multi_objective_dataset/build_aligner_dataset.py --input runs/hh/rewards.csv \
        --test_input runs/hh/test_rewards.csv --dataset hh-rlhf --output_dir runs/hh/aligner_data --warmup none

``--algorithm1 released`` writes what the released scripts wrote, bugs included, item for item (to
compare with the released ``HH-RLHF-MetaAligner-Data``): ``HH_RLHF_make_aligner_data.py`` from a
stage-1 pairs CSV, ``UltraFeedback_make_aligner_data.py`` from ``prepare_ultrafeedback.py``'s
``completions.csv``; ``no_equal/{train,val}.json`` (the first ``--val_items`` shuffled items are val)
and ``all_equal/train.json``, no warm-up folder; with ``--test_input`` (HH-RLHF) also the release's
test run, ``no_equal/test.json`` and ``all_equal/val.json``. ``--seed S`` gives the files the released
script writes after ``random.seed(S)``:

    python dynamic_multi_objective_dataset/build_aligner_dataset.py --input runs/hh/rewards.csv \
        --dataset hh-rlhf --output_dir runs/hh/aligner_data_released --algorithm1 released
    python dynamic_multi_objective_dataset/build_aligner_dataset.py --input data/ultrafeedback/completions.csv \
        --dataset ultrafeedback --output_dir runs/uf/aligner_data_released --algorithm1 released
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from metaaligner.cli import check, deprecated_aliases

log = logging.getLogger("build_aligner_dataset")
WARMUP_NOTES = {
    "copy": "this project's reading of the paper's warm-up step (copy task: answer y1 -> target y1, all "
            "objectives); the release ships only no_equal/ and all_equal/",
    "unbeaten": "copy items only for answers that no pair of their question shows worse on some objective "
                "(for data with several pairs per question, such as damaged copies of one answer)",
    "none": "no warm-up set, as released (only no_equal/ and all_equal/)",
}
ALGORITHM1 = {
    "ours": "Algorithm 1 with the release's bugs fixed (metaaligner/dataset/reformulation.py)",
    "released": "the released scripts' Algorithm 1, item for item (HH_RLHF_make_aligner_data.py for a pairs CSV, "
                "UltraFeedback_make_aligner_data.py for completions.csv), their shuffles drawn from "
                "random.Random(seed)",
}


@dataclass
class BuildConfig:
    input: str = field(metadata={"help": "stage-1 CSV/JSONL: prompt, chosen_response, rejected_response, "
                                         "chosen_score{i}, rejected_score{i}"})
    output_dir: str = field(metadata={"help": "folder for no_equal/, all_equal/, warmup/ and stats.json"})
    dataset: str = field(default="hh-rlhf", metadata={
        "help": "dataset config: hh-rlhf, ultrafeedback, imhi, or a YAML path (template + objectives in score order)",
        **deprecated_aliases("--config", "--dataset_config")})
    seed: int = field(default=0, metadata={"help": "seeds the aspect shuffles, the split and the item order"})
    val_size: float = field(default=0.1, metadata={**check(ge=0.0),
        "help": "validation prompts: a fraction (< 1) or a number (>= 1) of distinct prompts"})
    template: str | None = field(default=None, metadata={
        "help": "override the config's template (hh-rlhf, ultrafeedback, imhi, paper, or a YAML file)"})
    objectives: str | None = field(default=None, metadata={
        "help": "comma-separated objective keys in score-column order (default: the config's)"})
    objectives_file: str | None = field(default=None,
                                        metadata={"help": "YAML/JSON of extra objectives key -> description"})
    add_objective: list[str] = field(default_factory=list, metadata={
        "help": "extra objective 'key=description' (repeatable)"})
    tie_tolerance: float = field(default=0.0, metadata={**check(ge=0.0),
                                                        "help": "|chosen - rejected| <= this counts as equal"})
    keep_identical_pairs: bool = field(default=False, metadata={
        "help": "keep pairs whose chosen and rejected texts are identical but scored differently (the released "
                "scripts did; their items' target equals the input); default: drop and count them"})
    limit: int | None = field(default=None, metadata={**check(ge=1), "help": "use only the first N input rows"})
    warmup: str = field(default="copy", metadata={
        "help": "copy: warmup/train.json of copy items (this project's reading of the paper's warm-up step); "
                "unbeaten: copy items only for answers no pair of their question shows worse on some objective; "
                "none: no warm-up set (the release's data: only no_equal/ and all_equal/)"})
    test_input: str | None = field(default=None, metadata={
        "help": "stage-1 CSV of a held-out split (e.g. HH-RLHF test) -> no_equal/test.json, its contrastive items"})
    algorithm1: str = field(default="ours", metadata={
        "help": "ours: the release's bugs fixed (seeded, grouped split; warm-up set); released: the released "
                "scripts item for item, bugs included (HH_RLHF_make_aligner_data.py from a pairs CSV, "
                "UltraFeedback_make_aligner_data.py from prepare_ultrafeedback.py's completions.csv): no_equal/ and "
                "all_equal/ only, --val_size, --warmup, --tie_tolerance, --keep_identical_pairs unused"})
    val_items: int = field(default=15000, metadata={
        "help": "--algorithm1 released: the first N shuffled contrastive items are no_equal/val.json (the "
                "release's 15000; fewer items: all are val, as the release's slicing gives)"})


def main(cfg: BuildConfig) -> dict:
    from metaaligner.cli import split_csv
    from metaaligner.dataset.reformulation import build_dataset, pairs_from_rows
    from metaaligner.errors import MetaAlignerError
    from metaaligner.io import atomic_folder, read_records
    from metaaligner.registry.datasets import load_dataset_config
    from metaaligner.registry.objectives import build_registry
    from metaaligner.registry.templates import get_template

    start = time.perf_counter()
    if cfg.warmup not in WARMUP_NOTES:
        raise MetaAlignerError(f"--warmup must be one of {', '.join(WARMUP_NOTES)}, got {cfg.warmup!r}")
    if cfg.algorithm1 not in ALGORITHM1:
        raise MetaAlignerError(f"--algorithm1 must be one of {', '.join(ALGORITHM1)}, got {cfg.algorithm1!r}")
    if cfg.val_items < 0:
        raise MetaAlignerError(f"--val_items must be >= 0, got {cfg.val_items}")
    dataset = load_dataset_config(cfg.dataset)
    registry = build_registry(cfg.objectives_file, cfg.add_objective)
    keys = split_csv(cfg.objectives) or list(dataset.objectives)
    objectives = registry.resolve(keys, dataset.objective_group)
    template = get_template(cfg.template or dataset.template)
    if cfg.algorithm1 == "released":
        return main_released(cfg, dataset.name, objectives, template, start)
    rows = read_records(cfg.input)
    rows_in = len(rows)
    if cfg.limit is not None:
        rows = rows[:cfg.limit]
    pairs, dropped = pairs_from_rows(rows, len(objectives), path=cfg.input, keep_identical=cfg.keep_identical_pairs)
    result = build_dataset(pairs, [o.key for o in objectives], [o.description for o in objectives], template,
                           seed=cfg.seed, val_size=cfg.val_size, tolerance=cfg.tie_tolerance,
                           dropped=dropped, rows_in=len(rows), warmup=cfg.warmup != "none",
                           warmup_unbeaten=cfg.warmup == "unbeaten")
    test, test_stats = _heldout(cfg, objectives, template) if cfg.test_input else ([], None)
    out = Path(cfg.output_dir)
    files = {"no_equal/train.json": result.no_equal_train, "no_equal/val.json": result.no_equal_val,
             "all_equal/train.json": result.all_equal}
    if cfg.warmup != "none":
        files["warmup/train.json"] = result.warmup
    if cfg.test_input:
        files["no_equal/test.json"] = test
    stats = dict(result.stats, input=str(cfg.input), config=dataset.name, rows_in_file=rows_in,
                 warmup={"mode": cfg.warmup, "note": WARMUP_NOTES[cfg.warmup]})
    if test_stats:
        stats["items"]["no_equal/test"] = len(test)
        stats["test"] = test_stats
    # whole or absent: a failure mid-write leaves the old folder as it was
    with atomic_folder(out, drop=("warmup",)) as tmp:
        write_outputs(tmp, files, stats)
    seconds = time.perf_counter() - start
    items = stats["items"]
    print(f"build_aligner_dataset: {len(rows)} rows in, {len(pairs)} pairs used, dropped "
          f"{sum(dropped.values())} ({', '.join(f'{k}={v}' for k, v in sorted(dropped.items())) or 'none'}); "
          f"no_equal train/val {items['no_equal/train']}/{items['no_equal/val']}, "
          f"all_equal {items['all_equal/train']}, warmup {items['warmup/train'] if cfg.warmup != 'none' else 'none'}"
          f"{'' if not test_stats else ', test ' + str(len(test))}; "
          f"{seconds:.1f}s ({len(rows) / max(seconds, 1e-9):.0f} rows/s) -> {out}")
    return stats


def main_released(cfg: BuildConfig, dataset: str, objectives, template, start: float) -> dict:
    """``--algorithm1 released``: the released script's files (see the module docstring)."""
    import random

    from metaaligner.dataset import reformulation as r1
    from metaaligner.errors import MetaAlignerError
    from metaaligner.io import atomic_folder, read_records

    if cfg.tie_tolerance:
        raise MetaAlignerError("--tie_tolerance: the released scripts compare scores with ==; drop it with "
                               "--algorithm1 released")
    keys, descriptions = [o.key for o in objectives], [o.description for o in objectives]

    def items_of(path: str, limit: int | None) -> tuple[str, list, list, dict]:
        rows = read_records(path)
        rows_in = len(rows)
        rows = rows[:limit] if limit is not None else rows
        rng = random.Random(cfg.seed)   # the release's global generator, one stream per script run
        if rows and "response" in rows[0] and "chosen_response" not in rows[0]:
            records = r1.completions_from_rows(rows, len(keys), path=path)
            items, equal = r1.released_ultrafeedback_items(records, keys, descriptions, template, rng)
            counts = {"script": "UltraFeedback_make_aligner_data.py", "rows_in": len(rows), "records": len(records),
                      "records_with_pairs": sum(len(rec) > 1 for rec in records)}
        else:
            pairs, dropped = r1.released_pairs_from_rows(rows, len(keys), path=path)
            items, equal = r1.released_hh_items(pairs, keys, descriptions, template, rng)
            counts = {"script": "HH_RLHF_make_aligner_data.py", "rows_in": len(rows), "pairs": len(pairs),
                      "dropped_rows": dict(sorted(dropped.items()))}
        counts["rows_in_file"] = rows_in
        return rng, items, equal, counts

    rng, items, equal, counts = items_of(cfg.input, cfg.limit)
    result = r1.build_released_dataset(items, equal, seed=cfg.seed, val_items=cfg.val_items, rng=rng)
    files = {"no_equal/train.json": result.no_equal_train, "no_equal/val.json": result.no_equal_val,
             "all_equal/train.json": result.all_equal}
    stats = dict(counts, **result.stats, input=str(cfg.input), config=dataset, template=template.name,
                 objectives=keys, algorithm1={"mode": "released", "note": ALGORITHM1["released"]},
                 warmup={"mode": "none", "note": WARMUP_NOTES["none"]})
    if cfg.test_input:   # the release's second run (--split test): every item shuffled, equal items as val
        test_rng, test_items, test_equal, test_counts = items_of(cfg.test_input, None)
        if test_counts["script"] != "HH_RLHF_make_aligner_data.py":
            raise MetaAlignerError("--test_input: the released UltraFeedback script writes no test items (its test "
                                   "queries are prepare_ultrafeedback.py's test.csv); give a stage-1 pairs CSV")
        test_rng.shuffle(test_items)
        files["no_equal/test.json"], files["all_equal/val.json"] = test_items, test_equal
        stats["test"] = dict(test_counts, input=str(cfg.test_input),
                             **r1.released_stats({"no_equal/test": test_items, "all_equal/val": test_equal}))
    out = Path(cfg.output_dir)
    with atomic_folder(out, drop=("warmup",)) as tmp:
        write_outputs(tmp, files, stats)
    seconds = time.perf_counter() - start
    made = ", ".join(f"{name.removesuffix('.json')} {len(items)}" for name, items in files.items())
    empty = sum(stats["items_without_aspects"].values())
    nested = sum(stats["items_with_nested_prompt"].values())
    print(f"build_aligner_dataset (--algorithm1 released, as {counts['script']}): {counts['rows_in']} rows in; "
          f"{made}; {empty} items without aspects, {nested} with another item's prompt as context; "
          f"{seconds:.1f}s -> {out}")
    return stats


def _heldout(cfg: BuildConfig, objectives, template) -> tuple[list, dict]:
    """``--test_input`` -> (its contrastive items, their counts for stats.json)."""
    from metaaligner.dataset.reformulation import heldout_items, pairs_from_rows
    from metaaligner.io import read_records

    rows = read_records(cfg.test_input)
    pairs, dropped = pairs_from_rows(rows, len(objectives), path=cfg.test_input)
    items = heldout_items(pairs, [o.key for o in objectives], [o.description for o in objectives], template,
                          seed=cfg.seed, tolerance=cfg.tie_tolerance)
    return items, {"input": str(cfg.test_input), "rows_in": len(rows), "pairs": len(pairs),
                   "dropped_rows": dict(sorted(dropped.items())), "items": len(items)}


def write_outputs(folder: Path, files: dict[str, list], stats: dict) -> None:
    """The FastChat files and stats.json (last) into ``folder``; files of an earlier run with other
    settings (``warmup/``, ``no_equal/test.json``) that this run does not write are removed."""
    from metaaligner.dataset.reformulation import to_fastchat
    from metaaligner.io import write_fastchat, write_json

    for stale in ("warmup/train.json", "no_equal/test.json", "all_equal/val.json"):
        if stale not in files and (folder / stale).exists():
            (folder / stale).unlink()
    for rel, items in files.items():
        write_fastchat(folder / rel, to_fastchat(items))
    write_json(folder / "stats.json", stats)


def make_parser():
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(BuildConfig, description=__doc__)


if __name__ == "__main__":
    from metaaligner.cli import parse, run_main
    sys.exit(run_main(main, *parse(make_parser())))
