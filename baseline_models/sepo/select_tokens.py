r"""SePO step 2: score every response token with the oracle and keep the key tokens.

r(y_t) = log pi_oracle(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t); in each chosen response the top
floor(k*N) tokens by reward are kept, in each rejected response the bottom floor(k*N). Batched,
length-sorted scoring; under ``torchrun``/``accelerate launch`` rows are sharded by process and the
merged output has every row once, in input order.

    python baseline_models/sepo/select_tokens.py --input pairs.jsonl --oracle runs/sepo/oracle \
        --reference runs/sft --ratio 0.3 --output runs/sepo/selected.jsonl
    torchrun --nproc_per_node 8 baseline_models/sepo/select_tokens.py --input pairs.jsonl \
        --oracle runs/sepo/oracle --reference runs/sft --output runs/sepo/selected.jsonl --batch_size 32
    # jobs started on their own (a Slurm array of 4): one shard each, then one merge
    python baseline_models/sepo/select_tokens.py --input pairs.jsonl --oracle runs/sepo/oracle \
        --reference runs/sft --output runs/sepo/selected.jsonl --shard $SLURM_ARRAY_TASK_ID/4
    python baseline_models/sepo/select_tokens.py --input pairs.jsonl --oracle runs/sepo/oracle \
        --reference runs/sft --output runs/sepo/selected.jsonl --merge

Each output line keeps ``prompt``, ``chosen``, ``rejected`` (and any other input field) and adds
``row_id``, ``chosen_token_rewards``, ``rejected_token_rewards`` (one float per response token, EOS
included, as TRL's DPO tokenises) and ``chosen_selected``, ``rejected_selected`` (0-based positions
within the response). Pairs that select zero tokens (or cannot be scored) go to
``<output stem>.skipped.jsonl`` with a ``skip_reason`` (rewards kept); counts go to ``<stem>.meta.json``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check, make_parser as _make_parser, parse, run_main
from metaaligner.sharding import MERGE_HELP, SHARD_HELP


@dataclass
class SelectTokensConfig:
    input: str = field(metadata={"help": "preference pairs (JSONL/CSV/JSON) with prompt, chosen, rejected"})
    oracle: str = field(metadata={"help": "DPO-trained oracle (model folder or LoRA adapter folder)"})
    reference: str = field(metadata={"help": "the oracle's reference: its SFT starting point ('embedded' allowed)"})
    output: str = field(metadata={"help": "output JSONL of pairs with token rewards and selected positions"})
    ratio: float = field(default=0.3, metadata={**check(gt=0.0, le=1.0),
                                                "help": "share k of tokens kept per response: floor(k * N)"})
    batch_size: int = field(default=16, metadata={**check(ge=1),
                                                  "help": "sequences per forward pass (length-sorted batches)"})
    max_length: int = field(default=1024, metadata={**check(ge=1),
                                                    "help": "max tokens of prompt + response; longer responses are "
                                                             "cut at the end (use the oracle's DPO max_length)"})
    add_eos: bool = field(default=True, metadata={"help": "append EOS to each response before scoring (as TRL's DPO)"})
    dtype: str = field(default="auto", metadata={"help": "auto (float32 on CPU, bf16 on GPU), float32, bfloat16, "
                                                         "float16"})
    limit: int | None = field(default=None, metadata={**check(ge=1), "help": "only the first N pairs"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted run from its shards (finished "
                                                          "rows of any process count are reused)"})
    shard: str | None = field(default=None, metadata={"help": SHARD_HELP})
    merge: bool = field(default=False, metadata={"help": MERGE_HELP})


def make_parser():
    return _make_parser(SelectTokensConfig, description=__doc__)


def main(config: SelectTokensConfig) -> None:
    from metaaligner.methods.sepo import run_selection
    from metaaligner.sharding import plan_shards

    run_selection(config.input, config.oracle, config.reference, config.output, ratio=config.ratio,
                  batch_size=config.batch_size, max_length=config.max_length, add_eos=config.add_eos,
                  resume=config.resume, limit=config.limit, dtype=config.dtype,
                  plan=plan_shards(config.shard, config.merge))


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
