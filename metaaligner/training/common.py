"""Pieces every trainer shares: precision by device and a JSONL log of loss, tokens/s and device hours."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
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
