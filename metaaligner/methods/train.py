"""Runs of the paper's baselines: files in, model folders out. The pure parts (conditioning, pair
ordering, scalarisation) live in ``metaaligner.baselines``; the trainers are the shared building
blocks (``training.sft.train_sft``, ``training.dpo.train_dpo``, ``training.reward_model``,
``training.morlhf``). Every model folder gets a ``baseline.json`` that inference reads.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Sequence

from metaaligner.errors import MetaAlignerError

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
MANIFEST = "reward_models.json"


def _read_stats(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "stats.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _finish(method: str, output_dir: Path, meta: dict[str, Any], started: float) -> None:
    from metaaligner.methods.inference import write_metadata
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


def train_sft_baseline(data_dir: str | Path, output_dir: str | Path, model_name_or_path: str | None,
                       stage_config, limit: int | None = None, resume: bool = False) -> str:
    """Train the SFT baseline on ``make_sft_data`` output."""
    from metaaligner.io import read_fastchat
    from metaaligner.training.sft import train_sft

    started = time.time()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    train = read_fastchat(data_dir / "train.json")[:limit]
    val = read_fastchat(data_dir / "val.json") if (data_dir / "val.json").exists() else []
    stats = _read_stats(data_dir)
    train_sft(model_name_or_path, train, val or None, str(output_dir), stage_config, stage="sft_baseline",
              log_path=str(output_dir / LOG_FILE), resume=resume)
    _finish("sft", output_dir, {"conditioning": "targets", "config": stats.get("config"),
                                "objectives": stats.get("objectives"), "names": stats.get("names"),
                                "targets": stats.get("max_rewards"), "targets_source": "max normalised reward",
                                "base_model": str(model_name_or_path), "train_items": len(train),
                                "val_items": len(val), "data_dir": str(data_dir)}, started)
    return str(output_dir)


def train_cdpo_baseline(data_dir: str | Path, output_dir: str | Path, model_name_or_path: str | None, dpo_config,
                        ref_model_path: str | None = None, lora: bool = False, limit: int | None = None,
                        resume: bool = False) -> str:
    """DPO on ``make_cdpo_data`` output, from the SFT baseline (its own reference by default)."""
    from metaaligner.io import read_records
    from metaaligner.training.dpo import train_dpo

    started = time.time()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    train = read_records(data_dir / "train.jsonl")[:limit]
    val_path = data_dir / "val.jsonl"
    val = read_records(val_path) if val_path.exists() and val_path.stat().st_size > 0 else []
    stats = _read_stats(data_dir)
    start_model = full_model_path(model_name_or_path, output_dir)
    train_dpo(start_model, train, val or None, str(output_dir), dpo_config, stage="cdpo",
              log_path=str(output_dir / LOG_FILE), ref_model_path=ref_model_path, lora=lora, resume=resume)
    _finish("cdpo", output_dir, {"conditioning": "targets", "config": stats.get("config"),
                                 "objectives": stats.get("objectives"), "names": stats.get("names"),
                                 "targets": stats.get("targets"), "targets_source": stats.get("targets_source"),
                                 "base_model": str(model_name_or_path), "lora": lora, "train_pairs": len(train),
                                 "val_pairs": len(val), "data_dir": str(data_dir)}, started)
    return str(output_dir)


def train_reward_models(input_path: str | Path, config: str, output_dir: str | Path, base_model: str | None,
                        rm_config, objectives: Sequence[str] | None = None, seed: int = 0, val_size: float = 0.1,
                        limit: int | None = None, lora: bool = False, resume: bool = False) -> dict[str, Any]:
    """One reward model per objective, each on the pairs ordered by that objective's score (ties
    dropped), into ``output_dir/<objective>/``; ``output_dir/reward_models.json`` lists them."""
    from metaaligner.methods.common import ObjectiveSpec, read_reward_pairs, reward_model_pairs, split_by_group, strip_keys
    from metaaligner.io import write_json
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
                           objective=key)
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
                          resume: bool = False) -> str:
    from metaaligner.methods.common import parse_weights
    from metaaligner.training.morlhf import train_morlhf

    started = time.time()
    output_dir = Path(output_dir)
    specs = load_reward_model_specs(reward_models)
    w = parse_weights(weights, len(specs))
    print("linear scalarisation: R = " + " + ".join(f"{wj:.4g} * {s.name}" for wj, s in zip(w, specs))
          + " (each reward normalised by its model's mean/std)")
    prompts = read_prompts(input_path, prompt_column, limit, morlhf_config.seed)
    train_morlhf(full_model_path(policy_model, output_dir), prompts, specs, w, output_dir, morlhf_config, stage="morlhf",
                 log_path=output_dir / LOG_FILE, lora=lora, resume=resume)
    from metaaligner.methods.inference import read_metadata

    meta = read_metadata(str(output_dir))
    meta.pop("method", None)
    _finish("morlhf", output_dir, {**meta, "input": str(input_path)}, started)
    return str(output_dir)
