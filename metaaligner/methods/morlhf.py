"""MORLHF baseline: one reward model per objective, trained on pairs ordered by that objective's
score (ties dropped); the policy reward is the linear scalarisation  R(x, y) = sum_j w_j * r_j(x, y)
of standardised rewards (``methods.scalarisation``). Data rule ``reward_model_pairs``, ``train_reward_models``,
``train_morlhf_baseline`` (the RL trainer is ``training.morlhf``); inference: ``infer`` (plain queries).
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from metaaligner.errors import MetaAlignerError
from metaaligner.methods.common import LOG_FILE, TIE_TOLERANCE, ScoredPair, finish_run, full_model_path, read_metadata

MANIFEST = "reward_models.json"


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


def train_reward_models(input_path: str | Path, config: str, output_dir: str | Path, base_model: str | None,
                        rm_config, objectives: Sequence[str] | None = None, seed: int = 0, val_size: float = 0.1,
                        limit: int | None = None, lora: bool = False, resume: bool = False,
                        overwrite: bool = False) -> dict[str, Any]:
    """One reward model per objective, each on the pairs ordered by that objective's score (ties
    dropped), into ``output_dir/<objective>/``; ``output_dir/reward_models.json`` lists them."""
    from metaaligner.io import write_json
    from metaaligner.methods.common import ObjectiveSpec, read_reward_pairs, split_by_group, strip_keys
    from metaaligner.training.reward_model import read_reward_stats, train_reward_model

    started = time.time()
    output_dir = Path(output_dir)
    spec = ObjectiveSpec.from_config(config)
    chosen = list(objectives) if objectives else spec.keys
    unknown = [k for k in chosen if k not in spec.keys]
    if unknown:
        raise MetaAlignerError(f"--objectives: unknown {unknown}; the config {config!r} has {spec.keys}")
    data = read_reward_pairs(input_path, len(spec.keys))
    pairs = data.pairs[:limit] if limit else data.pairs
    entries = []
    for key in chosen:
        j = spec.keys.index(key)
        rows, order = reward_model_pairs(pairs, j)
        train, val = split_by_group(rows, val_size, seed)
        print(f"reward model {key}: {len(pairs)} pairs, {order['ties_dropped']} ties dropped, "
              f"{order['swapped_order']} reordered; train {len(train)}, val {len(val)}")
        folder = output_dir / key
        keep = ("prompt", "chosen", "rejected")
        train_reward_model(base_model, strip_keys(train, keep), strip_keys(val, keep), folder, rm_config,
                           stage=f"reward_model:{key}", log_path=output_dir / LOG_FILE, lora=lora, resume=resume,
                           objective=key, overwrite=overwrite)
        stats = read_reward_stats(folder)
        entries.append({"objective": key, "name": spec.names[j], "path": str(folder), "mean": stats["mean"],
                        "std": stats["std"], "train_pairs": len(train), "val_pairs": len(val),
                        "ties_dropped": order["ties_dropped"], "eval_accuracy": stats.get("eval_accuracy")})
    from metaaligner.training.common import read_device_hours

    manifest = {"config": config, "input": str(input_path), "base_model": str(base_model or "embedded"),
                "seed": seed, "val_size": val_size, "rows_in": data.rows_in, "skipped": dict(data.skipped),
                "reward_models": entries, "wall_s": round(time.time() - started, 2),
                "device_hours": read_device_hours(output_dir / LOG_FILE)}
    write_json(output_dir / MANIFEST, manifest)
    print(f"train_reward_models: {len(entries)} reward models in {manifest['wall_s']:.1f}s "
          f"({manifest['device_hours']} device hours) -> {output_dir / MANIFEST}")
    return manifest


def load_reward_model_specs(reward_models: str | Sequence[str]):
    """``RewardModelSpec``s from a ``train_reward_models`` folder (its manifest), a manifest file, or
    a list/comma-separated string of reward-model folders (each with ``reward_stats.json``)."""
    from metaaligner.training.morlhf import RewardModelSpec, reward_specs_from_dirs

    items = [s.strip() for s in reward_models.split(",")] if isinstance(reward_models, str) else list(reward_models)
    items = [s for s in items if s]
    if len(items) == 1:
        path = Path(items[0])
        manifest = path / MANIFEST if path.is_dir() else path
        if manifest.name == MANIFEST and manifest.exists():
            data = json.loads(manifest.read_text(encoding="utf-8"))
            return [RewardModelSpec(name=e["objective"], path=e["path"], mean=float(e["mean"]), std=float(e["std"]))
                    for e in data["reward_models"]]
    missing = [s for s in items if not Path(s).is_dir()]
    if missing:
        raise MetaAlignerError(f"--reward_models: not a folder: {', '.join(missing)}")
    return reward_specs_from_dirs(items)


def read_prompts(path: str | Path, column: str = "prompt", limit: int | None = None, seed: int = 0) -> list[str]:
    """Unique non-empty prompts of a CSV/JSONL (e.g. ``rewards.csv``), seeded order, first ``limit``."""
    from metaaligner.errors import DataError
    from metaaligner.io import read_records

    rows = read_records(path)
    if column not in rows[0]:
        raise DataError(path, f"missing column (found: {', '.join(sorted(rows[0]))})", column=column)
    prompts = list(dict.fromkeys(str(r.get(column) or "") for r in rows))
    prompts = [p for p in prompts if p.strip()]
    random.Random(seed).shuffle(prompts)
    return prompts[:limit] if limit else prompts


def train_morlhf_baseline(input_path: str | Path, reward_models: str | Sequence[str], weights: str | None,
                          policy_model: str | None, output_dir: str | Path, morlhf_config,
                          prompt_column: str = "prompt", limit: int | None = None, lora: bool = False,
                          resume: bool = False, overwrite: bool = False) -> str:
    from metaaligner.training.morlhf import train_morlhf

    started = time.time()
    output_dir = Path(output_dir)
    specs = load_reward_model_specs(reward_models)
    w = parse_weights(weights, len(specs))
    print("linear scalarisation: R = " + " + ".join(f"{wj:.4g} * {s.name}" for wj, s in zip(w, specs))
          + " (each reward normalised by its model's mean/std)")
    prompts = read_prompts(input_path, prompt_column, limit, morlhf_config.seed)
    train_morlhf(full_model_path(policy_model, output_dir), prompts, specs, w, output_dir, morlhf_config,
                 stage="morlhf", log_path=output_dir / LOG_FILE, lora=lora, resume=resume, overwrite=overwrite)
    meta = read_metadata(str(output_dir))
    meta.pop("method", None)
    finish_run("morlhf", output_dir, {**meta, "input": str(input_path)}, started)
    return str(output_dir)


def infer(config, generator=None) -> Path:
    """Plain-query generation (``baseline.json`` records no conditioning)."""
    from metaaligner.methods.inference import run_inference

    return run_inference(config, generator)
