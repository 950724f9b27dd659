"""MORLHF's reward arithmetic, shared by the baseline run (``methods.morlhf``) and its RL trainer
(``training.morlhf``): each reward model's score standardised on its training responses, then the
linear scalarisation  R(x, y) = sum_j w_j * r_j(x, y)."""
from __future__ import annotations

from typing import Sequence

from metaaligner.errors import MetaAlignerError


def standardise(value: float, mean: float, std: float) -> float:
    """(value - mean) / std: one reward model's score on the scale of its training responses."""
    return (value - mean) / std if std > 0 else value - mean


def scalarise(rewards: Sequence[float], weights: Sequence[float]) -> float:
    """Linear scalarisation R = sum_j w_j * r_j of one response's per-objective (normalised) rewards."""
    if len(rewards) != len(weights):
        raise MetaAlignerError(f"{len(rewards)} rewards but {len(weights)} weights")
    return float(sum(w * r for w, r in zip(weights, rewards)))
