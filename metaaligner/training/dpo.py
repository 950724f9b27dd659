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

    def to_trl(self, output_dir: str, device: str | None = None, has_eval: bool = False):
        """The equivalent ``trl.DPOConfig``, with precision chosen by device (float32 on CPU)."""
        from trl import DPOConfig

        return DPOConfig(**self.training_kwargs(DPOConfig, output_dir, device, has_eval, loss_type=["sigmoid"]))


def train_dpo(model_name_or_path: str, train_pairs: list[dict[str, Any]], eval_pairs: list[dict[str, Any]] | None,
              output_dir: str | Path, config: Any, stage: str, log_path: str | Path,
              ref_model_path: str | None = None, lora: bool = False, resume: bool = False) -> str:
    """DPO-train ``model_name_or_path`` on ``{"prompt","chosen","rejected"}`` pairs; return ``output_dir``.

    ``config`` is a ``DPOTrainConfig`` or a ``trl.DPOConfig``. The reference is ``ref_model_path``
    when given, else the starting model itself (reloaded by TRL from its path, or the LoRA base with
    the adapter disabled). With ``lora`` the folder holds a PEFT adapter (``load_causal_lm`` merges it
    on load). ``resume`` continues from the last checkpoint in ``output_dir`` if there is one.
    Logs go to ``log_path`` as JSON lines tagged with ``stage``.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from transformers.trainer_utils import get_last_checkpoint
    from trl import DPOConfig, DPOTrainer

    from metaaligner.models import load_tokenizer, pick_device, pick_dtype, resolve_model_path
    from metaaligner.training.common import make_jsonl_callback, precision_kwargs

    output_dir = str(output_dir)
    model_path = resolve_model_path(model_name_or_path)
    train = check_pairs(train_pairs, "train")
    if not train:
        raise MetaAlignerError("train_dpo: no training pairs")
    evals = check_pairs(eval_pairs or [], "eval")
    device = pick_device(None)

    if isinstance(config, DPOConfig):
        args = config
        args.output_dir = output_dir
        for key, value in precision_kwargs(device).items():
            setattr(args, key, value)
        lora_cfg = DPOTrainConfig().lora_config() if lora else None
    elif isinstance(config, DPOTrainConfig):
        args = config.to_trl(output_dir, device=device, has_eval=bool(evals))
        lora_cfg = config.lora_config() if lora else None
    else:
        raise MetaAlignerError(f"train_dpo: config must be DPOTrainConfig or trl.DPOConfig, "
                               f"got {type(config).__name__}")

    tokenizer = load_tokenizer(model_path, padding_side="left")
    ref_model = None
    if ref_model_path is not None and resolve_model_path(ref_model_path) != model_path:
        ref_path = resolve_model_path(ref_model_path)
        try:
            ref_model = AutoModelForCausalLM.from_pretrained(ref_path, dtype=pick_dtype(device))
        except OSError as exc:
            raise MetaAlignerError(f"cannot load reference model {ref_path!r}: {str(exc).splitlines()[0]}") from None

    trainer = DPOTrainer(
        model=model_path,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(evals) if evals else None,
        processing_class=tokenizer,
        peft_config=lora_cfg,
        callbacks=[make_jsonl_callback(log_path, stage)],
    )
    checkpoint = None
    if resume and Path(output_dir).is_dir():
        checkpoint = get_last_checkpoint(output_dir)
        log.info("resuming %s from %s", stage, checkpoint or "scratch (no checkpoint found)")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return output_dir
