"""A reusable DPO building block on TRL's ``DPOTrainer`` (SePO's oracle, the CDPO baseline).

    loss = -log sigmoid(beta * [(log pi_theta(y_w|x) - log pi_ref(y_w|x)) - (log pi_theta(y_l|x) - log pi_ref(y_l|x))])

(Rafailov et al. 2023; computed by TRL, ``loss_type="sigmoid"``.)

trl 1.16 needs the reference model either as a path (the policy's own path when ``ref_model_path`` is
None: TRL reloads it), an explicit ``ref_model`` (``ref_model_path`` given), or a LoRA ``peft_config``
(the reference is the base with the adapter disabled). An in-memory model alone fails because TRL
reloads the reference from ``model.config._name_or_path``; so this function always takes a path.

Usage::

    from metaaligner.training.dpo import DPOTrainConfig, train_dpo
    out = train_dpo("path/to/sft", train_pairs, eval_pairs, "runs/dpo", DPOTrainConfig(max_steps=10),
                    stage="dpo", log_path="runs/dpo/train_log.jsonl")
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaaligner.cli import check
from metaaligner.errors import MetaAlignerError
from metaaligner.training.common import PreferenceTrainConfigBase, check_pairs

log = logging.getLogger(__name__)


@dataclass
class DPOTrainConfig(PreferenceTrainConfigBase):
    """Training settings of a DPO stage (the shared fields are documented in ``TrainerConfigBase``).

    ``to_trl`` turns it into a ``trl.DPOConfig``; a ``trl.DPOConfig`` may also be passed to
    ``train_dpo`` directly (its precision is still set by device)."""

    beta: float = field(default=0.1, metadata={**check(gt=0.0),
                                               "help": "DPO beta: strength of the pull towards the reference model"})

    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1 (the released CDPO run: 0.9)"})
    adam_beta2: float = field(default=0.999, metadata={
        "help": "Adam beta2 (transformers' default 0.999; the released CDPO run: 0.95, OpenRLHF's optimizer betas)"})

    def to_trl(self, output_dir: str, device: str | None = None, has_eval: bool = False, lora: bool = False):
        """The equivalent ``trl.DPOConfig``, with precision chosen by device (float32 on CPU)."""
        from trl import DPOConfig

        return DPOConfig(**self.training_kwargs(DPOConfig, output_dir, device, has_eval, lora=lora,
                                                loss_type=["sigmoid"]))


def _dpo_args(config: Any, output_dir: str, device: str, has_eval: bool, lora: bool):
    """(``trl.DPOConfig``, LoRA config or None) from a ``DPOTrainConfig`` or a ``trl.DPOConfig``."""
    from trl import DPOConfig

    from metaaligner.training.common import precision_kwargs

    if isinstance(config, DPOConfig):
        args = config
        args.output_dir = output_dir
        for key, value in precision_kwargs(device).items():
            setattr(args, key, value)
        if lora:
            args.ddp_find_unused_parameters = False
        return args, DPOTrainConfig().lora_config() if lora else None
    if isinstance(config, DPOTrainConfig):
        return config.to_trl(output_dir, device=device, has_eval=has_eval, lora=lora), \
            config.lora_config() if lora else None
    raise MetaAlignerError(f"train_dpo: config must be DPOTrainConfig or trl.DPOConfig, got {type(config).__name__}")


def _load_reference(ref_model_path: str | None, model_path: str, device: str):
    """An explicit reference model, or None when it is the starting model itself (TRL reloads it)."""
    from transformers import AutoModelForCausalLM

    from metaaligner.models import pick_dtype, resolve_model_path

    if ref_model_path is None or resolve_model_path(ref_model_path) == model_path:
        return None
    ref_path = resolve_model_path(ref_model_path)
    try:
        return AutoModelForCausalLM.from_pretrained(ref_path, dtype=pick_dtype(device))
    except OSError as exc:
        raise MetaAlignerError(f"cannot load reference model {ref_path!r}: {str(exc).splitlines()[0]}") from None


def train_dpo(model_name_or_path: str, train_pairs: list[dict[str, Any]], eval_pairs: list[dict[str, Any]] | None,
              output_dir: str | Path, config: Any, stage: str, log_path: str | Path,
              ref_model_path: str | None = None, lora: bool = False, resume: bool = False,
              overwrite: bool = False) -> str:
    """DPO-train ``model_name_or_path`` on ``{"prompt","chosen","rejected"}`` pairs; return ``output_dir``.

    ``config`` is a ``DPOTrainConfig`` or a ``trl.DPOConfig``. The reference is ``ref_model_path``
    when given, else the starting model itself (reloaded by TRL from its path, or the LoRA base with
    the adapter disabled). With ``lora`` the folder holds a PEFT adapter (``load_causal_lm`` merges it
    on load). ``resume`` continues from the last complete checkpoint in ``output_dir``, refused when
    the settings differ; ``overwrite`` starts over (``metaaligner.training.common.prepare_resume``).
    Logs go to ``log_path`` as JSON lines tagged with ``stage``.
    """
    import time

    from datasets import Dataset
    from trl import DPOTrainer

    from metaaligner.models import load_tokenizer, pick_device, resolve_model_path
    from metaaligner.training import common

    started = time.time()
    common.reset_peak_memory()
    output_dir = str(output_dir)
    model_path = resolve_model_path(model_name_or_path)
    train = check_pairs(train_pairs, "train")
    if not train:
        raise MetaAlignerError("train_dpo: no training pairs")
    evals = check_pairs(eval_pairs or [], "eval")
    device = pick_device(None)
    args, lora_cfg = _dpo_args(config, output_dir, device, bool(evals), lora)
    tokenizer = load_tokenizer(model_path, padding_side="left")
    trainer = DPOTrainer(model=model_path, ref_model=_load_reference(ref_model_path, model_path, device), args=args,
                         train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(evals) if evals else None, processing_class=tokenizer,
                         peft_config=lora_cfg, callbacks=[common.make_jsonl_callback(log_path, stage)])
    fingerprint = common.training_fingerprint(args, model_name_or_path, train, reference=ref_model_path,
                                              beta=args.beta, lora=lora, max_length=args.max_length)
    result, _ = common.fit(trainer, output_dir, resume, overwrite, fingerprint, log)
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
    common.report(stage, f"{len(train)} pairs", trainer, result.training_loss, started, output_dir)
    del trainer
    common.free_device_memory()
    return output_dir
