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
                        count_tokens: bool = True, lora: bool = False, **extra: Any) -> dict[str, Any]:
        """Keyword arguments of ``args_cls`` (a ``TrainingArguments`` subclass): every field of this
        config that ``args_cls`` has, ``warmup_ratio`` passed as ``warmup_steps`` (transformers 5: a
        float < 1 is a ratio), step-wise saving, ``eval_kwargs``, the tokens-seen counter
        (``count_tokens``), ``ddp_find_unused_parameters=False`` when training ``lora`` adapters (every
        trainable weight is used; DDP's search for unused ones costs a graph walk per step and fails
        with reentrant checkpointing), then ``extra``, then precision by device (float32 on CPU)."""
        keep = {f.name for f in fields(args_cls)}
        values: dict[str, Any] = {k: v for k, v in asdict(self).items()
                                  if k in keep and k not in ("eval_steps", "warmup_ratio")}
        values.update(output_dir=output_dir, warmup_steps=self.warmup_ratio, save_strategy="steps",
                      **self.eval_kwargs(has_eval))
        if count_tokens:
            values["include_num_input_tokens_seen"] = "non_padding"
        if lora:
            values["ddp_find_unused_parameters"] = False
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


def resume_field() -> Any:
    """The ``--resume`` flag of every baseline trainer script."""
    return field(default=False, metadata={
        "help": "continue from the last complete checkpoint in --output_dir; refused, naming each difference, when "
                "the global batch, learning rate, schedule, model or training data differ"})


def overwrite_field() -> Any:
    """The ``--overwrite`` flag of every baseline trainer script."""
    return field(default=False, metadata={
        "help": "start over in an --output_dir holding an earlier run (its checkpoints are deleted)"})


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


# ---------------------------------------------------------------- peak memory of a stage

def reset_peak_memory() -> None:
    """Restart the peak counters (Linux: this process's VmHWM; CUDA: the allocator's peak), so the
    next ``peak_memory`` is the peak of the stage that follows."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:  # "5" resets VmHWM to the current RSS
            fh.write("5")
    except OSError:
        pass
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, float | None]:
    """``peak_rss_mb`` (MiB: VmHWM since ``reset_peak_memory``; elsewhere the process's ru_maxrss) and
    ``cuda_peak_mb`` (MiB: the CUDA allocator's peak; None without a GPU)."""
    rss = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
    except OSError:
        pass
    if rss is None:
        import resource
        import sys

        raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss = raw / 2**20 if sys.platform == "darwin" else raw / 1024  # bytes on macOS, KiB on Linux
    import torch

    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mb": round(rss, 1), "cuda_peak_mb": None if cuda is None else round(cuda, 1)}


def memory_text(memory: dict[str, float | None]) -> str:
    """``peak RSS 2.41 GiB`` (+ ``, CUDA peak 5.20 GiB`` on a GPU), for a stage's summary line."""
    text = f"peak RSS {memory['peak_rss_mb'] / 1024:.2f} GiB"
    if memory.get("cuda_peak_mb") is not None:
        text += f", CUDA peak {memory['cuda_peak_mb'] / 1024:.2f} GiB"
    return text


def summary_line(stage: str, rows: str, trainer, train_loss: float | None, started: float, output_dir: str,
                 memory: dict[str, float | None], extra: str = "") -> str:
    """One line closing a training stage: what it read, steps, loss, time, tokens/s, peak memory, output."""
    elapsed = time.time() - started
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    speed = f", {tokens / elapsed:.1f} tokens/s" if tokens and elapsed > 0 else ""
    loss = f", train loss {train_loss:.4f}" if train_loss is not None else ""
    return (f"[{stage}] {rows}, {trainer.state.global_step} steps{loss}{extra}, {elapsed:.1f} s{speed}, "
            f"{memory_text(memory)} -> {output_dir}")


# ---------------------------------------------------------------- resume: complete checkpoints, same settings

RESUME_SETTINGS = "resume_settings.json"
# settings a resumed run must share with the checkpoint (key -> the name an error uses); every other
# key of a fingerprint (a trainer's own, e.g. DPO's beta) is compared too, named after its key
_SETTING_NAMES = {"global_batch": "global batch", "learning_rate": "learning rate",
                  "lr_scheduler_type": "schedule", "warmup": "warm-up", "warmup_ratio": "warm-up ratio",
                  "max_steps": "max steps", "num_train_epochs": "epochs", "weight_decay": "weight decay",
                  "optim": "optimizer", "adam_betas": "Adam betas", "seed": "seed", "model": "model",
                  "data_sha256": "training data"}
# recorded for the messages, not compared: 2 processes x 1 may resume 1 process x 2
_PARTS_OF_GLOBAL_BATCH = ("per_device_train_batch_size", "gradient_accumulation_steps", "processes")


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """Every ``checkpoint-N`` folder in ``output_dir``, highest N first (complete or not)."""
    import re

    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str | Path, logger=None) -> str | None:
    """The highest ``checkpoint-N`` in ``output_dir`` that the Trainer finished saving (its
    ``trainer_state.json``, written last, parses); later incomplete ones (a kill during save) are
    skipped with a one-line warning. None when there is none."""
    import logging

    logger = logger or logging.getLogger(__name__)
    for path in checkpoint_folders(output_dir):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("%s is incomplete (no readable trainer_state.json: killed while saving?); "
                           "skipping it for an earlier checkpoint", path)
            continue
        return str(path)
    return None


def items_sha256(items: Any) -> str:
    """sha256 of the training items (the rows a trainer reads from its files, after any sampling)."""
    import hashlib

    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def training_fingerprint(args, model: str | None, items: Any, **extra: Any) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote its checkpoints, from the trainer's
    ``TrainingArguments`` ``args``: the global batch (per-device batch x accumulation x processes),
    learning rate, schedule (type, warm-up, steps or epochs), weight decay, optimizer, seed, the model,
    a hash of the training ``items`` and ``extra`` (a trainer's own settings: DPO's beta, the reward
    models of MORLHF, ...; JSON-able)."""
    world = int(getattr(args, "world_size", 1) or 1)
    fingerprint = {
        "global_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps, "processes": world,
        "learning_rate": args.learning_rate, "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value",
                                                                              args.lr_scheduler_type)),
        "warmup": getattr(args, "warmup_steps", None), "max_steps": args.max_steps,
        "num_train_epochs": args.num_train_epochs, "weight_decay": args.weight_decay,
        "optim": str(getattr(args.optim, "value", args.optim)), "adam_betas": [args.adam_beta1, args.adam_beta2],
        "seed": args.seed, "model": str(model), "data_sha256": items_sha256(items),
    }
    fingerprint.update(json.loads(json.dumps(extra, default=str)))
    return fingerprint


def _describe(name: str, s: dict[str, Any]) -> str:
    if name == "global_batch":
        return (f"{s['global_batch']} (per-device {s.get('per_device_train_batch_size')} x accumulation "
                f"{s.get('gradient_accumulation_steps')} x {s.get('processes')} processes)")
    if name == "data_sha256":
        return f"sha256 {str(s.get(name))[:12]}"
    value = s.get(name)
    return value if isinstance(value, str) else json.dumps(value)


def fingerprint_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``name old -> new`` for every compared setting that differs (keys missing from an older
    record are not compared)."""
    keys = list(_SETTING_NAMES) + sorted(k for k in set(saved) | set(new)
                                         if k not in _SETTING_NAMES and k not in _PARTS_OF_GLOBAL_BATCH)
    return [f"{_SETTING_NAMES.get(k, k.replace('_', ' '))} {_describe(k, saved)} -> {_describe(k, new)}"
            for k in keys if k in saved and k in new and saved[k] != new[k]]


def check_resume_settings(output_dir: str | Path, checkpoint: str | None, settings: dict[str, Any],
                          write: bool, logger=None) -> None:
    """Refuse to resume ``checkpoint`` with settings other than those recorded in
    ``output_dir/resume_settings.json`` (one line naming each difference, old -> new); record
    ``settings`` there when starting afresh (``write``: the main process only)."""
    import logging

    logger = logger or logging.getLogger(__name__)
    path = Path(output_dir) / RESUME_SETTINGS
    if checkpoint is not None and path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MetaAlignerError(f"{path} is unreadable ({exc}); cannot check --resume's settings") from exc
        diffs = fingerprint_differences(saved, settings)
        if diffs:
            raise MetaAlignerError(f"--resume from {checkpoint}: other settings than it was trained with ("
                                   + "; ".join(diffs) + "); resume with the checkpoint's settings, or pass "
                                   "--overwrite to start over (its checkpoints are deleted)")
        return
    if checkpoint is not None:
        logger.warning("%s: no %s beside it (an older version wrote it); resuming without checking the settings",
                       checkpoint, RESUME_SETTINGS)
        return
    if write:
        from metaaligner.io import atomic_open

        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as fh:
            fh.write(json.dumps(settings, indent=2, sort_keys=True))


def clear_run(output_dir: str | Path, also: tuple[str, ...] = ()) -> list[str]:
    """Delete what an earlier run left for ``--resume`` in ``output_dir``: its ``checkpoint-N``
    folders, ``resume_settings.json`` and the files named in ``also``; returns what was removed."""
    import shutil

    folder = Path(output_dir)
    removed = []
    for path in checkpoint_folders(folder):
        shutil.rmtree(path)
        removed.append(path.name)
    for name in (RESUME_SETTINGS, *also):
        if (folder / name).is_file() and not (folder / name).is_symlink():
            (folder / name).unlink()
            removed.append(name)
    return removed


def prepare_resume(trainer, output_dir: str | Path, resume: bool, overwrite: bool, fingerprint: dict[str, Any],
                   logger=None, also_clear: tuple[str, ...] = ()) -> str | None:
    """The checkpoint ``trainer.train`` starts from, the one rule of every trainer:

    - ``overwrite``: the earlier run's checkpoints and records (``clear_run``) are deleted; start afresh;
    - ``resume``: the last complete ``checkpoint-N`` (an incomplete later one skipped with a warning),
      refused when ``fingerprint`` differs from the one recorded when the run started (old -> new);
    - neither: a folder already holding checkpoints is refused (a later ``--resume`` would take them up
      under this run's settings).

    A fresh start records ``fingerprint`` in ``output_dir/resume_settings.json`` (main process)."""
    import logging

    logger = logger or logging.getLogger(__name__)
    main = trainer.is_world_process_zero()
    if overwrite:
        if main:
            removed = clear_run(output_dir, also_clear)
            if removed:
                logger.warning("--overwrite: deleted %s in %s", ", ".join(removed), output_dir)
        trainer.accelerator.wait_for_everyone()  # no rank looks for checkpoints while they are deleted
        checkpoint = None
    elif resume:
        checkpoint = last_complete_checkpoint(output_dir, logger)
        if checkpoint is None:
            logger.info("--resume: no complete checkpoint in %s; starting fresh", output_dir)
    else:
        checkpoint = None
        earlier = [p.name for p in checkpoint_folders(output_dir)]
        if earlier:
            raise MetaAlignerError(f"{output_dir} holds checkpoints of an earlier run ({', '.join(earlier)}); pass "
                                   "--resume to continue it or --overwrite to start over")
    check_resume_settings(output_dir, checkpoint, fingerprint, write=main, logger=logger)
    return checkpoint


def fit(trainer, output_dir: str | Path, resume: bool, overwrite: bool, fingerprint: dict[str, Any], logger=None,
        also_clear: tuple[str, ...] = ()):
    """``prepare_resume`` then ``trainer.train`` from the checkpoint it picked: (the ``TrainOutput``, that
    checkpoint or None)."""
    checkpoint = prepare_resume(trainer, output_dir, resume, overwrite, fingerprint, logger, also_clear)
    return trainer.train(resume_from_checkpoint=checkpoint), checkpoint


def report(stage: str, rows: str, trainer, train_loss: float | None, started: float, output_dir: str,
           extra: str = "") -> None:
    """The main process prints the stage's ``summary_line`` (with this process's ``peak_memory``)."""
    if trainer.is_world_process_zero():
        print(summary_line(stage, rows, trainer, train_loss, started, output_dir, peak_memory(), extra), flush=True)


def free_device_memory() -> None:
    """Hand cached CUDA blocks back after a stage (a no-op on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
