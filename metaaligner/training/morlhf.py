"""MORLHF baseline (linear scalarisation) on current TRL: RLOO by default, GRPO as an option.

Reward of a sampled response y to prompt x, with one reward model per objective j:

    R(x, y) = sum_j w_j * (r_j(x, y) - mu_j) / sigma_j          (weights ``--weights``, default 1/n)

mu_j/sigma_j come from ``reward_stats.json`` of each reward model (its scores over its training
responses). Each reward model is one TRL reward *function*, so TRL logs ``rewards/<objective>/mean``
separately and aggregates them with ``reward_weights`` (exactly the weighted sum above).

Difference from the paper's MORLHF. The released script ran PPO (``trl.PPOTrainer.step``, trl <= 0.11:
a value head, GAE advantages, per-token KL penalty with an adaptive controller, init 0.2, target 3;
48 new tokens; 8-bit LoRA r=64). TRL removed PPOTrainer in 1.13, so here:

- ``rloo`` (default): REINFORCE Leave-One-Out. k completions per prompt; the baseline of each is the
  mean reward of the other k-1; no value model. The KL to the frozen reference enters the *reward*
  as a fixed sequence-level penalty, R - beta * sum_t log(pi/pi_ref) (PPO's penalty with a fixed
  coefficient instead of the adaptive controller).
- ``grpo``: group-normalised advantages (R - mean_group) / std_group, KL as a per-token loss term;
  ``multi_objective_aggregation`` chooses sum-then-normalise (linear scalarisation, default) or
  normalise-then-sum.

Both sample ``max_new_tokens`` (honoured, default 128; the released script hard-coded 48).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from metaaligner.cli import check
from metaaligner.errors import MetaAlignerError
from metaaligner.methods.common import METADATA_FILE
from metaaligner.methods.scalarisation import standardise
from metaaligner.training.common import TrainerConfigBase, override

log = logging.getLogger(__name__)

ALGORITHMS = ("rloo", "grpo")


@dataclass
class MORLHFTrainConfig(TrainerConfigBase):
    """Online-RL settings of the MORLHF policy (the shared fields are documented in ``TrainerConfigBase``)."""

    learning_rate: float = override("learning_rate", 1e-6, "Peak learning rate (paper's PPO with LoRA: 1e-5)")
    per_device_train_batch_size: int = override("per_device_train_batch_size", 4, (
        "Completions per device per step (times processes x accumulation must divide by num_generations)"))
    lr_scheduler_type: str = override("lr_scheduler_type", "linear")
    warmup_ratio: float = override("warmup_ratio", 0.0)
    lora_r: int = override("lora_r", 64, "LoRA rank (with --lora; paper: 64)")
    lora_alpha: int = override("lora_alpha", 128, "LoRA alpha (with --lora; paper: 128)")
    algorithm: str = field(default="rloo", metadata={"help": "rloo (default) or grpo; both from trl>=1.16 (no PPO)"})
    beta: float = field(default=0.05, metadata={**check(ge=0.0),
        "help": "KL coefficient to the reference (rloo: in the reward; grpo: in the loss); 0 loads no reference"})
    max_new_tokens: int = field(default=128, metadata={**check(ge=1), "help": "Max tokens sampled per response"})
    max_prompt_length: int = field(default=512, metadata={**check(ge=1),
                                                          "help": "Prompts longer than this are cut from the left"})
    temperature: float = field(default=0.7, metadata={**check(gt=0.0), "help": "Sampling temperature (paper: 0.7)"})
    top_p: float = field(default=1.0, metadata={**check(gt=0.0, le=1.0), "help": "Nucleus sampling p"})
    num_generations: int = field(default=4, metadata={**check(ge=2), "help": "Completions per prompt (k >= 2)"})
    num_iterations: int = field(default=1, metadata={**check(ge=1),
                                                     "help": "Optimisation passes per generated batch (mu)"})
    normalize_advantages: bool = field(default=False, metadata={"help": "rloo: normalise advantages per batch"})
    multi_objective_aggregation: str = field(default="sum_then_normalize", metadata={
        "help": "grpo only: sum_then_normalize (linear scalarisation) or normalize_then_sum"})
    reward_batch_size: int = field(default=16, metadata={**check(ge=1), "help": "Batch size of the reward models"})
    reward_max_length: int = field(default=1024, metadata={**check(ge=1),
                                                           "help": "Max tokens a reward model reads (left-cut)"})
    score_until_next_turn: bool = field(default=True, metadata={
        "help": "Score a completion only up to a '\\nHuman:'/'\\nAssistant:' turn the policy writes itself (as the "
                "released script cleaned responses); the sampled tokens are still all trained on"})
    normalize_rewards: bool = field(default=True, metadata={
        "help": "Z-score each reward model's score (its reward_stats.json mean/std) before weighting; "
                "--normalize_rewards false scalarises the raw scores, as the released script did"})
    use_vllm: bool = field(default=False, metadata={"help": "Generate with vLLM (GPU, vllm installed)"})
    report_to: str = field(default="none", metadata={"help": "Trackers (none, wandb, tensorboard)"})

    def __post_init__(self):
        super().__post_init__()  # every field's rule (metaaligner.cli.check): k >= 2 for the group baseline, ...
        if self.algorithm not in ALGORITHMS:
            raise MetaAlignerError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")

    def to_trl(self, output_dir: str, weights: Sequence[float], device: str | None = None, lora: bool = False):
        """The equivalent ``trl.RLOOConfig`` or ``trl.GRPOConfig`` (precision by device)."""
        from trl import GRPOConfig, RLOOConfig

        cls = RLOOConfig if self.algorithm == "rloo" else GRPOConfig
        return cls(**self.training_kwargs(cls, output_dir, device, count_tokens=False, lora=lora,
                                          max_completion_length=self.max_new_tokens,
                                          reward_weights=[float(w) for w in weights], remove_unused_columns=False))


@dataclass
class RewardModelSpec:
    """One objective's reward model and the statistics that normalise its scores."""
    name: str
    path: str
    mean: float = 0.0
    std: float = 1.0


class NormalisedRewardModel:
    """A TRL reward function: ``(prompts, completions) -> [(r(x, y) - mean) / std]``.

    A callable (not an ``nn.Module``) so that the text fed to the reward model is exactly the one it
    was trained on (``prompt + response + eos``) and the score is normalised before weighting.
    """

    def __init__(self, spec: RewardModelSpec, device: str | None = None, batch_size: int = 16,
                 max_length: int | None = 1024, model=None, tokenizer=None, cut_next_turn: bool = False,
                 normalize: bool = True):
        from metaaligner.training.reward_model import load_reward_model

        self.spec = spec
        self.__name__ = spec.name  # TRL names the logged metric rewards/<name>/mean after this
        if model is None:
            model, tokenizer = load_reward_model(spec.path, device=device)
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length, self.cut_next_turn = batch_size, max_length, cut_next_turn
        self.normalize = normalize   # False: the released raw scores

    def raw_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        from metaaligner.methods.common import cut_at_next_turn
        from metaaligner.training.reward_model import score_texts

        if self.cut_next_turn:
            # keep the leading whitespace (the space after "Assistant:") as the reward model was trained on it
            completions = [c[:len(c) - len(c.lstrip())] + cut_at_next_turn(c) for c in completions]
        return score_texts(self.model, self.tokenizer, prompts, completions, self.batch_size, self.max_length)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **kwargs) -> list[float]:
        raw = self.raw_scores(prompts, completions)
        return [standardise(r, self.spec.mean, self.spec.std) for r in raw] if self.normalize else raw


def reward_specs_from_dirs(paths: Sequence[str], names: Sequence[str] | None = None) -> list[RewardModelSpec]:
    """Specs from reward-model folders (``reward_stats.json`` gives mean/std and the objective name)."""
    from metaaligner.training.reward_model import read_reward_stats

    specs = []
    for i, path in enumerate(paths):
        stats = read_reward_stats(path)
        name = (names[i] if names else None) or stats.get("objective") or Path(path).name
        specs.append(RewardModelSpec(name=name, path=str(path), mean=float(stats["mean"]), std=float(stats["std"])))
    return specs


def truncate_prompts(prompts: Sequence[str], tokenizer, max_tokens: int) -> tuple[list[str], int]:
    """Cut prompts longer than ``max_tokens`` tokens from the left (the ``Assistant:`` cue is at the end)."""
    out, cut = [], 0
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            prompt = tokenizer.decode(ids[-max_tokens:], skip_special_tokens=False)
            cut += 1
        out.append(prompt)
    return out, cut


def _check_inputs(prompts: Sequence[str], n_rewards: int, weights: Sequence[float], stage: str) -> list[str]:
    """The non-empty prompts; one weight per reward model."""
    kept = [p for p in prompts if isinstance(p, str) and p.strip()]
    if not kept:
        raise MetaAlignerError(f"{stage}: no prompts to train on")
    if n_rewards == 0:
        raise MetaAlignerError(f"{stage}: no reward models")
    if len(weights) != n_rewards:
        raise MetaAlignerError(f"{stage}: {len(weights)} weights for {n_rewards} reward models")
    return kept


def _reward_functions(reward_models: Sequence[RewardModelSpec], config: MORLHFTrainConfig) -> list[Any]:
    """One ``NormalisedRewardModel`` per spec, on this process's device."""
    from accelerate import PartialState

    device = str(PartialState().device)
    return [NormalisedRewardModel(spec, device=device, batch_size=config.reward_batch_size,
                                  max_length=config.reward_max_length, cut_next_turn=config.score_until_next_turn,
                                  normalize=config.normalize_rewards) for spec in reward_models]


def _write_metadata(output_dir: str, config: MORLHFTrainConfig, policy_path: str | None,
                    reward_models: Sequence[RewardModelSpec], reward_funcs: Sequence[Any],
                    weights: Sequence[float], n_prompts: int, lora: bool) -> None:
    from metaaligner.io import atomic_open

    meta = {"method": "morlhf", "algorithm": config.algorithm, "policy_start": str(policy_path or "embedded"),
            "reward_models": [asdict(s) for s in reward_models] if reward_models else
            [{"name": getattr(f, "__name__", type(f).__name__)} for f in reward_funcs],
            "weights": list(map(float, weights)), "beta": config.beta, "max_new_tokens": config.max_new_tokens,
            "prompts": n_prompts, "lora": lora, "conditioning": None}
    with atomic_open(Path(output_dir) / METADATA_FILE) as fh:  # temp file + rename: never through a link
        fh.write(json.dumps(meta, indent=2) + "\n")


def train_morlhf(policy_path: str | None, prompts: Sequence[str], reward_models: Sequence[RewardModelSpec],
                 weights: Sequence[float], output_dir: str | Path, config: MORLHFTrainConfig, stage: str,
                 log_path: str | Path, lora: bool = False, resume: bool = False,
                 reward_funcs: Sequence[Any] | None = None, overwrite: bool = False) -> str:
    """Online RL of ``policy_path`` on ``prompts`` with reward ``sum_j w_j * normalised r_j``.

    ``reward_funcs`` (optional) replaces the reward models built from ``reward_models`` (tests, custom
    scorers); they must be callables ``(prompts, completions, **kw) -> list[float]``. The output
    folder holds the policy (a PEFT adapter with ``lora``) and ``baseline.json``. ``resume`` /
    ``overwrite``: ``metaaligner.training.common.prepare_resume`` (the reward models and weights are
    part of the settings a resume must share).
    """
    import time

    from datasets import Dataset
    from trl import GRPOTrainer, RLOOTrainer

    from metaaligner.models import load_tokenizer, pick_device, resolve_model_path
    from metaaligner.training import common

    started = time.time()
    common.reset_peak_memory()
    output_dir = str(output_dir)
    policy = resolve_model_path(policy_path)
    prompts = _check_inputs(prompts, len(reward_funcs) if reward_funcs is not None else len(reward_models),
                            weights, stage)
    args = config.to_trl(output_dir, weights, device=pick_device(None), lora=lora)
    tokenizer = load_tokenizer(policy, padding_side="left")
    prompts, cut = truncate_prompts(prompts, tokenizer, config.max_prompt_length)
    if cut:
        log.info("%s: %d of %d prompts cut to their last %d tokens", stage, cut, len(prompts),
                 config.max_prompt_length)
    reward_names = [asdict(s) for s in reward_models] if reward_funcs is None else \
        [getattr(f, "__name__", type(f).__name__) for f in reward_funcs]
    if reward_funcs is None:
        reward_funcs = _reward_functions(reward_models, config)
    trainer_cls = RLOOTrainer if config.algorithm == "rloo" else GRPOTrainer
    trainer = trainer_cls(model=policy, reward_funcs=list(reward_funcs), args=args,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=tokenizer, peft_config=config.lora_config() if lora else None,
                          callbacks=[common.make_jsonl_callback(log_path, stage)])
    fingerprint = common.training_fingerprint(
        args, policy_path, prompts, algorithm=config.algorithm, reward_models=reward_names,
        weights=[float(w) for w in weights], beta=config.beta, num_generations=config.num_generations,
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, lora=lora)
    result, _ = common.fit(trainer, output_dir, resume, overwrite, fingerprint, log)
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
        _write_metadata(output_dir, config, policy_path, reward_models, reward_funcs, weights, len(prompts), lora)
    common.report(stage, f"{len(prompts)} prompts", trainer, result.training_loss, started, output_dir)
    del trainer
    common.free_device_memory()
    return output_dir
