r"""SePO step 1: DPO-train a small oracle on (part of) the preference data, with TRL's DPOTrainer.

The oracle's starting point (its SFT checkpoint) is also its DPO reference, and later the
``--reference`` of ``select_tokens.py``. Paper: TinyLlama-1.1B SFT, beta 0.1, a small share of the data.

    python baseline_models/sepo/train_oracle.py --input pairs.jsonl --model_name_or_path runs/sft \
        --output_dir runs/sepo/oracle --fraction 0.1 --seed 0
    python baseline_models/sepo/train_oracle.py --input pairs.jsonl --output_dir runs/sepo/oracle \
        --max_steps 20 --learning_rate 5e-6        # embedded SmolLM2, quick CPU demo
    accelerate launch --num_processes 8 baseline_models/sepo/train_oracle.py --input pairs.jsonl \
        --model_name_or_path runs/sft --output_dir runs/sepo/oracle --deepspeed configs/deepspeed/zero3.json

Writes the oracle to ``--output_dir`` (a LoRA adapter folder with ``--lora``) and the JSONL training
log (loss, rewards, tokens/s, device hours) to ``OUT/train_log.jsonl``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check, make_parser as _make_parser, parse, run_main
from metaaligner.training.common import overwrite_field, resume_field
from metaaligner.training.dpo import DPOTrainConfig


@dataclass
class TrainOracleConfig:
    input: str = field(metadata={"help": "preference pairs (JSONL/CSV/JSON) with prompt, chosen, rejected"})
    output_dir: str = field(metadata={"help": "folder of the trained oracle"})
    model_name_or_path: str = field(default="embedded", metadata={"help": "the oracle's SFT starting point (= its "
                                                                        "reference); default the embedded SmolLM2"})
    eval_input: str | None = field(default=None, metadata={"help": "held-out pairs for evaluation"})
    fraction: float = field(default=1.0, metadata={**check(gt=0.0, le=1.0),
                                                   "help": "share of the input pairs to train on (random, seeded)"})
    limit: int | None = field(default=None, metadata={**check(ge=1),
                                                      "help": "at most N training pairs (after --fraction)"})
    ref_model_path: str | None = field(default=None, metadata={"help": "a reference other than the starting model"})
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (reference = base, adapter off)"})
    resume: bool = resume_field()
    overwrite: bool = overwrite_field()
    log_path: str | None = field(default=None, metadata={"help": "JSONL log (default OUT/train_log.jsonl)"})


def make_parser():
    return _make_parser(TrainOracleConfig, DPOTrainConfig, description=__doc__)


def main(config: TrainOracleConfig, train: DPOTrainConfig) -> None:
    from pathlib import Path

    from metaaligner.methods.sepo import read_pairs, subsample
    from metaaligner.training.dpo import train_dpo

    pairs = subsample(read_pairs(config.input), config.fraction, train.seed, config.limit)
    evals = read_pairs(config.eval_input) if config.eval_input else None
    log_path = config.log_path or str(Path(config.output_dir) / "train_log.jsonl")
    out = train_dpo(config.model_name_or_path, pairs, evals, config.output_dir, train, stage="sepo_oracle",
                    log_path=log_path, ref_model_path=config.ref_model_path, lora=config.lora, resume=config.resume,
                    overwrite=config.overwrite)
    print(f"train_oracle: {len(pairs)} pairs -> {out} (log {log_path})")


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
