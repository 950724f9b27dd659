r"""SFT baseline (Rewards-in-Context stage 1), training step: fine-tune a causal LM on the
reward-conditioned items of ``make_sft_data.py`` with the aligner's SFT machinery
(``metaaligner.training.sft.train_sft``: loss on the response only).

    python baseline_models/sft/train_sft.py --data_dir runs/sft_data --output_dir runs/baselines/sft \
        --model_name_or_path embedded --max_steps 20 --per_device_train_batch_size 4 --gradient_accumulation_steps 1
    # at scale (paper: LLaMA2-Chat-7B, full fine-tuning, DeepSpeed ZeRO-3):
    accelerate launch --num_processes 8 baseline_models/sft/train_sft.py --data_dir runs/sft_data \
        --output_dir runs/baselines/sft --model_name_or_path meta-llama/Llama-2-7b-chat-hf \
        --deepspeed configs/deepspeed/zero3.json

Writes the model to ``--output_dir`` with ``baseline.json`` (objectives and default inference
targets: the maximum normalised reward per objective of the training data) and ``train_log.jsonl``
(loss, tokens/s, device hours).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check, make_parser as _make_parser, parse, run_main
from metaaligner.training.common import overwrite_field, resume_field
from metaaligner.training.sft import SFTStageConfig


@dataclass
class TrainSFTBaselineConfig:
    data_dir: str = field(metadata={"help": "output folder of make_sft_data.py (train.json, val.json, stats.json)"})
    output_dir: str = field(metadata={"help": "folder for the trained model, baseline.json and train_log.jsonl"})
    model_name_or_path: str = field(default="embedded", metadata={
        "help": "starting causal LM (local folder or hub name; 'embedded' = SmolLM2-135M-Instruct)"})
    limit: int | None = field(default=None, metadata={**check(ge=1),
                                                      "help": "only the first N training items (smoke tests)"})
    resume: bool = resume_field()
    overwrite: bool = overwrite_field()


def make_parser():
    return _make_parser(TrainSFTBaselineConfig, SFTStageConfig, description=__doc__)


def main(config: TrainSFTBaselineConfig, stage_config: SFTStageConfig) -> str:
    from metaaligner.methods.sft import train_sft_baseline

    return train_sft_baseline(config.data_dir, config.output_dir, config.model_name_or_path, stage_config,
                              limit=config.limit, resume=config.resume,
                              overwrite=config.overwrite)


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
