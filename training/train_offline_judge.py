r"""Fit the offline judge (a linear probe on frozen SmolLM2-135M features) on human preferences.

    python training/train_offline_judge.py --output_dir metaaligner/data/offline_judge --cache runs/judge/features.pt \
        --layers 3,6 --max_tokens 64 --max_response_tokens 48 --max_train_pairs 900 --seed 0

Pairs: the shipped HH-RLHF harmless-base test split (chosen = human-preferred); a row id is the
0-based line of the input file. The split is deterministic (``split_rows``): the distinct prompts
(the chosen transcript's context, ``load_preference_rows``), sorted, are shuffled with
``random.Random(f"probe-split|{seed}")`` and the first ``round(test_fraction * n)`` are held out;
of the other rows, ``random.Random(f"probe-train|{seed}").sample`` keeps ``--max_train_pairs``.
The layer and the L2 strength are chosen by prompt-grouped cross-validation on train only; the
held-out agreement (ties half, Wilson 95% interval) is stored in ``probe.json`` next to the
weights, with the ids of the rows trained on (``train_rows``) and held out (``heldout_rows``).
``probe_fit.safetensors`` keeps what the final fit read (chosen-minus-rejected features of the
chosen layer, train and held-out rows in id order), so the weights can be checked without the
model (tests/test_offline_judge.py). Features are cached (``--cache``), so a re-run with the
same settings costs seconds.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check


@dataclass
class JudgeConfig:
    output_dir: str = field(default="metaaligner/data/offline_judge",
                            metadata={"help": "where probe.json + probe.safetensors go"})
    input: str = field(default="samples/hh-rlhf-harmless-base/harmless-base-test.jsonl.gz", metadata={
        "help": "HH-RLHF JSONL(.gz) transcripts (chosen, rejected)"})
    cache: str = field(default="runs/judge/features.pt",
                       metadata={"help": "feature cache (reused when settings match)"})
    layers: str = field(default="3,6", metadata={"help": "comma-separated hidden-state layers to try"})
    l2: str = field(default="0.001,0.01,0.1", metadata={"help": "comma-separated L2 strengths to try"})
    max_train_pairs: int = field(default=900,
                                 metadata={**check(ge=0),
                                           "help": "use at most N training pairs (seeded sample; 0: all; 900 fits a "
                                                   "busy 2-core CPU); the held-out side is never cut"})
    test_fraction: float = field(default=0.2, metadata={**check(gt=0.0, lt=1.0),
                                                        "help": "share of prompts held out from all training"})
    max_tokens: int = field(default=64, metadata={**check(ge=1), "help": "tokens per (prompt tail + response)"})
    max_response_tokens: int = field(default=48, metadata={**check(ge=1),
                                                           "help": "response tokens kept (from its start)"})
    batch_size: int = field(default=16, metadata={**check(ge=1), "help": "feature batch size"})
    torch_threads: int = field(default=1, metadata={**check(ge=1),
                                                    "help": "CPU threads (1 is fastest on a busy shared CPU)"})
    seed: int = field(default=0, metadata={"help": "split and cross-validation seed"})
    model: str = field(default="", metadata={"help": "feature model folder (default: the embedded SmolLM2-135M)"})

FIT_FILE = "probe_fit.safetensors"


def load_pairs(path: str) -> list:
    from metaaligner.dataset.rewards import load_preference_rows

    return [r for r in load_preference_rows(path) if r.status in (None, "", "ok") and not r.prompt_mismatch
            and r.chosen_response != r.rejected_response]


def split_rows(rows: list, test_fraction: float, max_train_pairs: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) row ids, both sorted: prompts split by ``split_by_prompt``, then at most
    ``max_train_pairs`` train rows kept (seeded sample); the held-out side is never cut."""
    import random

    from metaaligner.judge.probe import split_by_prompt

    train, test = split_by_prompt([r.prompt for r in rows], test_fraction, seed)
    if 0 < max_train_pairs < len(train):
        train = random.Random(f"probe-train|{seed}").sample(train, max_train_pairs)
    return sorted(rows[i].row_id for i in train), sorted(rows[i].row_id for i in test)


def cached_features(cfg: JudgeConfig, rows: list, layers: list[int]):
    """[n, 2, len(layers), hidden] (chosen, rejected), from the cache when its settings match."""
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM

    from metaaligner.judge.probe import extract_features
    from metaaligner.models import load_tokenizer, resolve_model_path

    key = {"input": cfg.input, "rows": [r.row_id for r in rows], "layers": layers, "max_tokens": cfg.max_tokens,
           "max_response_tokens": cfg.max_response_tokens, "model": cfg.model}
    if Path(cfg.cache).exists():
        saved = torch.load(cfg.cache, weights_only=True)
        if saved["key"] == key:
            return saved["features"]
    path = resolve_model_path(cfg.model or None)
    tok = load_tokenizer(path, padding_side="right")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.model.layers = model.model.layers[: max(layers) + 1]  # the last layer's output is never used
    prompts = [r.prompt for r in rows] * 2
    responses = [r.chosen_response for r in rows] + [r.rejected_response for r in rows]
    feats = extract_features(model, tok, prompts, responses, layers, cfg.max_tokens, cfg.max_response_tokens,
                             cfg.batch_size, progress=True)
    feats = torch.stack([feats[: len(rows)], feats[len(rows):]], dim=1)
    Path(cfg.cache).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "features": feats}, cfg.cache)
    return feats


def cross_validate(diffs, prompts: list[str], l2: float, folds: int, seed: int) -> float:
    """Mean held-fold agreement of the probe, folds grouped by prompt."""
    import random

    from metaaligner.judge.probe import fit_logistic

    unique = sorted(set(prompts))
    random.Random(f"probe-cv|{seed}").shuffle(unique)
    fold_of = {p: i % folds for i, p in enumerate(unique)}
    hits = 0.0
    for k in range(folds):
        tr = [i for i, p in enumerate(prompts) if fold_of[p] != k]
        te = [i for i, p in enumerate(prompts) if fold_of[p] == k]
        w, scale = fit_logistic(diffs[tr], l2)
        margin = (diffs[te] / scale) @ w
        hits += float((margin > 0).sum()) + 0.5 * float((margin == 0).sum())
    return hits / len(prompts)


def choose_and_fit(feats, train: list[int], layers: list[int], l2s: list[float], prompts: list[str], seed: int):
    """Cross-validate every (layer, L2) on the train rows, then fit the best on all of them.
    Returns (weights, scale, layer, l2, cv grid)."""
    from metaaligner.judge.probe import fit_logistic

    grid = {}
    for k, layer in enumerate(layers):
        diffs = feats[train, 0, k] - feats[train, 1, k]
        for l2 in l2s:
            grid[f"layer{layer}_l2{l2:g}"] = cross_validate(diffs, prompts, l2, 5, seed)
            print(f"cv layer {layer} l2 {l2:g}: {grid[f'layer{layer}_l2{l2:g}']:.3f}")
    best = max(grid, key=grid.get)
    layer, l2 = int(best[5:best.index("_")]), float(best[best.index("_l2") + 3:])
    k = layers.index(layer)
    w, scale = fit_logistic(feats[train, 0, k] - feats[train, 1, k], l2)
    return w, scale, layer, l2, grid


def save_fit_inputs(folder: str, feats, train: list[int], test: list[int], k: int) -> None:
    """The chosen layer's chosen-minus-rejected features the fit and the held-out check read."""
    from pathlib import Path

    from safetensors.torch import save_file

    diffs = feats[:, 0, k] - feats[:, 1, k]
    save_file({"train_diffs": diffs[train].contiguous(), "heldout_diffs": diffs[test].contiguous()},
              str(Path(folder) / FIT_FILE))


def main(cfg: JudgeConfig) -> dict:
    import time

    import torch

    from metaaligner.judge.probe import ProbeJudge, agreement

    start = time.perf_counter()
    torch.set_num_threads(cfg.torch_threads)
    layers = [int(x) for x in cfg.layers.split(",")]
    rows = load_pairs(cfg.input)
    train_ids, test_ids = split_rows(rows, cfg.test_fraction, cfg.max_train_pairs, cfg.seed)
    keep = set(train_ids) | set(test_ids)
    rows = [r for r in rows if r.row_id in keep]  # features only for the pairs used, in id order
    where = {r.row_id: i for i, r in enumerate(rows)}
    train, test = [where[i] for i in train_ids], [where[i] for i in test_ids]
    feats = cached_features(cfg, rows, layers)
    w, scale, layer, l2, grid = choose_and_fit(feats, train, layers, [float(x) for x in cfg.l2.split(",")],
                                               [rows[i].prompt for i in train], cfg.seed)
    k = layers.index(layer)
    held = agreement(((feats[test, 0, k] / scale) @ w).tolist(), ((feats[test, 1, k] / scale) @ w).tolist())
    info = {"model": cfg.model or "embedded", "layer": layer, "l2": l2, "max_tokens": cfg.max_tokens,
            "max_response_tokens": cfg.max_response_tokens, "pooling": "mean over response tokens",
            "input": cfg.input, "seed": cfg.seed, "test_fraction": cfg.test_fraction,
            "max_train_pairs": cfg.max_train_pairs, "layers_tried": layers, "l2_tried": cfg.l2,
            "train_pairs": len(train), "cv_agreement": grid, "heldout": held, "heldout_rows": test_ids,
            "train_rows": train_ids, "made_by": "training/train_offline_judge.py"}
    judge = ProbeJudge(w, scale, info)
    judge.save(cfg.output_dir)
    save_fit_inputs(cfg.output_dir, feats, train, test, k)
    print(f"offline judge: {judge.caption}; {time.perf_counter() - start:.0f}s -> {cfg.output_dir}")
    return info


def make_parser():
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(JudgeConfig, description=__doc__)


if __name__ == "__main__":
    from metaaligner.cli import parse, run_main
    sys.exit(run_main(main, *parse(make_parser())))
