"""Data for the shipped demo aligner (see scripts/train_demo_aligner.sh for the whole recipe).

    # 1. a short-sequence slice of the shipped HH-RLHF harmless-base pairs
    python training/demo_aligner_data.py --step slice --output runs/demo/slice.csv --n_pairs 300
    # 2. (reward_labelling.py scores helpfulness on runs/demo/slice.csv -> runs/demo/helpful.csv)
    # 3. put the human preference in front as the harmlessness score -> the stage-1 CSV of Algorithm 1
    python training/demo_aligner_data.py --step merge --input runs/demo/helpful.csv --output runs/demo/rewards.csv

    # the edit-bench demo aligner: damaged vs clean pairs of the train split (then --scorer rule)
    python training/demo_aligner_data.py --step edit_pairs --output runs/edit/pairs.csv
    # the ablation's data: the same items with the objective text withheld from every prompt
    python training/demo_aligner_data.py --step blind --input runs/edit/aligner_data --output runs/edit/blind_data

Harmlessness = the human preference of harmless-base (chosen 1, rejected 0), standing in for the
released harmlessness reward model (not available offline).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check


@dataclass
class DemoDataConfig:
    step: str = field(metadata={"help": "slice: pick short pairs; merge: add the human preference as score 1; "
                                        "edit_pairs: damaged vs clean pairs of the edit bench's train split; "
                                        "blind: copy an aligner data folder with the objective text withheld; "
                                        "concat: stage-1 CSVs with the same columns (comma-separated --input) "
                                        "into one"})
    output: str = field(metadata={"help": "output CSV"})
    input: str = field(default="samples/hh-rlhf-harmless-base/harmless-base-test.jsonl.gz", metadata={
        "help": "slice: HH-RLHF JSONL(.gz) transcripts; merge: the reward_labelling.py CSV"})
    n_pairs: int = field(default=300, metadata={**check(ge=1),
                                                "help": "slice: pairs to keep (seeded sample, input order kept)"})
    max_prompt_tokens: int = field(default=96,
                                   metadata={**check(ge=1),
                                             "help": "slice: longest prompt (transcript up to the last Assistant:)"})
    max_response_tokens: int = field(default=64, metadata={**check(ge=1),
                                                           "help": "slice: longest chosen/rejected response"})
    seed: int = field(default=0, metadata={"help": "slice: sampling seed"})
    model: str | None = field(default=None,
                              metadata={"help": "tokenizer for the token limits (default: embedded SmolLM2)"})
    draws: int = field(default=2, metadata={**check(ge=1), "help": "edit_pairs: pair kinds drawn per clean answer"})
    max_words: int = field(default=45, metadata={**check(ge=1),
                                                 "help": "edit_pairs: longest answer and query, in words"})
    exclude_edit_test: bool = field(default=False, metadata={
        "help": "slice: leave out prompts of the edit bench's test split (metaaligner.editbench.data.is_test_query)"})
    exclude_heldout: str | None = field(default=None, metadata={
        "help": "slice: probe.json of the offline judge; the prompts of its held-out rows are never used"})


def main(cfg: DemoDataConfig) -> None:
    import time

    from metaaligner.errors import MetaAlignerError
    from metaaligner.io import read_records, write_csv

    start = time.perf_counter()
    if cfg.step == "slice":
        from metaaligner.models import load_tokenizer, resolve_model_path
        from metaaligner.training.demo import heldout_prompts, select_short_pairs

        tok = load_tokenizer(resolve_model_path(cfg.model))
        exclude = heldout_prompts(cfg.exclude_heldout, cfg.input) if cfg.exclude_heldout else set()
        if cfg.exclude_edit_test:
            from metaaligner.dataset.rewards import load_preference_rows
            from metaaligner.editbench.data import is_test_query

            exclude |= {r.prompt for r in load_preference_rows(cfg.input) if is_test_query(r.prompt)}
        rows, skipped = select_short_pairs(cfg.input, tok, cfg.n_pairs, cfg.max_prompt_tokens,
                                           cfg.max_response_tokens, cfg.seed, exclude or None)
        write_csv(cfg.output, rows, ["source_row", "prompt", "chosen_response", "rejected_response"])
        print(f"demo slice: {len(rows)} pairs out ({', '.join(f'{k}={v}' for k, v in sorted(skipped.items()))}); "
              f"{time.perf_counter() - start:.1f}s -> {cfg.output}")
    elif cfg.step == "merge":
        from metaaligner.training.demo import add_human_preference

        rows = add_human_preference(read_records(cfg.input), position=1)
        columns = list(rows[0])
        write_csv(cfg.output, rows, columns)
        print(f"demo merge: {len(rows)} rows, harmlessness = human preference as score1 -> {cfg.output}")
    elif cfg.step == "edit_pairs":
        from metaaligner.editbench.data import harmless_base_pool, load_pool, training_pairs

        pool = load_pool(max_answer_words=cfg.max_words, max_query_words=cfg.max_words)
        pool += harmless_base_pool(cfg.input, cfg.max_words, cfg.max_words)
        rows = training_pairs(pool, cfg.seed, cfg.draws)
        write_csv(cfg.output, rows, ["source", "prompt", "chosen_response", "rejected_response"])
        answers = sum(r["split"] == "train" for r in pool)
        print(f"edit pairs: {len(rows)} pairs from {answers} train-split answers "
              f"({len(pool) - answers} test-split answers never used); "
              f"{time.perf_counter() - start:.1f}s -> {cfg.output}")
    elif cfg.step == "concat":
        from metaaligner.cli import split_csv

        tables = [(path, read_records(path)) for path in split_csv(cfg.input)]
        columns = [c for c in tables[0][1][0] if c != "source_row"] if tables[0][1] else []
        for path, rows in tables:
            if not rows or {c for c in rows[0] if c != "source_row"} != set(columns):
                raise MetaAlignerError(f"{path}: columns differ from {tables[0][0]} ({columns})")
        rows = [{c: r[c] for c in columns} for _, rows in tables for r in rows]
        write_csv(cfg.output, rows, columns)
        print(f"concat: {len(rows)} rows from {len(tables)} files -> {cfg.output}")
    elif cfg.step == "blind":
        from metaaligner.training.demo import blind_data_folder

        n = blind_data_folder(cfg.input, cfg.output)
        print(f"blind data: {n} items with the objective text withheld -> {cfg.output}")
    else:
        raise MetaAlignerError(f"--step must be slice, merge, edit_pairs, concat or blind, got {cfg.step!r}")


def make_parser():
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(DemoDataConfig, description=__doc__)


if __name__ == "__main__":
    from metaaligner.cli import parse, run_main
    sys.exit(run_main(main, *parse(make_parser())))
