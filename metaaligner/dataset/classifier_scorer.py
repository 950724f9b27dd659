"""The ``pair`` and ``response`` scorer kinds of stage 1: a released sequence classifier (the
single logit, or the logit of one label) on the (prompt, response) text pair or the response alone."""
from __future__ import annotations

from metaaligner.dataset.scoring import PAIR, RewardSpec, Scorer, pad_right
from metaaligner.errors import MetaAlignerError


class ClassifierScorer(Scorer):
    """A sequence classifier: ``pair`` kind on (prompt, response) as a text pair, ``response`` kind on
    the response alone; inputs truncated to ``max_length``; right padding (absolute positions stay 0..n)."""

    def __init__(self, spec: RewardSpec, model, tokenizer, device, max_length: int):
        self.name, self.kind, self.model_name, self.label = spec.name, spec.kind, str(spec.model), spec.label
        self.model, self.tokenizer, self.device, self.max_length = model, tokenizer, device, max_length
        n_labels = int(getattr(model.config, "num_labels", 1))
        if self.label is None and n_labels != 1:
            raise MetaAlignerError(f"{spec.model}: reward {spec.name!r} expects one logit but the model has "
                                   f"{n_labels} labels; use name=response:PATH for a 2-label classifier")
        if self.label is not None and self.label >= n_labels:
            raise MetaAlignerError(f"{spec.model}: reward {spec.name!r} reads label {self.label} but the model "
                                   f"has {n_labels} labels")

    def encode(self, prompt: str, response: str) -> list[int]:
        if self.kind == PAIR:
            enc = self.tokenizer(prompt, response, truncation=True, max_length=self.max_length)
        else:
            enc = self.tokenizer(response, truncation=True, max_length=self.max_length)
        return list(enc["input_ids"])

    def score_batch(self, batch: list[list[int]]) -> list[float]:
        import torch

        input_ids, mask = pad_right(batch, self.tokenizer.pad_token_id, self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
        column = logits[:, 0 if self.label is None else self.label]
        return column.cpu().tolist()


def load_classifier(path: str, device: str, dtype: str | None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metaaligner.models import pick_dtype, quiet_transformers

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=pick_dtype(device, dtype))
    except OSError as exc:
        raise MetaAlignerError(f"cannot load reward model {path!r}: {str(exc).splitlines()[0]}") from None
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    return model, tokenizer
