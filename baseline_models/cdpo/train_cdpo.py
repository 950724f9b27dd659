r"""CDPO baseline, training step: DPO (TRL's DPOTrainer through ``metaaligner.training.dpo``) on the
target-conditioned pairs of ``make_cdpo_data.py``, starting from the SFT baseline's weights, with
that same model as the frozen reference (paper's run: beta 0.1, lr 5e-7, 1 epoch; the defaults).

    python baseline_models/cdpo/train_cdpo.py --data_dir runs/cdpo_data --model_name_or_path runs/baselines/sft \
        --output_dir runs/baselines/cdpo --max_steps 20 --per_device_train_batch_size 4
    # LoRA instead of full weights (the reference is the base with the adapter disabled):
    python baseline_models/cdpo/train_cdpo.py ... --lora --learning_rate 5e-6
    # at scale, full weights with DeepSpeed ZeRO-3:
    accelerate launch --num_processes 8 baseline_models/cdpo/train_cdpo.py --data_dir runs/cdpo_data \
        --model_name_or_path runs/baselines/sft --output_dir runs/baselines/cdpo \
        --deepspeed configs/deepspeed/zero3.json

Writes the model (or adapter) to ``--output_dir`` with ``baseline.json`` (the targets used for the
data, reused at inference) and ``train_log.jsonl`` (loss, reward margins/accuracies, tokens/s,
device hours).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check, make_parser as _make_parser, parse, run_main
from metaaligner.training.common import overwrite_field, resume_field
from metaaligner.training.dpo import DPOTrainConfig


@dataclass
class TrainCDPOConfig:
    data_dir: str = field(metadata={"help": "output folder of make_cdpo_data.py (train.jsonl, val.jsonl, stats.json)"})
    output_dir: str = field(metadata={"help": "folder for the trained model, baseline.json and train_log.jsonl"})
    model_name_or_path: str = field(default="embedded", metadata={
        "help": "starting model: the SFT baseline's folder (a full model; 'embedded' = SmolLM2 for smoke tests)"})
    ref_model_path: str | None = field(default=None, metadata={
        "help": "reference model (default: the starting model itself)"})
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of all weights"})
    limit: int | None = field(default=None, metadata={**check(ge=1),
                                                      "help": "only the first N training pairs (smoke tests)"})
    resume: bool = resume_field()
    overwrite: bool = overwrite_field()


def make_parser():
    return _make_parser(TrainCDPOConfig, DPOTrainConfig, description=__doc__)


def main(config: TrainCDPOConfig, dpo_config: DPOTrainConfig) -> str:
    from metaaligner.methods.cdpo import train_cdpo_baseline

    return train_cdpo_baseline(config.data_dir, config.output_dir, config.model_name_or_path, dpo_config,
                               ref_model_path=config.ref_model_path, lora=config.lora, limit=config.limit,
                               resume=config.resume, overwrite=config.overwrite)


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
