"""What every stage-1 scorer shares: the scorer kinds, ``RewardSpec`` (one reward column and how
to score it), the ``Scorer`` contract (encode a (prompt, response), score padded batches), right
padding and ``score_sequences`` (batched, length-sorted, in input order). The kinds live one per
module: ``classifier_scorer``, ``llm_scorer``, ``rule_scorer``; ``rewards`` holds the registry that
picks them and the labelling."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from metaaligner.distributed import length_sorted_batches

PAIR, RESPONSE, LLM, RULE = "pair", "response", "llm", "rule"
KINDS = (PAIR, RESPONSE, LLM, RULE)


@dataclass(frozen=True)
class RewardSpec:
    """One reward column: how to score it. ``model`` is a hub name or local path (``None`` = the
    embedded model, LLM scorer only); ``description`` is the objective text the LLM scorer asks about."""
    name: str
    kind: str
    model: str | None
    label: int | None = None
    description: str | None = None


class Scorer:
    """Encodes a (prompt, response) into token ids and scores padded batches of them."""
    name: str
    kind: str
    model_name: str
    max_length: int
    tokenizer: Any

    def encode(self, prompt: str, response: str) -> list[int]:
        raise NotImplementedError

    def score_batch(self, batch: list[list[int]]) -> list[float]:
        raise NotImplementedError

    def transcript_length(self, prompt: str, response: str) -> int:
        """Tokens of the pair's transcript (prompt + response), the length the filter checks (as released)."""
        return len(self.tokenizer(transcript(prompt, response), add_special_tokens=True)["input_ids"])


def transcript(prompt: str, response: str) -> str:
    return f"{prompt} {response}" if prompt else response


def pad_right(batch: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, :len(ids)] = 1
    return input_ids.to(device), mask.to(device)


def score_sequences(scorer: Scorer, sequences: list[list[int]], batch_size: int,
                    on_batch: Callable[[int], None] | None = None) -> list[float]:
    """Scores in input order; batches of ``batch_size`` sequences after sorting by length (longest
    first, so an out-of-memory error shows up at once), each padded to its own longest."""
    out: list[float] = [math.nan] * len(sequences)
    for idx in length_sorted_batches([len(s) for s in sequences], batch_size):
        for i, score in zip(idx, scorer.score_batch([sequences[i] for i in idx])):
            out[i] = float(score)
        if on_batch:
            on_batch(len(idx))
    return out
