r"""SePO data helper: preference pairs ``{"prompt", "chosen", "rejected"}`` (TRL's format) from
HH-RLHF transcripts or a stage-1 rewards table. The CDPO data (``make_cdpo_data.py``) is already in
this format and needs no conversion.

    python baseline_models/sepo/make_pairs.py --input samples/hh-rlhf-harmless-base/harmless-base-test.jsonl.gz \
        --output runs/sepo/pairs.jsonl
    python baseline_models/sepo/make_pairs.py --input rewards.csv --output runs/sepo/pairs.jsonl --limit 1000

Transcripts are split at the last shared ``\n\nAssistant:``; pairs with identical responses are dropped
and counted.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check, make_parser as _make_parser, parse, run_main


@dataclass
class MakePairsConfig:
    input: str = field(metadata={"help": "HH-RLHF JSONL(.gz) of chosen/rejected transcripts, or a rewards CSV "
                                         "with prompt, chosen_response, rejected_response"})
    output: str = field(metadata={"help": "output JSONL of prompt, chosen, rejected"})
    limit: int | None = field(default=None, metadata={**check(ge=1), "help": "only the first N input rows"})


def make_parser():
    return _make_parser(MakePairsConfig, description=__doc__)


def main(config: MakePairsConfig) -> None:
    from metaaligner.io import read_records, write_jsonl
    from metaaligner.methods.sepo import pairs_from_records

    rows = read_records(config.input)
    rows = rows[:config.limit] if config.limit else rows
    pairs, dropped = pairs_from_records(rows)
    write_jsonl(config.output, pairs)
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())) or "none"
    print(f"make_pairs: {len(rows)} rows in, {len(pairs)} pairs out, dropped {sum(dropped.values())} ({reasons}) "
          f"-> {config.output}")


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
