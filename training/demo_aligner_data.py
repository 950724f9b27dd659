"""Data for the shipped demo aligner (see scripts/train_demo_aligner.sh for the whole recipe).

    # 1. a short-sequence slice of the shipped HH-RLHF harmless-base pairs
    python training/demo_aligner_data.py --step slice --output runs/demo/slice.csv --n_pairs 300
    # 2. (reward_labelling.py scores helpfulness on runs/demo/slice.csv -> runs/demo/helpful.csv)
    # 3. put the human preference in front as the harmlessness score -> the stage-1 CSV of Algorithm 1
    python training/demo_aligner_data.py --step merge --input runs/demo/helpful.csv --output runs/demo/rewards.csv

Harmlessness = the human preference of harmless-base (chosen 1, rejected 0), standing in for the
released harmlessness reward model (not available offline).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class DemoDataConfig:
    step: str = field(metadata={"help": "slice: pick short pairs; merge: add the human preference as score 1"})
    output: str = field(metadata={"help": "output CSV"})
    input: str = field(default="samples/hh-rlhf-harmless-base/harmless-base-test.jsonl.gz", metadata={
        "help": "slice: HH-RLHF JSONL(.gz) transcripts; merge: the reward_labelling.py CSV"})
    n_pairs: int = field(default=300, metadata={"help": "slice: pairs to keep (seeded sample, input order kept)"})
    max_prompt_tokens: int = field(default=96,
                                   metadata={"help": "slice: longest prompt (transcript up to the last Assistant:)"})
    max_response_tokens: int = field(default=64, metadata={"help": "slice: longest chosen/rejected response"})
    seed: int = field(default=0, metadata={"help": "slice: sampling seed"})
    model: str | None = field(default=None,
                              metadata={"help": "tokenizer for the token limits (default: embedded SmolLM2)"})
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
        exclude = heldout_prompts(cfg.exclude_heldout, cfg.input) if cfg.exclude_heldout else None
        rows, skipped = select_short_pairs(cfg.input, tok, cfg.n_pairs, cfg.max_prompt_tokens,
                                           cfg.max_response_tokens, cfg.seed, exclude)
        write_csv(cfg.output, rows, ["source_row", "prompt", "chosen_response", "rejected_response"])
        print(f"demo slice: {len(rows)} pairs out ({', '.join(f'{k}={v}' for k, v in sorted(skipped.items()))}); "
              f"{time.perf_counter() - start:.1f}s -> {cfg.output}")
    elif cfg.step == "merge":
        from metaaligner.training.demo import add_human_preference

        rows = add_human_preference(read_records(cfg.input), position=1)
        columns = list(rows[0])
        write_csv(cfg.output, rows, columns)
        print(f"demo merge: {len(rows)} rows, harmlessness = human preference as score1 -> {cfg.output}")
    else:
        raise MetaAlignerError(f"--step must be slice or merge, got {cfg.step!r}")


def make_parser():
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(DemoDataConfig, description=__doc__)


if __name__ == "__main__":
    from metaaligner.cli import parse, run_main
    sys.exit(run_main(main, *parse(make_parser())))
