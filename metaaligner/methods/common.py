"""What the baselines share, as pure functions over the stage-1 reward CSV plus the model-folder
metadata (``baseline.json``). Each method's own rule is in its module (``sft``, ``cdpo``, ``morlhf``,
``sepo``); the one conditioned inference for SFT, CDPO and MORLHF is ``inference``.

Input rows come from ``rewards.csv``: ``prompt, chosen_response, rejected_response,
chosen_score{i}, rejected_score{i}`` with i = 1..n in the dataset config's objective order.
"""
from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from metaaligner.dataset.reformulation import ScoredPair
from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.registry.templates import CONDITIONING_TEXTS, reward_conditioned_prompt

TIE_TOLERANCE = 1e-9  # closeness / score differences at or below this are ties (float round-off)
TARGET_DECIMALS = 2  # targets are rounded to what the conditioning prompt shows
METADATA_FILE = "baseline.json"  # every baseline model folder: what inference needs
LOG_FILE = "train_log.jsonl"


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

@dataclass(frozen=True)
class Conditioning:
    """How a conditioning prompt writes the rewards: the labels, the text (``clean`` or ``released``)
    and, for the released text, whether whole numbers are integer ratings. ``ObjectiveSpec.conditioning``
    builds it from the dataset config; a plain list of names means the clean text."""
    labels: tuple[str, ...]
    text: str = "clean"
    integer_ratings: bool = False

    def prompt(self, question: str, rewards: Sequence[float]) -> str:
        return reward_conditioned_prompt(question, list(self.labels), list(rewards), self.text, self.integer_ratings)


def as_conditioning(names: Sequence[str] | Conditioning) -> Conditioning:
    return names if isinstance(names, Conditioning) else Conditioning(tuple(names))


def conditioned_prompt(question: str, names: Sequence[str] | Conditioning, rewards: Sequence[float]) -> str:
    """The RiC / SFT / CDPO conditioning prompt (the string itself lives in ``templates``)."""
    return as_conditioning(names).prompt(question, rewards)


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

def split_by_group(items: Sequence[dict], val_size: float, seed: int,
                   group_key: str = "group") -> tuple[list[dict], list[dict]]:
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
    conditioning_labels: str = "name"  # the released text's labels: "name" or "key"
    integer_ratings: bool = False

    @classmethod
    def from_config(cls, config_name_or_path: str) -> "ObjectiveSpec":
        from metaaligner.registry.datasets import load_dataset_config

        config = load_dataset_config(config_name_or_path)
        return cls(keys=list(config.objectives), names=config.objective_names(),
                   conditioning_labels=config.conditioning_labels, integer_ratings=config.integer_ratings)

    def conditioning(self, text: str = "clean") -> Conditioning:
        """``clean``: display names, two decimals; ``released``: the dataset config's labels and numbers."""
        if text not in CONDITIONING_TEXTS:
            raise MetaAlignerError(f"--conditioning_text must be one of {CONDITIONING_TEXTS}, got {text!r}")
        if text == "clean":
            return Conditioning(tuple(self.names))
        labels = self.keys if self.conditioning_labels == "key" else self.names
        return Conditioning(tuple(labels), "released", self.integer_ratings)


def summary_line(step: str, rows_in: int, out: dict, skipped: Counter, seconds: float) -> str:
    skipped_text = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"
    outs = ", ".join(f"{k} {v}" for k, v in out.items())
    rate = rows_in / seconds if seconds > 0 else float("inf")
    return f"{step}: {rows_in} rows in; {outs}; skipped: {skipped_text}; {seconds:.2f}s ({rate:.0f} rows/s)"


# ---------------------------------------------------------------- model folders

def read_metadata(model_path: str | None) -> dict[str, Any]:
    if not model_path:
        return {}
    path = Path(model_path) / METADATA_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def write_metadata(model_path: str | Path, meta: dict[str, Any]) -> None:
    from metaaligner.io import write_json

    write_json(Path(model_path) / METADATA_FILE, meta)


def read_stats(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "stats.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def finish_run(method: str, output_dir: Path, meta: dict[str, Any], started: float) -> None:
    from metaaligner.training.common import read_device_hours

    hours = read_device_hours(output_dir / LOG_FILE)
    meta = {"method": method, **meta, "wall_s": round(time.time() - started, 2), "device_hours": hours}
    write_metadata(output_dir, meta)
    print(f"{method}: done in {meta['wall_s']:.1f}s, {hours if hours is not None else 'n/a'} device hours "
          f"-> {output_dir}")


def full_model_path(model_name_or_path: str | None, workdir: Path) -> str | None:
    """A LoRA adapter folder (e.g. an SFT baseline trained with ``--lora``) merged once into a full
    model under ``workdir/start_model_merged`` (the DPO/RL trainers load the start model by path and
    use it as the frozen reference); any other path is returned as is."""
    if not model_name_or_path or not (Path(model_name_or_path) / "adapter_config.json").exists():
        return model_name_or_path
    from metaaligner.models import load_causal_lm

    target = workdir / "start_model_merged"
    if not (target / "config.json").exists():
        model, tokenizer, _ = load_causal_lm(model_name_or_path, device="cpu", dtype="float32")
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
        print(f"merged the LoRA adapter {model_name_or_path} into {target}")
    return str(target)


