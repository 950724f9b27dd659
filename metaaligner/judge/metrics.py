"""Win rates, ratings and bootstrap intervals over per-row verdicts.

Pairwise, over N judged rows (invalid rows stay in N and never count as wins or ties):
    win rate            W / N
    tie rate            T / N
    win_half_tie        (W + T/2) / N      our headline metric
    paper               (W + T) / N        what the released code printed (ties counted as wins)
Table 2's cell is metric(aligned) - metric(original) over the same rows; its 95% interval is a paired
percentile bootstrap: resample row indices with replacement, recompute the mean per-row difference.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from metaaligner.judge.positions import INVALID, LOSS, TIE, WIN

METRICS = {
    "win": {WIN: 1.0, TIE: 0.0, LOSS: 0.0, INVALID: 0.0},
    "win_half_tie": {WIN: 1.0, TIE: 0.5, LOSS: 0.0, INVALID: 0.0},
    "paper": {WIN: 1.0, TIE: 1.0, LOSS: 0.0, INVALID: 0.0},
}
METRIC_LABELS = {
    "win": "win rate W/N",
    "win_half_tie": "(W + T/2)/N",
    "paper": "(W + T)/N, the paper's metric (ties counted as wins)",
}


def verdict_scores(verdicts: Iterable[str], metric: str) -> np.ndarray:
    table = METRICS[metric]
    return np.array([table.get(v, 0.0) for v in verdicts], dtype=float)


def summarize_pairwise(verdicts: Sequence[str]) -> dict:
    n = len(verdicts)
    counts = {v: sum(1 for x in verdicts if x == v) for v in (WIN, TIE, LOSS, INVALID)}
    out = {"n": n, "wins": counts[WIN], "ties": counts[TIE], "losses": counts[LOSS], "invalid": counts[INVALID]}
    for metric in METRICS:
        out[metric] = float(verdict_scores(verdicts, metric).mean()) if n else None
    out["tie_rate"] = counts[TIE] / n if n else None
    out["invalid_rate"] = counts[INVALID] / n if n else None
    return out


def summarize_ratings(scores: Sequence[int | None]) -> dict:
    valid = [s for s in scores if s is not None]
    return {"n": len(scores), "valid": len(valid), "invalid": len(scores) - len(valid),
            "mean": float(np.mean(valid)) if valid else None}


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0,
                          alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean(a - b), low, high): rows are resampled together, so both arms see the same rows."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs equal lengths, got {a.shape} and {b.shape}")
    diff = a - b
    low, high = bootstrap_ci(diff, n_boot=n_boot, seed=seed, alpha=alpha)
    return float(diff.mean()) if diff.size else float("nan"), low, high


def position_consistency(first: Sequence[str], swapped: Sequence[str]) -> float | None:
    """Share of pairs (both orders valid) whose two verdicts agree."""
    pairs = [(f, s) for f, s in zip(first, swapped) if INVALID not in (f, s)]
    if not pairs:
        return None
    return sum(1 for f, s in pairs if f == s) / len(pairs)
