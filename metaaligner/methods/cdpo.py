"""CDPO baseline: the prompt carries the *target* rewards t; of the two responses the preferred
one has the higher closeness  c(y) = -sum_j |t_j - s_j(y)|;  equal closeness (a tie) drops the
pair. Data rule ``cdpo_pairs``, ``make_cdpo_data``, ``train_cdpo_baseline`` (DPO from the SFT
baseline); inference: ``infer`` (the shared conditioned inference).
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from metaaligner.methods.common import (
    LOG_FILE,
    TIE_TOLERANCE,
    Conditioning,
    ObjectiveSpec,
    ScoredPair,
    as_conditioning,
    default_targets,
    finish_run,
    format_targets,
    full_model_path,
    parse_target_rewards,
    read_reward_pairs,
    read_stats,
    split_by_group,
    strip_keys,
    summary_line,
)


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


def cdpo_pairs(pairs: Iterable[ScoredPair], names: Sequence[str] | Conditioning,
               targets: Sequence[float]) -> tuple[list[dict], dict]:
    """TRL preference rows ``{prompt, chosen, rejected}`` (+ ``group``) under the target-conditioned prompt
    (``names``: the objective names, clean text, or a ``Conditioning``)."""
    fmt = as_conditioning(names)
    rows, kept, swapped, ties = [], 0, 0, 0
    for p in pairs:
        order = cdpo_order(p.chosen_scores, p.rejected_scores, targets)
        if order == 0:
            ties += 1
            continue
        chosen, rejected = (p.chosen, p.rejected) if order > 0 else (p.rejected, p.chosen)
        kept += order > 0
        swapped += order < 0
        rows.append({"prompt": fmt.prompt(p.prompt, targets), "chosen": chosen,
                     "rejected": rejected, "group": p.row})
    return rows, {"pairs_out": len(rows), "kept_order": kept, "swapped_order": swapped, "ties_dropped": ties}


def make_cdpo_data(input_path: str | Path, config: str, output_dir: str | Path, seed: int = 0,
                   val_size: float = 0.1, target_rewards: str | None = None, conditioning_text: str = "clean") -> dict:
    """``rewards.csv`` -> ``train.jsonl``/``val.jsonl`` (TRL prompt/chosen/rejected) + ``stats.json``;
    ``conditioning_text`` (``clean`` or ``released``) is recorded there, then in ``baseline.json``."""
    from metaaligner.io import write_json, write_jsonl

    start = time.time()
    spec = ObjectiveSpec.from_config(config)
    fmt = spec.conditioning(conditioning_text)
    data = read_reward_pairs(input_path, len(spec.keys))
    maxima = default_targets(data.pairs)
    targets = parse_target_rewards(target_rewards, spec.keys, spec.names, defaults=maxima)
    print(f"CDPO targets: {format_targets(spec.keys, targets)}"
          + ("" if target_rewards else " (maximum normalised reward per objective)"))
    rows, order_stats = cdpo_pairs(data.pairs, fmt, targets)
    train, val = split_by_group(rows, val_size, seed)
    out = Path(output_dir)
    keep = ("prompt", "chosen", "rejected")
    write_jsonl(out / "train.jsonl", strip_keys(train, keep))
    write_jsonl(out / "val.jsonl", strip_keys(val, keep))
    stats = {"input": str(input_path), "config": config, "objectives": spec.keys, "names": spec.names,
             "conditioning_text": conditioning_text, "seed": seed, "val_size": val_size,
             "targets": dict(zip(spec.keys, targets)),
             "targets_source": "--target_rewards" if target_rewards else "max normalised reward",
             "max_rewards": dict(zip(spec.keys, maxima)), "rows_in": data.rows_in, "pairs_used": len(data.pairs),
             "skipped": dict(data.skipped), **order_stats, "train": len(train), "val": len(val)}
    write_json(out / "stats.json", stats)
    skipped = Counter(data.skipped)
    if order_stats["ties_dropped"]:
        skipped["ties"] = order_stats["ties_dropped"]
    print(summary_line("make_cdpo_data", data.rows_in, {"train pairs": len(train), "val pairs": len(val),
                                                       "swapped": order_stats["swapped_order"]},
                       skipped, time.time() - start))
    return stats


def train_cdpo_baseline(data_dir: str | Path, output_dir: str | Path, model_name_or_path: str | None, dpo_config,
                        ref_model_path: str | None = None, lora: bool = False, limit: int | None = None,
                        resume: bool = False, overwrite: bool = False) -> str:
    """DPO on ``make_cdpo_data`` output, from the SFT baseline (its own reference by default);
    ``resume``/``overwrite``: ``train_dpo``'s."""
    from metaaligner.io import read_records
    from metaaligner.training.dpo import train_dpo

    started = time.time()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    train = read_records(data_dir / "train.jsonl")[:limit]
    val_path = data_dir / "val.jsonl"
    val = read_records(val_path) if val_path.exists() and val_path.stat().st_size > 0 else []
    stats = read_stats(data_dir)
    start_model = full_model_path(model_name_or_path, output_dir)
    train_dpo(start_model, train, val or None, str(output_dir), dpo_config, stage="cdpo",
              log_path=str(output_dir / LOG_FILE), ref_model_path=ref_model_path, lora=lora, resume=resume,
              overwrite=overwrite)
    finish_run("cdpo", output_dir, {"conditioning": "targets",
                                    "conditioning_text": stats.get("conditioning_text", "clean"),
                                    "config": stats.get("config"),
                                    "objectives": stats.get("objectives"), "names": stats.get("names"),
                                    "targets": stats.get("targets"), "targets_source": stats.get("targets_source"),
                                    "base_model": str(model_name_or_path), "lora": lora, "train_pairs": len(train),
                                    "val_pairs": len(val), "data_dir": str(data_dir)}, started)
    return str(output_dir)


def infer(config, generator=None) -> Path:
    """Target-conditioned generation (``methods.inference.run_inference``)."""
    from metaaligner.methods.inference import run_inference

    return run_inference(config, generator)
