r"""MORLHF baseline, step 1: one reward model per objective (TRL's RewardTrainer), each trained on the
(chosen, rejected) pairs of ``rewards.csv`` ordered by that objective's score, ties dropped.

    python baseline_models/morlhf/train_reward_models.py --input rewards.csv --dataset hh-rlhf \
        --output_dir runs/baselines/morlhf/reward_models --base_model embedded --max_steps 20
    # paper: GPT-2 large reward models, any sequence classifier works:
    python baseline_models/morlhf/train_reward_models.py --input rewards.csv --dataset hh-rlhf \
        --output_dir runs/baselines/morlhf/reward_models --base_model openai-community/gpt2-large

Writes ``DIR/<objective>/`` (a sequence classifier + ``reward_stats.json``: mean/std of its scores
for the normalisation in MORLHF, eval accuracy), ``DIR/reward_models.json`` (the list that
``train_morlhf.py --reward_models DIR`` reads) and ``DIR/train_log.jsonl``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check, deprecated_aliases, make_parser as _make_parser, parse, run_main, split_csv
from metaaligner.training.reward_model import RewardModelTrainConfig


@dataclass
class TrainRewardModelsConfig:
    input: str = field(metadata={"help": "stage-1 rewards CSV (prompt, chosen_response, rejected_response, scores)"})
    output_dir: str = field(metadata={"help": "folder for one reward model per objective and reward_models.json"})
    dataset: str = field(default="hh-rlhf", metadata={"help": "dataset config name or YAML path",
                                                       **deprecated_aliases("--config", "--dataset_config")})
    base_model: str = field(default="embedded", metadata={
        "help": "sequence-classification base (folder or hub name; 'embedded' = SmolLM2 with a fresh scalar head)"})
    objectives: str | None = field(default=None, metadata={"help": "comma-separated objective keys (default: all)"})
    val_size: float = field(default=0.1, metadata={**check(ge=0.0),
                                                   "help": "validation share of pairs (<1) or number (>=1)"})
    limit: int | None = field(default=None, metadata={**check(ge=1), "help": "only the first N pairs of the input"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters (merged into the saved model)"})
    resume: bool = field(default=False, metadata={
        "help": "continue each model from its last complete checkpoint; refused, naming each difference, when the "
                "global batch, learning rate, schedule, model or training data differ"})
    overwrite: bool = field(default=False, metadata={
        "help": "start each model over in an --output_dir holding an earlier run (its checkpoints are deleted)"})


def make_parser():
    return _make_parser(TrainRewardModelsConfig, RewardModelTrainConfig, description=__doc__)


def main(config: TrainRewardModelsConfig, rm_config: RewardModelTrainConfig) -> dict:
    from metaaligner.methods.morlhf import train_reward_models

    return train_reward_models(config.input, config.dataset, config.output_dir, config.base_model, rm_config,
                               objectives=split_csv(config.objectives) or None, seed=rm_config.seed,
                               val_size=config.val_size, limit=config.limit, lora=config.lora, resume=config.resume,
                               overwrite=config.overwrite)


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
