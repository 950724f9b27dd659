"""Per-objective reward models for the MORLHF baseline, on TRL's ``RewardTrainer``.

Bradley-Terry loss on (chosen, rejected) pairs ordered by one objective's score:

    loss = -log sigmoid(r(x, y_w) - r(x, y_l))

The base is any sequence-classification checkpoint (paper: GPT-2 large); offline the default is
the embedded SmolLM2, loaded with ``AutoModelForSequenceClassification(num_labels=1)`` (a fresh
scalar head). After training, the folder also holds ``reward_stats.json``: the mean and std of the
model's scores over the training responses, which MORLHF uses to normalise each reward before the
linear scalarisation (the stage-1 rewards were normalised the same way).

Text format (training and scoring alike): ``prompt + response + eos``, tokenised with the model's
own special tokens, as TRL's ``RewardTrainer`` does for explicit-prompt preference data.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from metaaligner.cli import check
from metaaligner.errors import MetaAlignerError
from metaaligner.training.common import TrainerConfigBase, check_pairs, override

log = logging.getLogger(__name__)

STATS_FILE = "reward_stats.json"


@dataclass
class RewardModelTrainConfig(TrainerConfigBase):
    """Training settings of one reward model (the shared fields are documented in ``TrainerConfigBase``)."""

    learning_rate: float = override("learning_rate", 2e-5, "Peak learning rate of the reward model")
    per_device_train_batch_size: int = override("per_device_train_batch_size", 8)
    lr_scheduler_type: str = override("lr_scheduler_type", "linear")
    warmup_ratio: float = override("warmup_ratio", 0.03)
    per_device_eval_batch_size: int = field(default=8, metadata={**check(ge=1),
                                                                 "help": "Pairs per device per eval step"})
    max_length: int = field(default=1024, metadata={**check(ge=1),
        "help": "Max tokens of prompt + response; longer training pairs are dropped by TRL, longer texts are "
                "cut from the left when scoring"})
    weight_decay: float = field(default=0.0, metadata={**check(ge=0.0), "help": "AdamW weight decay"})
    center_rewards_coefficient: float | None = field(default=None, metadata={**check(ge=0.0),
        "help": "Pull scores towards mean zero (TRL's center_rewards_coefficient; e.g. 0.01)"})
    stats_samples: int = field(default=2000, metadata={**check(ge=1),
        "help": "Training pairs (seeded sample) scored after training for the normalisation mean/std"})
    score_batch_size: int = field(default=16, metadata={**check(ge=1),
                                                        "help": "Batch size when scoring for the statistics"})
    report_to: str = field(default="none", metadata={"help": "Trackers (none, wandb, tensorboard)"})

    def to_trl(self, output_dir: str, device: str | None = None, has_eval: bool = False, lora: bool = False):
        """The equivalent ``trl.RewardConfig`` (evaluated once per epoch with eval pairs; precision by device)."""
        from trl import RewardConfig

        return RewardConfig(**self.training_kwargs(RewardConfig, output_dir, device, has_eval, lora=lora))

    def lora_config(self, task_type: str = "SEQ_CLS"):
        """A ``peft.LoraConfig`` on all linear layers of the sequence classifier."""
        return super().lora_config(task_type)


def load_reward_model(path: str | None, device: str | None = None, dtype: str | None = None):
    """(model, tokenizer) of a sequence classifier with a single score; ``None`` = the embedded
    SmolLM2 with a fresh scalar head (the offline default base)."""
    from transformers import AutoModelForSequenceClassification

    from metaaligner.models import load_tokenizer, pick_device, pick_dtype, quiet_transformers, resolve_model_path

    resolved = resolve_model_path(path)
    device = pick_device(device)
    try:
        with quiet_transformers():  # "some weights newly initialised" is expected for a fresh head
            model = AutoModelForSequenceClassification.from_pretrained(resolved, num_labels=1,
                                                                       dtype=pick_dtype(device, dtype))
    except OSError as exc:
        raise MetaAlignerError(f"cannot load reward model {resolved!r}: {str(exc).splitlines()[0]}") from None
    tokenizer = load_tokenizer(resolved, padding_side="right")
    tokenizer.truncation_side = "left"  # keep the response, which sits at the end
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def score_texts(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16,
                max_length: int | None = 1024) -> list[float]:
    """The scalar score of each ``prompt + response + eos``, batched (length-sorted, right-padded)."""
    import torch

    eos = tokenizer.eos_token or ""
    texts = [p + r + ("" if r.endswith(eos) else eos) for p, r in zip(prompts, responses)]
    encoded = [tokenizer(t, add_special_tokens=True, truncation=max_length is not None,
                         max_length=max_length)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]), reverse=True)
    scores = [math.nan] * len(texts)
    device = next(model.parameters()).device
    for start in range(0, len(order), max(1, batch_size)):
        idx = order[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, padding=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            logits = model(**batch).logits[:, 0].float().tolist()
        for i, value in zip(idx, logits):
            scores[i] = value
    return scores


def score_statistics(scores: Sequence[float]) -> dict[str, float]:
    """Mean and population std of finite scores (std 1.0 when the scores are constant)."""
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        raise MetaAlignerError("no finite reward-model scores to normalise with")
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((s - mean) ** 2 for s in finite) / len(finite))
    return {"mean": mean, "std": std if std > 0 else 1.0, "n": len(finite)}


def _write_reward_stats(model, tokenizer, train: list[dict[str, str]], n_eval: int, eval_accuracy: float | None,
                        config: RewardModelTrainConfig, output_dir: str, stage: str, objective: str | None,
                        train_seconds: float) -> None:
    """``reward_stats.json``: mean/std of the model's scores over a seeded sample of training responses
    (chosen and rejected), the sample's accuracy and the eval accuracy."""
    from metaaligner.io import atomic_open

    sample = list(train)
    random.Random(config.seed).shuffle(sample)
    sample = sample[:config.stats_samples]
    model.eval()
    scores = score_texts(model, tokenizer, [p["prompt"] for p in sample] * 2,
                         [p["chosen"] for p in sample] + [p["rejected"] for p in sample],
                         batch_size=config.score_batch_size, max_length=config.max_length)
    stats = score_statistics(scores)
    chosen, rejected = scores[:len(sample)], scores[len(sample):]
    stats.update(objective=objective, train_pairs=len(train), eval_pairs=n_eval,
                 train_accuracy_sample=sum(c > r for c, r in zip(chosen, rejected)) / len(sample),
                 eval_accuracy=eval_accuracy, train_seconds=round(train_seconds, 2))
    with atomic_open(Path(output_dir) / STATS_FILE) as fh:  # temp file + rename: never through a link
        fh.write(json.dumps(stats, indent=2) + "\n")
    log.info("%s: mean %.4f std %.4f train accuracy (sample) %.3f eval accuracy %s", stage, stats["mean"],
             stats["std"], stats["train_accuracy_sample"], stats["eval_accuracy"])


def train_reward_model(base_model: str | None, train_pairs: list[dict[str, Any]],
                       eval_pairs: list[dict[str, Any]] | None, output_dir: str | Path,
                       config: RewardModelTrainConfig, stage: str, log_path: str | Path,
                       lora: bool = False, resume: bool = False, objective: str | None = None,
                       overwrite: bool = False) -> str:
    """Train one reward model on ``{"prompt","chosen","rejected"}`` pairs; return ``output_dir``.

    The folder holds a plain sequence classifier (LoRA adapters are merged) plus ``reward_stats.json``
    (mean/std of its scores over a seeded sample of training responses, eval accuracy). ``resume`` /
    ``overwrite``: ``metaaligner.training.common.prepare_resume``.
    """
    import time

    import torch
    from datasets import Dataset
    from trl import RewardTrainer

    from metaaligner.models import pick_device
    from metaaligner.training import common

    start = time.time()
    common.reset_peak_memory()
    output_dir = str(output_dir)
    train = check_pairs(train_pairs, "train")
    if not train:
        raise MetaAlignerError(f"{stage}: no training pairs (every pair tied on this objective?)")
    evals = check_pairs(eval_pairs or [], "eval")
    args = config.to_trl(output_dir, device=pick_device(None), has_eval=bool(evals), lora=lora)
    torch.manual_seed(config.seed)  # the fresh score head
    model, tokenizer = load_reward_model(base_model, device="cpu")
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                            eval_dataset=Dataset.from_list(evals) if evals else None, processing_class=tokenizer,
                            peft_config=config.lora_config() if lora else None,
                            callbacks=[common.make_jsonl_callback(log_path, stage)])
    if len(trainer.train_dataset) < len(train):
        log.info("%s: %d of %d training pairs longer than max_length=%d were dropped by TRL", stage,
                 len(train) - len(trainer.train_dataset), len(train), config.max_length)
    fingerprint = common.training_fingerprint(args, base_model, train, lora=lora, max_length=config.max_length,
                                              center_rewards_coefficient=config.center_rewards_coefficient)
    result, _ = common.fit(trainer, output_dir, resume, overwrite, fingerprint, log)
    evals_logged = [r for r in trainer.state.log_history if "eval_accuracy" in r]
    model = trainer.accelerator.unwrap_model(trainer.model)
    if lora:
        model = model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        model.save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
        _write_reward_stats(model, tokenizer, train, len(evals),
                            evals_logged[-1].get("eval_accuracy") if evals_logged else None, config, output_dir,
                            stage, objective, time.time() - start)
    common.report(stage, f"{len(train)} pairs", trainer, result.training_loss, start, output_dir)
    del trainer
    common.free_device_memory()
    return output_dir


def read_reward_stats(path: str | Path) -> dict[str, Any]:
    stats_path = Path(path) / STATS_FILE
    if not stats_path.exists():
        raise MetaAlignerError(f"{path}: no {STATS_FILE}; train it with baseline_models/morlhf/train_reward_models.py "
                               "or give --reward_stats mean,std")
    return json.loads(stats_path.read_text(encoding="utf-8"))
