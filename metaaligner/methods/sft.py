"""SFT baseline (Rewards-in-Context stage 1): every response becomes an item whose prompt carries
its own rewards, ``<Harmlessness>: 0.50; <Helpfulness>: -1.20; <Humour>: 0.10 | {question}``.
Data rule ``sft_items`` (a pairs CSV: both answers of each pair, as ``HH_RLHF_make_sft_data.py``) or
``completion_items`` (``prepare_ultrafeedback.py``'s ``completions.csv``: each used completion once
with its four ratings, as ``UltraFeedback_make_sft_data.py``; from pairs a completion would appear
n - 1 times and a record with one completion not at all), ``make_sft_data``, ``train_sft_baseline``;
inference: ``infer`` (the shared conditioned inference, the targets from ``baseline.json``).
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from metaaligner.dataset.reformulation import ScoredCompletion, completions_from_rows
from metaaligner.errors import MetaAlignerError
from metaaligner.methods.common import (
    LOG_FILE,
    TARGET_DECIMALS,
    Conditioning,
    ObjectiveSpec,
    ScoredPair,
    as_conditioning,
    finish_run,
    format_targets,
    read_reward_pairs,
    read_stats,
    split_by_group,
    summary_line,
)


def sft_items(pairs: Iterable[ScoredPair], names: Sequence[str] | Conditioning) -> list[dict]:
    """Two items per pair, each response under a prompt that carries its own rewards.
    ``group`` (the source row) keeps both items of a pair in the same split. ``names``: the objective
    names (clean text) or a ``Conditioning`` (``ObjectiveSpec.conditioning``)."""
    fmt = as_conditioning(names)
    items = []
    for p in pairs:
        for side, response, scores in (("chosen", p.chosen, p.chosen_scores),
                                       ("rejected", p.rejected, p.rejected_scores)):
            items.append({"id": f"{p.row}-{side}", "group": p.row,
                          "prompt": fmt.prompt(p.prompt, scores), "completion": response})
    return items


def completion_items(records: Iterable[Sequence[ScoredCompletion]],
                     names: Sequence[str] | Conditioning) -> list[dict]:
    """One item per completion, under a prompt that carries its own ratings; ``group`` (its record)
    keeps a record's items in one split."""
    fmt = as_conditioning(names)
    return [{"id": f"{c.record}-{c.position}", "group": c.record,
             "prompt": fmt.prompt(c.prompt, c.scores), "completion": c.response}
            for record in records for c in record]


def is_completions_file(path: str | Path) -> bool:
    """``completions.csv`` of ``prepare_ultrafeedback.py`` (a ``response`` column, no pairs)."""
    from metaaligner.io import read_records

    rows = read_records(path)
    return bool(rows) and "response" in rows[0] and "chosen_response" not in rows[0]


def make_sft_data(input_path: str | Path, config: str, output_dir: str | Path, seed: int = 0,
                  val_size: float = 0.1, conditioning_text: str = "clean") -> dict:
    """``rewards.csv`` (each pair's two answers) or ``completions.csv`` (each completion once) ->
    ``train.json``/``val.json`` (FastChat) + ``stats.json``; returns the stats. ``conditioning_text``
    (``clean`` or ``released``) is recorded in the stats, then in the model's ``baseline.json``."""
    from metaaligner.io import fastchat_item, read_records, write_fastchat, write_json

    start = time.time()
    spec = ObjectiveSpec.from_config(config)
    fmt = spec.conditioning(conditioning_text)
    skipped: Counter = Counter()
    if is_completions_file(input_path):
        rows = read_records(input_path)
        records = completions_from_rows(rows, len(spec.keys), path=str(input_path))
        items = completion_items(records, fmt)
        scores = [c.scores for record in records for c in record]
        rows_in, used = len(rows), {"layout": "completions", "records": len(records), "completions": len(scores)}
    else:
        data = read_reward_pairs(input_path, len(spec.keys))
        items = sft_items(data.pairs, fmt)
        scores = [s for p in data.pairs for s in (p.chosen_scores, p.rejected_scores)]
        rows_in, used, skipped = data.rows_in, {"layout": "pairs", "pairs_used": len(data.pairs)}, data.skipped
    if not scores:
        raise MetaAlignerError(f"{input_path}: no usable rows to make SFT items from")
    train, val = split_by_group(items, val_size, seed)
    out = Path(output_dir)
    write_fastchat(out / "train.json", [fastchat_item(it["id"], it["prompt"], it["completion"]) for it in train])
    write_fastchat(out / "val.json", [fastchat_item(it["id"], it["prompt"], it["completion"]) for it in val])
    # per objective, the maximum reward over every response: the default inference targets
    targets = [round(max(s[j] for s in scores), TARGET_DECIMALS) for j in range(len(spec.keys))]
    stats = {"input": str(input_path), "config": config, "objectives": spec.keys, "names": spec.names,
             "conditioning_text": conditioning_text, "seed": seed, "val_size": val_size, "rows_in": rows_in, **used,
             "skipped": dict(skipped), "items": len(items), "train": len(train), "val": len(val),
             "max_rewards": dict(zip(spec.keys, targets))}
    write_json(out / "stats.json", stats)
    print(f"max normalised rewards (default inference targets): {format_targets(spec.keys, targets)}")
    print(summary_line("make_sft_data", rows_in, {"train items": len(train), "val items": len(val)},
                       skipped, time.time() - start))
    return stats


def train_sft_baseline(data_dir: str | Path, output_dir: str | Path, model_name_or_path: str | None,
                       stage_config, limit: int | None = None, resume: bool = False, overwrite: bool = False) -> str:
    """Train the SFT baseline on ``make_sft_data`` output (``resume``/``overwrite``: ``train_sft``'s)."""
    from metaaligner.io import read_fastchat
    from metaaligner.training.sft import train_sft

    started = time.time()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    train = read_fastchat(data_dir / "train.json")[:limit]
    val = read_fastchat(data_dir / "val.json") if (data_dir / "val.json").exists() else []
    stats = read_stats(data_dir)
    train_sft(model_name_or_path, train, val or None, str(output_dir), stage_config, stage="sft_baseline",
              log_path=str(output_dir / LOG_FILE), resume=resume, overwrite=overwrite)
    finish_run("sft", output_dir, {"conditioning": "targets",
                                   "conditioning_text": stats.get("conditioning_text", "clean"),
                                   "config": stats.get("config"),
                                   "objectives": stats.get("objectives"), "names": stats.get("names"),
                                   "targets": stats.get("max_rewards"), "targets_source": "max normalised reward",
                                   "base_model": str(model_name_or_path), "train_items": len(train),
                                   "val_items": len(val), "data_dir": str(data_dir)}, started)
    return str(output_dir)


def infer(config, generator=None) -> Path:
    """Reward-conditioned generation (``methods.inference.run_inference``)."""
    from metaaligner.methods.inference import run_inference

    return run_inference(config, generator)
