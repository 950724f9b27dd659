"""The paper's baselines as pure functions over the stage-1 reward CSV (no models here).

Input rows come from ``rewards.csv``: ``prompt, chosen_response, rejected_response,
chosen_score{i}, rejected_score{i}`` with i = 1..n in the dataset config's objective order.

- SFT (Rewards-in-Context stage 1): every response becomes an item whose prompt carries its own
  rewards, ``<Harmlessness>: 0.50; <Helpfulness>: -1.20; <Humour>: 0.10 | {question}``.
- CDPO: the prompt carries the *target* rewards t; of the two responses the preferred one has the
  higher closeness  c(y) = -sum_j |t_j - s_j(y)|;  equal closeness (a tie) drops the pair.
- MORLHF: one reward model per objective, trained on pairs ordered by that objective's score (ties
  dropped); the policy reward is the linear scalarisation  R(x, y) = sum_j w_j * r_j(x, y).
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.registry.templates import reward_conditioned_prompt

TIE_TOLERANCE = 1e-9  # closeness / score differences at or below this are ties (float round-off)
TARGET_DECIMALS = 2  # targets are rounded to what the conditioning prompt shows


@dataclass(frozen=True)
class ScoredPair:
    """One row of ``rewards.csv``; ``row`` is the 1-based data row (header excluded)."""
    row: int
    prompt: str
    chosen: str
    rejected: str
    chosen_scores: tuple[float, ...]
    rejected_scores: tuple[float, ...]


@dataclass
class PairSet:
    pairs: list[ScoredPair]
    rows_in: int
    skipped: Counter = field(default_factory=Counter)


def score_columns(n_objectives: int) -> list[str]:
    return ([f"chosen_score{i}" for i in range(1, n_objectives + 1)]
            + [f"rejected_score{i}" for i in range(1, n_objectives + 1)])


def read_reward_pairs(path: str | Path, n_objectives: int) -> PairSet:
    """Read ``rewards.csv`` and check it holds exactly ``n_objectives`` score columns per side.

    Rows with an empty chosen or rejected response are skipped and counted (the released scripts
    dropped them too); a missing or non-finite score is a ``DataError`` naming row and column.
    """
    from metaaligner.io import read_table

    path = Path(path)
    rows = read_table(path, required=["prompt", "chosen_response", "rejected_response", *score_columns(n_objectives)],
                      numeric_columns=score_columns(n_objectives))
    extra = sorted(c for c in rows[0] if c.startswith(("chosen_score", "rejected_score"))
                   and c not in score_columns(n_objectives))
    if extra:
        raise DataError(path, f"has score columns {extra} beyond the dataset config's {n_objectives} objectives; "
                              "pass the config whose objectives match the file")
    out = PairSet(pairs=[], rows_in=len(rows))
    for i, row in enumerate(rows, start=1):
        if not row["chosen_response"].strip() or not row["rejected_response"].strip():
            out.skipped["empty response"] += 1
            continue
        if not row["prompt"].strip():
            out.skipped["empty prompt"] += 1
            continue
        out.pairs.append(ScoredPair(
            row=i, prompt=row["prompt"], chosen=row["chosen_response"], rejected=row["rejected_response"],
            chosen_scores=tuple(row[f"chosen_score{j}"] for j in range(1, n_objectives + 1)),
            rejected_scores=tuple(row[f"rejected_score{j}"] for j in range(1, n_objectives + 1))))
    return out


# ---------------------------------------------------------------- conditioning and targets

def conditioned_prompt(question: str, names: Sequence[str], rewards: Sequence[float]) -> str:
    """The RiC / SFT / CDPO conditioning prompt (the string itself lives in ``templates``)."""
    return reward_conditioned_prompt(question, list(names), list(rewards))


def default_targets(pairs: Sequence[ScoredPair], decimals: int = TARGET_DECIMALS) -> list[float]:
    """Per objective, the maximum normalised reward over every chosen and rejected response,
    rounded to ``decimals`` (the precision the conditioning prompt shows)."""
    if not pairs:
        raise MetaAlignerError("no scored pairs to compute target rewards from")
    n = len(pairs[0].chosen_scores)
    return [round(max(max(p.chosen_scores[j], p.rejected_scores[j]) for p in pairs), decimals) for j in range(n)]


def parse_target_rewards(spec: str | None, keys: Sequence[str], names: Sequence[str],
                         defaults: Sequence[float] | None = None) -> list[float]:
    """``"harmlessness=4.19,humour=1.5"`` -> one target per objective, in config order.

    Keys are objective keys or display names (case-insensitive). Objectives the spec leaves out keep
    their ``defaults``; with no defaults every objective must be given.
    """
    lookup = {}
    for j, (key, name) in enumerate(zip(keys, names)):
        lookup[key.lower()] = j
        lookup[name.lower()] = j
    targets: list[float | None] = list(defaults) if defaults is not None else [None] * len(keys)
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise MetaAlignerError(f"--target_rewards expects key=value pairs, got {part.strip()!r}")
        key, value = (s.strip() for s in part.split("=", 1))
        if key.lower() not in lookup:
            raise MetaAlignerError(f"--target_rewards: unknown objective {key!r}; objectives: {', '.join(keys)}")
        try:
            number = float(value)
        except ValueError:
            raise MetaAlignerError(f"--target_rewards: {key}={value!r} is not a number") from None
        if not math.isfinite(number):
            raise MetaAlignerError(f"--target_rewards: {key}={value!r} is not finite")
        targets[lookup[key.lower()]] = number
    missing = [k for k, t in zip(keys, targets) if t is None]
    if missing:
        raise MetaAlignerError(f"--target_rewards: no target for {', '.join(missing)}")
    return [float(t) for t in targets]


def format_targets(keys: Sequence[str], targets: Sequence[float]) -> str:
    return ",".join(f"{k}={t:.{TARGET_DECIMALS}f}" for k, t in zip(keys, targets))


# ---------------------------------------------------------------- SFT (RiC stage 1)

def sft_items(pairs: Iterable[ScoredPair], names: Sequence[str]) -> list[dict]:
    """Two items per pair, each response under a prompt that carries its own rewards.
    ``group`` (the source row) keeps both items of a pair in the same split."""
    items = []
    for p in pairs:
        for side, response, scores in (("chosen", p.chosen, p.chosen_scores), ("rejected", p.rejected, p.rejected_scores)):
            items.append({"id": f"{p.row}-{side}", "group": p.row,
                          "prompt": conditioned_prompt(p.prompt, names, scores), "completion": response})
    return items


# ---------------------------------------------------------------- CDPO

def closeness(scores: Sequence[float], targets: Sequence[float]) -> float:
    """c(y) = -sum_j |t_j - s_j(y)|: 0 when y hits every target, more negative the further away."""
    return -sum(abs(t - s) for t, s in zip(targets, scores))


def cdpo_order(chosen_scores: Sequence[float], rejected_scores: Sequence[float],
               targets: Sequence[float], tolerance: float = TIE_TOLERANCE) -> int:
    """+1: keep (chosen closer to the targets), -1: swap (rejected closer), 0: tie (drop)."""
    diff = closeness(chosen_scores, targets) - closeness(rejected_scores, targets)
    if abs(diff) <= tolerance:
        return 0
    return 1 if diff > 0 else -1


def cdpo_pairs(pairs: Iterable[ScoredPair], names: Sequence[str], targets: Sequence[float]) -> tuple[list[dict], dict]:
    """TRL preference rows ``{prompt, chosen, rejected}`` (+ ``group``) under the target-conditioned prompt."""
    rows, kept, swapped, ties = [], 0, 0, 0
    for p in pairs:
        order = cdpo_order(p.chosen_scores, p.rejected_scores, targets)
        if order == 0:
            ties += 1
            continue
        chosen, rejected = (p.chosen, p.rejected) if order > 0 else (p.rejected, p.chosen)
        kept += order > 0
        swapped += order < 0
        rows.append({"prompt": conditioned_prompt(p.prompt, names, targets), "chosen": chosen,
                     "rejected": rejected, "group": p.row})
    return rows, {"pairs_out": len(rows), "kept_order": kept, "swapped_order": swapped, "ties_dropped": ties}


# ---------------------------------------------------------------- MORLHF

def reward_model_pairs(pairs: Iterable[ScoredPair], objective_index: int,
                       tolerance: float = TIE_TOLERANCE) -> tuple[list[dict], dict]:
    """Pairs ordered by one objective's score for that objective's reward model; ties dropped."""
    rows, swapped, ties = [], 0, 0
    for p in pairs:
        c, r = p.chosen_scores[objective_index], p.rejected_scores[objective_index]
        if abs(c - r) <= tolerance:
            ties += 1
            continue
        better, worse = (p.chosen, p.rejected) if c > r else (p.rejected, p.chosen)
        swapped += c < r
        rows.append({"prompt": p.prompt, "chosen": better, "rejected": worse, "group": p.row})
    return rows, {"pairs_out": len(rows), "swapped_order": swapped, "ties_dropped": ties}


def uniform_weights(n: int) -> list[float]:
    return [1.0 / n] * n


def parse_weights(spec: str | Sequence[float] | None, n: int) -> list[float]:
    """``"0.5,0.3,0.2"`` (one per reward model, in order) or None for uniform 1/n weights."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return uniform_weights(n)
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        weights = [float(w) for w in parts]
    except ValueError:
        raise MetaAlignerError(f"--weights expects comma-separated numbers, got {spec!r}") from None
    if len(weights) != n:
        raise MetaAlignerError(f"--weights has {len(weights)} values for {n} reward models")
    if not all(math.isfinite(w) for w in weights):
        raise MetaAlignerError(f"--weights must be finite, got {spec!r}")
    return weights


def normalise(value: float, mean: float, std: float) -> float:
    return (value - mean) / std if std > 0 else value - mean


def scalarise(rewards: Sequence[float], weights: Sequence[float]) -> float:
    """Linear scalarisation R = sum_j w_j * r_j of one response's per-objective (normalised) rewards."""
    if len(rewards) != len(weights):
        raise MetaAlignerError(f"{len(rewards)} rewards but {len(weights)} weights")
    return float(sum(w * r for w, r in zip(weights, rewards)))


# ---------------------------------------------------------------- responses

NEXT_TURN_MARKERS = ("\nHuman:", "\nAssistant:")


def cut_at_next_turn(text: str) -> str:
    """Cut a sampled response where the model starts writing the next dialogue turn itself
    (``\n\nHuman: ...``), as the released MORLHF script cleaned responses before scoring."""
    cut = len(text)
    for marker in NEXT_TURN_MARKERS:
        pos = text.find(marker)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut].strip()


# ---------------------------------------------------------------- splits

def split_by_group(items: Sequence[dict], val_size: float, seed: int, group_key: str = "group") -> tuple[list[dict], list[dict]]:
    """Seeded train/val split by source pair: items of one pair never land in both splits.

    ``val_size`` < 1 is a fraction of the groups, >= 1 a number of groups. Item order inside each
    split follows a seeded shuffle of the groups.
    """
    groups: dict = {}
    for item in items:
        groups.setdefault(item[group_key], []).append(item)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    n_val = int(round(len(keys) * val_size)) if val_size < 1 else int(val_size)
    n_val = max(0, min(n_val, len(keys) - 1)) if keys else 0
    val = [it for k in keys[:n_val] for it in groups[k]]
    train = [it for k in keys[n_val:] for it in groups[k]]
    return train, val


def strip_keys(items: Iterable[dict], keep: Sequence[str]) -> list[dict]:
    return [{k: item[k] for k in keep} for item in items]


# ---------------------------------------------------------------- data steps (files in, files out)

@dataclass
class ObjectiveSpec:
    """The objectives of a dataset config, in score order."""
    keys: list[str]
    names: list[str]

    @classmethod
    def from_config(cls, config_name_or_path: str) -> "ObjectiveSpec":
        from metaaligner.registry.datasets import load_dataset_config

        config = load_dataset_config(config_name_or_path)
        return cls(keys=list(config.objectives), names=config.objective_names())


def _summary(step: str, rows_in: int, out: dict, skipped: Counter, seconds: float) -> str:
    skipped_text = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"
    outs = ", ".join(f"{k} {v}" for k, v in out.items())
    rate = rows_in / seconds if seconds > 0 else float("inf")
    return f"{step}: {rows_in} rows in; {outs}; skipped: {skipped_text}; {seconds:.2f}s ({rate:.0f} rows/s)"


def make_sft_data(input_path: str | Path, config: str, output_dir: str | Path, seed: int = 0,
                  val_size: float = 0.1) -> dict:
    """``rewards.csv`` -> ``train.json``/``val.json`` (FastChat) + ``stats.json``; returns the stats."""
    import time

    from metaaligner.io import fastchat_item, write_fastchat, write_json

    start = time.time()
    spec = ObjectiveSpec.from_config(config)
    data = read_reward_pairs(input_path, len(spec.keys))
    items = sft_items(data.pairs, spec.names)
    train, val = split_by_group(items, val_size, seed)
    out = Path(output_dir)
    write_fastchat(out / "train.json", [fastchat_item(it["id"], it["prompt"], it["completion"]) for it in train])
    write_fastchat(out / "val.json", [fastchat_item(it["id"], it["prompt"], it["completion"]) for it in val])
    targets = default_targets(data.pairs)
    stats = {"input": str(input_path), "config": config, "objectives": spec.keys, "names": spec.names,
             "seed": seed, "val_size": val_size, "rows_in": data.rows_in, "pairs_used": len(data.pairs),
             "skipped": dict(data.skipped), "items": len(items), "train": len(train), "val": len(val),
             "max_rewards": dict(zip(spec.keys, targets))}
    write_json(out / "stats.json", stats)
    print(f"max normalised rewards (default inference targets): {format_targets(spec.keys, targets)}")
    print(_summary("make_sft_data", data.rows_in, {"train items": len(train), "val items": len(val)},
                   data.skipped, time.time() - start))
    return stats


def make_cdpo_data(input_path: str | Path, config: str, output_dir: str | Path, seed: int = 0,
                   val_size: float = 0.1, target_rewards: str | None = None) -> dict:
    """``rewards.csv`` -> ``train.jsonl``/``val.jsonl`` (TRL prompt/chosen/rejected) + ``stats.json``."""
    import time

    from metaaligner.io import write_json, write_jsonl

    start = time.time()
    spec = ObjectiveSpec.from_config(config)
    data = read_reward_pairs(input_path, len(spec.keys))
    maxima = default_targets(data.pairs)
    targets = parse_target_rewards(target_rewards, spec.keys, spec.names, defaults=maxima)
    print(f"CDPO targets: {format_targets(spec.keys, targets)}"
          + ("" if target_rewards else " (maximum normalised reward per objective)"))
    rows, order_stats = cdpo_pairs(data.pairs, spec.names, targets)
    train, val = split_by_group(rows, val_size, seed)
    out = Path(output_dir)
    keep = ("prompt", "chosen", "rejected")
    write_jsonl(out / "train.jsonl", strip_keys(train, keep))
    write_jsonl(out / "val.jsonl", strip_keys(val, keep))
    stats = {"input": str(input_path), "config": config, "objectives": spec.keys, "names": spec.names,
             "seed": seed, "val_size": val_size, "targets": dict(zip(spec.keys, targets)),
             "targets_source": "--target_rewards" if target_rewards else "max normalised reward",
             "max_rewards": dict(zip(spec.keys, maxima)), "rows_in": data.rows_in, "pairs_used": len(data.pairs),
             "skipped": dict(data.skipped), **order_stats, "train": len(train), "val": len(val)}
    write_json(out / "stats.json", stats)
    skipped = Counter(data.skipped)
    if order_stats["ties_dropped"]:
        skipped["ties"] = order_stats["ties_dropped"]
    print(_summary("make_cdpo_data", data.rows_in, {"train pairs": len(train), "val pairs": len(val),
                                                   "swapped": order_stats["swapped_order"]},
                   skipped, time.time() - start))
    return stats
