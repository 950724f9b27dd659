"""SePO's selective, reference-free contrastive objective on transformers' ``Trainer``.

For a pair (x, y_w, y_l) with selected key-token positions S_w (top-k of the chosen response by
oracle reward) and S_l (bottom-k of the rejected response):

    m_w  = (1 / |S_w|) * sum_{t in S_w} log pi_theta(y_w,t | x, y_w,<t)
    m_l  = (1 / |S_l|) * sum_{t in S_l} log pi_theta(y_l,t | x, y_l,<t)
    loss = -log sigmoid(gamma * (m_w - m_l))

No reference model. ``gamma`` (default 1.0 = the published form) scales the margin of mean token
log-probs, like SimPO's beta: mean log-prob differences are O(0.1-1), so sigmoid stays near 0.5 and
the gradient is nearly constant at gamma = 1; raise gamma (SimPO uses 2-2.5) for a sharper loss.

The trainer composes the library machinery: ``SePOTrainer`` subclasses ``transformers.Trainer`` (only
``compute_loss``, ``prediction_step`` and ``log`` are overridden) and ``DataCollatorForSelectivePreference``
extends TRL's ``DataCollatorForPreference`` with a ``selection_mask``.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaaligner.cli import check
from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.training.common import PreferenceTrainConfigBase

log = logging.getLogger(__name__)


def sepo_loss(chosen_mean_logps, rejected_mean_logps, gamma: float = 1.0):
    """Per-pair SePO loss and margin.

    loss = -log sigmoid(gamma * (mean_{t in S_w} log pi_theta(y_w,t) - mean_{t in S_l} log pi_theta(y_l,t)))

    Inputs are the mean log-probs over the selected tokens, shape (batch,). Returns (loss, margin),
    both shape (batch,), where margin = chosen_mean_logps - rejected_mean_logps.
    """
    import torch.nn.functional as F

    margin = chosen_mean_logps - rejected_mean_logps
    return -F.logsigmoid(gamma * margin), margin


def masked_mean_logps(per_token_logps, mask):
    """Mean of ``per_token_logps`` over ``mask == 1`` per row (rows with an empty mask give 0)."""
    mask = mask.to(per_token_logps.dtype)
    return (per_token_logps * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


@dataclass
class SePOTrainConfig(PreferenceTrainConfigBase):
    """Training settings of the SePO policy stage (defaults: the paper's lr 5e-7, 1 epoch; the shared
    fields are documented in ``TrainerConfigBase``)."""

    gamma: float = field(default=1.0, metadata={**check(gt=0.0),
                                                "help": "Scale of the selected-token margin inside the sigmoid "
                                                         "(1.0 = the published loss)"})

    def to_training_args(self, output_dir: str, device: str | None = None, has_eval: bool = False,
                         lora: bool = False):
        """``transformers.TrainingArguments`` with precision by device (float32 on CPU)."""
        from transformers import TrainingArguments

        return TrainingArguments(**self.training_kwargs(TrainingArguments, output_dir, device, has_eval, lora=lora,
                                                        remove_unused_columns=False))


def _collator_base():
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return DataCollatorForPreference


def make_collator(pad_token_id: int, max_length: int | None = None, pad_to_multiple_of: int | None = None):
    """TRL's preference collator plus ``selection_mask``: 1 at the absolute position of every
    selected response token, truncated and right-padded exactly like ``input_ids``.

    Examples need ``prompt_ids``, ``chosen_ids``, ``rejected_ids``, ``chosen_selected``,
    ``rejected_selected`` (0-based positions within the response). Rows of the batch: chosen first,
    then rejected (as TRL)."""
    import torch
    from trl.trainer.utils import pad

    base = _collator_base()

    @dataclass
    class DataCollatorForSelectivePreference(base):
        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            out = super().torch_call(examples)
            masks = []
            for side in ("chosen", "rejected"):
                for ex in examples:
                    n_prompt, n_resp = len(ex["prompt_ids"]), len(ex[f"{side}_ids"])
                    mask = [0] * (n_prompt + n_resp)
                    for j in ex[f"{side}_selected"]:
                        if 0 <= j < n_resp:
                            mask[n_prompt + j] = 1
                    if self.max_length is not None:
                        mask = mask[:self.max_length]
                    masks.append(torch.tensor(mask, dtype=torch.long))
            out["selection_mask"] = pad(masks, padding_value=0, padding_side="right",
                                        pad_to_multiple_of=self.pad_to_multiple_of)
            return out

    return DataCollatorForSelectivePreference(pad_token_id=pad_token_id, max_length=max_length,
                                              pad_to_multiple_of=pad_to_multiple_of)


def _trainer_class():
    import torch
    from transformers import Trainer
    from trl.trainer.utils import selective_log_softmax

    class SePOTrainer(Trainer):
        """``Trainer`` whose loss is ``sepo_loss`` on the selected tokens (no reference model)."""

        def __init__(self, *args, gamma: float = 1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.gamma = gamma
            self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

        def selected_mean_logps(self, model, inputs):
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            # shift: the logit at position t-1 predicts the token at t
            logps = selective_log_softmax(outputs.logits[:, :-1].float(), inputs["input_ids"][:, 1:])
            mask = inputs["selection_mask"][:, 1:]
            return masked_mean_logps(logps, mask).chunk(2, dim=0), mask

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            (chosen, rejected), mask = self.selected_mean_logps(model, inputs)
            per_pair, margin = sepo_loss(chosen, rejected, self.gamma)
            loss = per_pair.mean()
            mode = "train" if model.training else "eval"
            gather = self.accelerator.gather_for_metrics
            metrics = self._metrics[mode]
            metrics["margin"].append(gather(margin.detach()).mean().item())
            metrics["accuracy"].append(gather((margin.detach() > 0).float()).mean().item())
            metrics["logps/chosen_selected"].append(gather(chosen.detach()).mean().item())
            metrics["logps/rejected_selected"].append(gather(rejected.detach()).mean().item())
            metrics["selected_tokens"].append(gather(mask.sum().detach().float().reshape(1)).sum().item())
            return (loss, {"margin": margin}) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            mode = "train" if self.model.training else "eval"
            averaged = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
            if mode == "eval":
                averaged = {f"eval_{k}": v for k, v in averaged.items()}
            logs.update(averaged)
            super().log(logs, start_time)
            self._metrics[mode].clear()

    return SePOTrainer


def build_trainer(model, tokenizer, train_rows: list[dict[str, Any]], config: SePOTrainConfig, output_dir: str,
                  eval_rows: list[dict[str, Any]] | None = None, callbacks: list | None = None, lora: bool = False):
    """A ``SePOTrainer`` over pre-tokenised rows (``prompt_ids``, ``chosen_ids``, ``rejected_ids``,
    ``chosen_selected``, ``rejected_selected``); ``lora``: the model carries trainable adapters."""
    from datasets import Dataset

    from metaaligner.models import pick_device

    keys = ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_selected", "rejected_selected")
    train = Dataset.from_list([{k: r[k] for k in keys} for r in train_rows])
    evals = Dataset.from_list([{k: r[k] for k in keys} for r in eval_rows]) if eval_rows else None
    args = config.to_training_args(output_dir, device=pick_device(None), has_eval=evals is not None, lora=lora)
    collator = make_collator(tokenizer.pad_token_id, max_length=config.max_length)
    return _trainer_class()(model=model, args=args, train_dataset=train, eval_dataset=evals, data_collator=collator,
                            processing_class=tokenizer, callbacks=callbacks or [], gamma=config.gamma)


def tokenize_selection(rows: list[dict[str, Any]], tokenizer, max_length: int | None, add_eos: bool = True,
                       source: str = "selection") -> list[dict[str, Any]]:
    """Selection rows -> trainer rows, checking that the policy's tokenisation has exactly one token
    per stored reward (else the positions would point at other tokens)."""
    from metaaligner.methods.sepo import tokenize_pair, truncate_response

    out = []
    for i, row in enumerate(rows, start=1):
        prompt_ids, chosen_ids, rejected_ids = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"],
                                                             add_eos=add_eos)
        for side, ids in (("chosen", chosen_ids), ("rejected", rejected_ids)):
            n_rewards = len(row[f"{side}_token_rewards"])
            if max_length is not None:
                ids = truncate_response(len(prompt_ids), ids, max_length)
            if len(ids) != n_rewards:
                raise DataError(source, f"the policy tokenises this {side} response into {len(ids)} tokens but the "
                                        f"selection file has {n_rewards} rewards; the policy must share the oracle's "
                                        "tokenizer and max_length", row=row.get("row_id", i - 1) + 1,
                                column=f"{side}_token_rewards")
        out.append({"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
                    "chosen_selected": list(row["chosen_selected"]),
                    "rejected_selected": list(row["rejected_selected"])})
    return out


def surviving_selection(n_prompt: int, selected: list[int], max_length: int | None) -> list[int]:
    """The selected response positions the trainer still sees: the collator keeps the first
    ``max_length`` tokens of prompt + response, and position 0 is never predicted (the shift)."""
    limit = float("inf") if max_length is None else max_length
    return [j for j in selected if 1 <= n_prompt + j < limit]


def drop_lost_selections(rows: list[dict[str, Any]], max_length: int | None) -> tuple[list[dict[str, Any]], int]:
    """Trainer rows minus those where a side keeps no selected token within ``max_length`` (its
    mean log-prob would silently be 0, see ``masked_mean_logps``), and how many were dropped."""
    kept = [r for r in rows if all(surviving_selection(len(r["prompt_ids"]), r[f"{side}_selected"], max_length)
                                   for side in ("chosen", "rejected"))]
    return kept, len(rows) - len(kept)


def _drop_and_report(rows: list[dict[str, Any]], max_length: int | None, score_max_length: int | None,
                     source: str) -> list[dict[str, Any]]:
    kept, lost = drop_lost_selections(rows, max_length)
    if lost:
        print(f"train_policy: skipped {lost} of {len(rows)} pairs of {source}: a side keeps no selected token "
              f"within --max_length {max_length} (tokens were selected with max_length {score_max_length})")
    if not kept:
        raise MetaAlignerError(f"{source}: no pair keeps selected tokens on both sides within --max_length "
                               f"{max_length}; raise it to the selection's max_length ({score_max_length})")
    return kept


def _training_rows(tokenizer, model_path: str, selection_path: str | Path, config: SePOTrainConfig,
                   ratio: float | None, eval_selection_path: str | Path | None, limit: int | None):
    """(train rows, eval rows or None) for ``build_trainer``: the selection read (re-selected at
    ``ratio``), checked against the policy's tokenizer, tokenised, pairs without selected tokens
    within ``max_length`` dropped."""
    from metaaligner.methods.sepo import read_selection, tokenizer_fingerprint

    rows, meta, reselected = read_selection(selection_path, ratio)
    if reselected is not None:
        print(f"train_policy: re-selected at ratio {ratio}: {reselected.summary()}")
    rows = rows[:limit] if limit else rows
    if not rows:
        raise MetaAlignerError(f"{selection_path}: no pairs with selected tokens to train on")
    fingerprint = meta.get("tokenizer_fingerprint")
    if fingerprint and fingerprint != tokenizer_fingerprint(tokenizer):
        raise MetaAlignerError(
            f"tokenizer mismatch: the policy {model_path} does not share the tokenizer the tokens were selected "
            f"with (oracle {meta.get('oracle')}); SePO positions are token positions, use a policy of the same family")
    score_max_length = meta.get("max_length", config.max_length)
    add_eos = meta.get("add_eos", True)
    train_rows = tokenize_selection(rows, tokenizer, score_max_length, add_eos, str(selection_path))
    train_rows = _drop_and_report(train_rows, config.max_length, score_max_length, str(selection_path))
    if not eval_selection_path:
        return train_rows, None
    eval_sel, eval_meta, _ = read_selection(eval_selection_path, ratio)
    eval_rows = tokenize_selection(eval_sel, tokenizer, eval_meta.get("max_length", score_max_length),
                                   eval_meta.get("add_eos", add_eos), str(eval_selection_path))
    return train_rows, _drop_and_report(eval_rows, config.max_length, eval_meta.get("max_length", score_max_length),
                                        str(eval_selection_path))


def train_sepo(model_name_or_path: str, selection_path: str | Path, output_dir: str | Path, config: SePOTrainConfig,
               log_path: str | Path, ratio: float | None = None, eval_selection_path: str | Path | None = None,
               lora: bool = False, resume: bool = False, stage: str = "sepo", limit: int | None = None,
               overwrite: bool = False) -> str:
    """Train a policy with SePO on a ``select_tokens.py`` output; return ``output_dir``.

    ``ratio`` re-selects tokens from the stored rewards (no re-scoring); otherwise the stored
    selection is used. The policy must share the oracle's tokenizer (checked against the file's meta).
    ``resume`` / ``overwrite``: ``metaaligner.training.common.prepare_resume`` (the training data
    compared is the tokenised pairs with their selected positions, so another ``ratio`` is a change).
    """
    import time

    import torch
    from transformers import AutoModelForCausalLM

    from metaaligner.models import load_tokenizer, resolve_model_path
    from metaaligner.training.common import fit, make_jsonl_callback, report, reset_peak_memory, training_fingerprint

    started = time.time()
    reset_peak_memory()
    output_dir = str(output_dir)
    model_path = resolve_model_path(model_name_or_path)
    tokenizer = load_tokenizer(model_path, padding_side="right")
    train_rows, eval_rows = _training_rows(tokenizer, model_path, selection_path, config, ratio,
                                           eval_selection_path, limit)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    except OSError as exc:
        raise MetaAlignerError(f"cannot load model {model_path!r}: {str(exc).splitlines()[0]}") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    if lora:
        from peft import get_peft_model

        model = get_peft_model(model, config.lora_config())
    trainer = build_trainer(model, tokenizer, train_rows, config, output_dir, eval_rows,
                            callbacks=[make_jsonl_callback(log_path, stage)], lora=lora)
    fingerprint = training_fingerprint(trainer.args, model_name_or_path, train_rows, gamma=config.gamma, lora=lora,
                                       max_length=config.max_length)
    result, _ = fit(trainer, output_dir, resume, overwrite, fingerprint, log)
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
    report(stage, f"{len(train_rows)} pairs", trainer, result.training_loss, started, output_dir)
    return output_dir
