"""Win rates, ratings and bootstrap intervals over per-row verdicts.

Pairwise, over N judged rows (W wins, T ties, L losses, I invalid; W + T + L + I = N):
    win                 W / N
    win_half_tie        (W + T/2) / N            our headline metric (invalid rows stay in N)
    win_plus_tie        (W + T) / (W + T + L)    the released *_GPT4_score.py: ties count as wins; with the
                                                 released parser every reply is W, T or L (I = 0), with a
                                                 strict parser invalid rows leave the denominator
    paper               alias of win_plus_tie
A metric that leaves invalid rows out scores them NaN per row; means, bootstraps and Table 2's
differences then use only the rows that count (``rate``).
Table 2's cell is metric(aligned) - metric(original) over the same rows; its 95% interval is a paired
percentile bootstrap: resample row indices with replacement, recompute the mean per-row difference.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from metaaligner.judge.positions import INVALID, LOSS, TIE, WIN

NAN = float("nan")
METRICS = {
    "win": {WIN: 1.0, TIE: 0.0, LOSS: 0.0, INVALID: 0.0},
    "win_half_tie": {WIN: 1.0, TIE: 0.5, LOSS: 0.0, INVALID: 0.0},
    "win_plus_tie": {WIN: 1.0, TIE: 1.0, LOSS: 0.0, INVALID: NAN},
}
METRICS["paper"] = METRICS["win_plus_tie"]
METRIC_LABELS = {
    "win": "win rate W/N",
    "win_half_tie": "(W + T/2)/N",
    "win_plus_tie": "(W + T)/(W + T + L), the paper's metric (ties counted as wins)",
}
METRIC_LABELS["paper"] = METRIC_LABELS["win_plus_tie"]
METRIC_SHORT = {"win": "W/N", "win_half_tie": "(W+T/2)/N", "win_plus_tie": "(W+T)/(W+T+L)", "paper": "(W+T)/(W+T+L)"}


def rate(scores: Sequence[float] | np.ndarray) -> float:
    """Mean of the per-row scores that count (NaN rows left out); NaN when none counts."""
    x = np.asarray(scores, dtype=float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else NAN


def verdict_scores(verdicts: Iterable[str], metric: str) -> np.ndarray:
    table = METRICS[metric]
    return np.array([table.get(v, 0.0) for v in verdicts], dtype=float)


def summarize_pairwise(verdicts: Sequence[str]) -> dict:
    n = len(verdicts)
    counts = {v: sum(1 for x in verdicts if x == v) for v in (WIN, TIE, LOSS, INVALID)}
    out = {"n": n, "wins": counts[WIN], "ties": counts[TIE], "losses": counts[LOSS], "invalid": counts[INVALID]}
    for metric in METRICS:
        value = rate(verdict_scores(verdicts, metric)) if n else NAN
        out[metric] = None if np.isnan(value) else value
    out["tie_rate"] = counts[TIE] / n if n else None
    out["invalid_rate"] = counts[INVALID] / n if n else None
    return out


def summarize_ratings(scores: Sequence[int | None]) -> dict:
    valid = [s for s in scores if s is not None]
    return {"n": len(scores), "valid": len(valid), "invalid": len(scores) - len(valid),
            "mean": float(np.mean(valid)) if valid else None}


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    if not np.isnan(x).any():
        means = x[idx].mean(axis=1)
        return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))
    means = _nanmeans(x[idx])
    if np.isnan(means).all():
        return (NAN, NAN)
    return float(np.nanquantile(means, alpha / 2)), float(np.nanquantile(means, 1 - alpha / 2))


def _nanmeans(samples: np.ndarray) -> np.ndarray:
    """Row means over the non-NaN entries (NaN for a row with none), without numpy's warning."""
    counts = (~np.isnan(samples)).sum(axis=1)
    sums = np.nansum(samples, axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), NAN)


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0,
                          alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean(a - b), low, high): rows are resampled together, so both arms see the same rows."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs equal lengths, got {a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        return _paired_ratio_diff(a, b, n_boot, seed, alpha)
    diff = a - b
    low, high = bootstrap_ci(diff, n_boot=n_boot, seed=seed, alpha=alpha)
    return float(diff.mean()) if diff.size else float("nan"), low, high


def _paired_ratio_diff(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int,
                       alpha: float) -> tuple[float, float, float]:
    """rate(a) - rate(b) when rows may not count (NaN): each arm's own denominator, rows resampled
    together (the same indices as ``bootstrap_ci``)."""
    if a.size == 0:
        return (NAN, NAN, NAN)
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_boot, a.size))
    diffs = _nanmeans(a[idx]) - _nanmeans(b[idx])
    point = rate(a) - rate(b)
    if np.isnan(diffs).all():
        return point, NAN, NAN
    return point, float(np.nanquantile(diffs, alpha / 2)), float(np.nanquantile(diffs, 1 - alpha / 2))


def position_consistency(first: Sequence[str], swapped: Sequence[str]) -> float | None:
    """Share of pairs (both orders valid) whose two verdicts agree."""
    pairs = [(f, s) for f, s in zip(first, swapped) if INVALID not in (f, s)]
    if not pairs:
        return None
    return sum(1 for f, s in pairs if f == s) / len(pairs)
