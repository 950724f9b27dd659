r"""MORLHF baseline, step 2: online RL of the policy with the linearly scalarised reward
R = sum_j w_j * normalised r_j, on TRL 1.16's RLOOTrainer (default) or GRPOTrainer.

The paper's released script used PPO (``PPOTrainer.step``, trl <= 0.11), which TRL has removed; see
``metaaligner/training/morlhf.py`` and the README's baselines section for the differences.

    python baseline_models/morlhf/train_morlhf.py --input rewards.csv \
        --reward_models runs/baselines/morlhf/reward_models --policy_model embedded \
        --output_dir runs/baselines/morlhf/policy --max_steps 20 --max_new_tokens 64
    # other weights (one per reward model, in reward_models.json order), GRPO, LoRA:
    python baseline_models/morlhf/train_morlhf.py ... --weights 0.5,0.3,0.2 --algorithm grpo \
        --lora --learning_rate 1e-5

Writes the policy (or a LoRA adapter) to ``--output_dir`` with ``baseline.json`` and
``train_log.jsonl`` (loss, reward, rewards/<objective>/mean, kl, tokens/s, device hours).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check, make_parser as _make_parser, parse, run_main
from metaaligner.training.common import overwrite_field, resume_field
from metaaligner.training.morlhf import MORLHFTrainConfig


@dataclass
class TrainMORLHFConfig:
    input: str = field(metadata={"help": "CSV/JSONL of prompts (e.g. rewards.csv); unique prompts are used"})
    reward_models: str = field(metadata={
        "help": "output folder of train_reward_models.py, its reward_models.json, or comma-separated reward-model "
                "folders (each with reward_stats.json)"})
    output_dir: str = field(metadata={"help": "folder for the policy, baseline.json and train_log.jsonl"})
    policy_model: str = field(default="embedded", metadata={
        "help": "starting policy: the chat model or a plain SFT of it (prompts are not reward-conditioned); "
                "'embedded' = SmolLM2-135M-Instruct"})
    weights: str | None = field(default=None, metadata={
        "help": "comma-separated weights, one per reward model (default: uniform 1/n)"})
    prompt_column: str = field(default="prompt", metadata={"help": "column of --input holding the prompts"})
    limit: int | None = field(default=None, metadata={**check(ge=1), "help": "only N prompts (seeded choice)"})
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (paper: r=64, alpha=128)"})
    resume: bool = resume_field()
    overwrite: bool = overwrite_field()


def make_parser():
    return _make_parser(TrainMORLHFConfig, MORLHFTrainConfig, description=__doc__)


def main(config: TrainMORLHFConfig, rl_config: MORLHFTrainConfig) -> str:
    from metaaligner.methods.morlhf import train_morlhf_baseline

    return train_morlhf_baseline(config.input, config.reward_models, config.weights, config.policy_model,
                                 config.output_dir, rl_config, prompt_column=config.prompt_column,
                                 limit=config.limit, lora=config.lora, resume=config.resume,
                                 overwrite=config.overwrite)


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
