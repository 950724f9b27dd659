"""Pieces every trainer shares: the base config dataclass (common hyper-parameters, LoRA config,
TrainingArguments kwargs), precision by device and a JSONL log of loss, tokens/s and device hours."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from metaaligner.cli import check, check_config
from metaaligner.errors import MetaAlignerError

PAIR_KEYS = ("prompt", "chosen", "rejected")


@dataclass
class TrainerConfigBase:
    """Hyper-parameters every trainer config shares (TRL style: each field documented once, here).

    Subclasses (``DPOTrainConfig``, ``SePOTrainConfig``, ``MORLHFTrainConfig``, ``RewardModelTrainConfig``,
    ``SFTStageConfig``) redeclare a field only to change its default (``override``) and add their own
    fields after these. ``training_kwargs`` turns the config into keyword arguments of a
    ``TrainingArguments``-like class (``trl.DPOConfig``, ``trl.RewardConfig``, ...)."""

    learning_rate: float = field(default=5e-7, metadata={**check(gt=0.0), "help": "Peak learning rate (paper: 5e-7 for DPO/SePO)"})
    num_train_epochs: float = field(default=1.0, metadata={**check(gt=0.0), "help": "Epochs over the training data"})
    max_steps: int = field(default=-1, metadata={**check(ge=1, also=(-1,)), "help": "Stop after this many optimizer steps (-1: use epochs)"})
    per_device_train_batch_size: int = field(default=4, metadata={**check(ge=1), "help": "Examples per device per step"})
    gradient_accumulation_steps: int = field(default=1, metadata={**check(ge=1), "help": "Micro-batches per optimizer step"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after warm-up"})
    warmup_ratio: float = field(default=0.1, metadata={**check(ge=0.0, lt=1.0), "help": "Share of steps with linear warm-up"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations to save memory"})
    logging_steps: int = field(default=10, metadata={**check(ge=1), "help": "Log every N optimizer steps"})
    save_steps: int = field(default=500, metadata={**check(ge=1), "help": "Checkpoint every N steps (for --resume)"})
    save_total_limit: int = field(default=2, metadata={**check(ge=1), "help": "Keep at most this many checkpoints"})
    seed: int = field(default=0, metadata={"help": "Seed of data order and initialisation"})
    lora_r: int = field(default=16, metadata={**check(ge=1), "help": "LoRA rank (with --lora)"})
    lora_alpha: int = field(default=32, metadata={**check(ge=1), "help": "LoRA alpha (with --lora)"})
    lora_dropout: float = field(default=0.05, metadata={**check(ge=0.0, lt=1.0), "help": "LoRA dropout (with --lora)"})
    deepspeed: str | None = field(default=None, metadata={"help": "DeepSpeed JSON config (e.g. configs/deepspeed/zero3.json)"})

    def __post_init__(self):
        check_config(self)  # every field's rule, also for configs built in Python (subclasses call super())

    def lora_targets(self) -> Any:
        """``lora_target_modules`` as PEFT wants it: ``"all-linear"`` or a list of names
        (configs without that field: ``"all-linear"``)."""
        targets: Any = getattr(self, "lora_target_modules", "all-linear")
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        return targets

    def lora_config(self, task_type: str = "CAUSAL_LM"):
        """A ``peft.LoraConfig`` from the ``lora_*`` fields."""
        from peft import LoraConfig

        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.lora_targets(), task_type=task_type)

    def eval_kwargs(self, has_eval: bool) -> dict[str, Any]:
        """Evaluate every ``eval_steps`` steps when > 0, else once per epoch; never without eval data."""
        if not has_eval:
            return {"eval_strategy": "no"}
        eval_steps = getattr(self, "eval_steps", 0)
        return {"eval_strategy": "steps", "eval_steps": eval_steps} if eval_steps > 0 else {"eval_strategy": "epoch"}

    def training_kwargs(self, args_cls, output_dir: str, device: str | None = None, has_eval: bool = False,
                        count_tokens: bool = True, **extra: Any) -> dict[str, Any]:
        """Keyword arguments of ``args_cls`` (a ``TrainingArguments`` subclass): every field of this
        config that ``args_cls`` has, ``warmup_ratio`` passed as ``warmup_steps`` (transformers 5: a
        float < 1 is a ratio), step-wise saving, ``eval_kwargs``, the tokens-seen counter
        (``count_tokens``), then ``extra``, then precision by device (float32 on CPU)."""
        keep = {f.name for f in fields(args_cls)}
        values: dict[str, Any] = {k: v for k, v in asdict(self).items()
                                  if k in keep and k not in ("eval_steps", "warmup_ratio")}
        values.update(output_dir=output_dir, warmup_steps=self.warmup_ratio, save_strategy="steps",
                      **self.eval_kwargs(has_eval))
        if count_tokens:
            values["include_num_input_tokens_seen"] = "non_padding"
        values.update(extra)
        values.update(precision_kwargs(device))
        return values


@dataclass
class PreferenceTrainConfigBase(TrainerConfigBase):
    """``TrainerConfigBase`` plus the fields of offline preference training on pairs (DPO, SePO)."""

    per_device_eval_batch_size: int = field(default=4, metadata={**check(ge=1), "help": "Pairs per device per eval step"})
    max_length: int = field(default=1024, metadata={**check(ge=1), "help": "Max tokens of prompt + response (longer are cut at the end)"})
    weight_decay: float = field(default=0.0, metadata={**check(ge=0.0), "help": "AdamW weight decay"})
    eval_steps: int = field(default=0, metadata={**check(ge=0), "help": "Evaluate every N steps (0: once per epoch when eval pairs exist)"})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "LoRA target modules, comma-separated or all-linear"})
    report_to: str = field(default="none", metadata={"help": "Trackers (none, wandb, tensorboard)"})


def override(name: str, default: Any, help_text: str | None = None) -> Any:
    """Redeclare a ``TrainerConfigBase`` field in a subclass with another default (and optionally a
    more specific help text); the field keeps its place and, by default, its help."""
    metadata = dict(TrainerConfigBase.__dataclass_fields__[name].metadata)
    if help_text is not None:
        metadata["help"] = help_text
    return field(default=default, metadata=metadata)


def check_pairs(pairs: list[dict[str, Any]], name: str) -> list[dict[str, str]]:
    """Keep only ``prompt``/``chosen``/``rejected`` (all text); raise a one-line error otherwise."""
    out = []
    for i, pair in enumerate(pairs, start=1):
        missing = [k for k in PAIR_KEYS if not isinstance(pair.get(k), str)]
        if missing:
            raise MetaAlignerError(f"{name} pair {i}: {', '.join(missing)} must be text")
        out.append({k: pair[k] for k in PAIR_KEYS})
    return out


def precision_kwargs(device: str | None = None) -> dict[str, Any]:
    """TrainingArguments precision flags: float32 on CPU (TRL's configs default to bf16=True, which
    is ~400x slower on CPU), bf16 where the GPU supports it, else fp16."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return {"bf16": True, "fp16": False}
        return {"bf16": False, "fp16": True}
    return {"bf16": False, "fp16": False, "use_cpu": True}


def device_count() -> int:
    """Devices this run occupies (GPUs across processes, or processes on CPU)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world if not torch.cuda.is_available() else max(world, 1)


def make_jsonl_callback(path: str | Path, stage: str):
    """A ``TrainerCallback`` writing each log event (loss, lr, ...) plus wall time, tokens/s and
    device hours (devices x wall hours) as one JSON line; only the main process writes."""
    from transformers import TrainerCallback

    class JsonlLogCallback(TrainerCallback):
        def __init__(self):
            self.path = Path(path)
            self.start = None
            self.tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.time()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or logs is None:
                return
            elapsed = time.time() - (self.start or time.time())
            tokens = state.num_input_tokens_seen or 0
            record = {"stage": stage, "step": state.global_step, "epoch": state.epoch,
                      "wall_s": round(elapsed, 3),
                      "device_hours": round(elapsed * device_count() / 3600, 6),
                      "tokens_seen": tokens,
                      "tokens_per_s": round(tokens / elapsed, 2) if elapsed > 0 and tokens else None,
                      **{k: v for k, v in logs.items() if isinstance(v, (int, float, str))}}
            from metaaligner.io import open_no_follow

            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open_no_follow(self.path, "a") as fh:  # a planted link is refused, never followed
                fh.write(json.dumps(record) + "\n")

    return JsonlLogCallback()


def read_device_hours(log_path: str | Path) -> float | None:
    """Total device hours of a training log (sum over stages of each stage's last record)."""
    path = Path(log_path)
    if not path.exists():
        return None
    last: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "device_hours" in record:
            last[record.get("stage", "")] = float(record["device_hours"])
    return sum(last.values()) if last else None


# ---------------------------------------------------------------- resume: complete checkpoints, same settings

RESUME_SETTINGS = "resume_settings.json"
_SETTING_NAMES = {"global_batch": "global batch", "learning_rate": "learning rate",
                  "lr_scheduler_type": "schedule", "warmup_ratio": "warm-up ratio", "max_steps": "max steps",
                  "num_train_epochs": "epochs", "weight_decay": "weight decay", "seed": "seed",
                  "model": "model", "data_sha256": "training data"}


def last_complete_checkpoint(output_dir: str | Path, logger=None) -> str | None:
    """The highest ``checkpoint-N`` in ``output_dir`` that the Trainer finished saving (its
    ``trainer_state.json``, written last, parses); later incomplete ones (a kill during save) are
    skipped with a warning. None when there is none."""
    import logging
    import re

    logger = logger or logging.getLogger(__name__)
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("%s is incomplete (no readable trainer_state.json: killed while saving?); "
                           "skipping it for an earlier checkpoint", path)
            continue
        return str(path)
    return None


def resume_settings(config: TrainerConfigBase, world_size: int, model: str | None, items: list) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote its checkpoints: the global batch
    (per-device batch x accumulation x processes, so 2 processes x 1 may resume 1 x 2), the
    optimiser schedule, the seed, the model and a hash of the training items."""
    import hashlib

    return {
        "global_batch": config.per_device_train_batch_size * config.gradient_accumulation_steps * world_size,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps, "processes": world_size,
        "learning_rate": config.learning_rate, "lr_scheduler_type": config.lr_scheduler_type,
        "warmup_ratio": config.warmup_ratio, "max_steps": config.max_steps,
        "num_train_epochs": config.num_train_epochs, "weight_decay": getattr(config, "weight_decay", None),
        "seed": config.seed, "model": str(model),
        "data_sha256": hashlib.sha256(json.dumps(items, sort_keys=True).encode("utf-8")).hexdigest(),
    }


def _describe(name: str, s: dict[str, Any]) -> str:
    if name == "global_batch":
        return (f"{s['global_batch']} (per-device {s.get('per_device_train_batch_size')} x accumulation "
                f"{s.get('gradient_accumulation_steps')} x {s.get('processes')} processes)")
    if name == "data_sha256":
        return f"sha256 {str(s[name])[:12]}"
    return repr(s[name])


def check_resume_settings(output_dir: str | Path, checkpoint: str | None, settings: dict[str, Any],
                          write: bool, logger=None) -> None:
    """Refuse to resume ``checkpoint`` with settings other than those recorded in
    ``output_dir/resume_settings.json`` (one line naming each difference); record ``settings`` there
    when starting afresh (``write``: the main process only)."""
    import logging

    logger = logger or logging.getLogger(__name__)
    path = Path(output_dir) / RESUME_SETTINGS
    if checkpoint is not None and path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MetaAlignerError(f"{path} is unreadable ({exc}); cannot check --resume's settings") from exc
        diffs = [f"{_SETTING_NAMES[k]} {_describe(k, settings)} against the checkpoint's {_describe(k, saved)}"
                 for k in _SETTING_NAMES if k in saved and saved[k] != settings.get(k)]
        if diffs:
            raise MetaAlignerError(f"--resume from {checkpoint} with other settings than it was trained with: "
                                   + "; ".join(diffs) + "; resume with the same settings or start over "
                                   "in a new --output_dir")
        return
    if checkpoint is not None:
        logger.warning("%s: no %s (written before issue 33); resuming without checking the settings",
                       checkpoint, RESUME_SETTINGS)
    if write:
        from metaaligner.io import atomic_open

        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as fh:
            fh.write(json.dumps(settings, indent=2, sort_keys=True))
