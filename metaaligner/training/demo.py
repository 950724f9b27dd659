"""The shipped demo aligner's helpers: data slices, labels, the objective-withheld ablation's data,
the loss curve.

The shipped aligner (``scripts/train_demo_aligner.sh``) is a LoRA adapter on the embedded
SmolLM2-135M-Instruct trained by the project's own stages on damaged vs clean answers labelled by the
rule scorers; ``evaluation/edit_bench.py`` measures it. ``select_short_pairs`` and
``add_human_preference`` build the harmless-base slice of the human-preference recipe (stage 1 of
``scripts/reproduce_demo.sh`` style data, harmlessness = the human label). A 135M demonstration,
not the paper's 1.1B-13B aligners.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from metaaligner.errors import MetaAlignerError


def select_short_pairs(path: str | Path, tokenizer, n_pairs: int, max_prompt_tokens: int, max_response_tokens: int,
                       seed: int = 0, exclude_prompts: set[str] | None = None) -> tuple[list[dict], dict[str, int]]:
    """Up to ``n_pairs`` usable pairs whose prompt / responses fit the token limits, seeded sample,
    returned in input order with their row index; plus counts of rows skipped by reason."""
    from metaaligner.dataset.rewards import load_preference_rows

    rows = load_preference_rows(path)
    skipped: dict[str, int] = {}
    keep = []
    for row in rows:
        reason = None
        if getattr(row, "status", None) not in (None, "", "ok"):
            reason = str(row.status)
        elif getattr(row, "prompt_mismatch", False):
            reason = "prompt_mismatch"
        elif row.chosen_response == row.rejected_response:
            reason = "identical_responses"
        elif exclude_prompts and row.prompt in exclude_prompts:
            reason = "excluded_prompt"
        else:
            p = len(tokenizer(row.prompt, add_special_tokens=False)["input_ids"])
            c = len(tokenizer(row.chosen_response, add_special_tokens=False)["input_ids"])
            r = len(tokenizer(row.rejected_response, add_special_tokens=False)["input_ids"])
            if p > max_prompt_tokens:
                reason = "prompt_too_long"
            elif max(c, r) > max_response_tokens:
                reason = "response_too_long"
            elif min(c, r) < 2:
                reason = "response_too_short"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        keep.append(row)
    if not keep:
        raise MetaAlignerError(f"{path}: no pair fits the limits (skipped: {skipped})")
    chosen = sorted(random.Random(f"demo|{seed}").sample(range(len(keep)), min(n_pairs, len(keep))))
    skipped["not_sampled"] = len(keep) - len(chosen)
    out = [{"source_row": keep[i].row_id if hasattr(keep[i], "row_id") else i, "prompt": keep[i].prompt,
            "chosen_response": keep[i].chosen_response, "rejected_response": keep[i].rejected_response}
           for i in chosen]
    return out, skipped


def heldout_prompts(probe_json: str | Path, pairs_path: str | Path) -> set[str]:
    """The prompts of the offline judge's held-out rows (``heldout_rows`` of its probe.json, row ids
    of ``pairs_path``), to keep out of a training slice."""
    import json

    from metaaligner.dataset.rewards import load_preference_rows

    info = json.loads(Path(probe_json).read_text(encoding="utf-8"))
    if Path(info.get("input", "")).name != Path(pairs_path).name:
        raise MetaAlignerError(f"{probe_json}: held-out rows are of {info.get('input')}, not {pairs_path}")
    ids = set(info["heldout_rows"])
    return {r.prompt for r in load_preference_rows(pairs_path) if r.row_id in ids}


def add_human_preference(rows: list[dict[str, Any]], position: int = 1) -> list[dict[str, Any]]:
    """Insert the human preference as score ``position`` (1-based): chosen 1.0, rejected 0.0; the
    existing ``chosen_score{i}``/``rejected_score{i}`` columns at or after it shift up by one."""
    out = []
    for row in rows:
        n = sum(1 for k in row if k.startswith("chosen_score"))
        new = {k: v for k, v in row.items() if not k.startswith(("chosen_score", "rejected_score"))}
        scores = [(row[f"chosen_score{i}"], row[f"rejected_score{i}"]) for i in range(1, n + 1)]
        scores.insert(position - 1, (1.0, 0.0))
        for i, (c, r) in enumerate(scores, start=1):
            new[f"chosen_score{i}"], new[f"rejected_score{i}"] = c, r
        out.append(new)
    return out


def blind_data_folder(src: str | Path, dst: str | Path) -> int:
    """A copy of a build_aligner_dataset.py folder whose prompts carry ``NO_OBJECTIVE_TEXT`` instead
    of the objective descriptions (the "same training without the objective text" ablation).
    Returns the number of items rewritten."""
    import json
    import shutil

    from metaaligner.io import atomic_folder, read_records, write_json
    from metaaligner.registry.templates import get_template, withhold_aspects

    src = Path(src)
    stats = json.loads((src / "stats.json").read_text(encoding="utf-8"))
    template = get_template(stats["template"])
    n = 0
    with atomic_folder(Path(dst)) as tmp:
        for path in sorted(src.rglob("*.json")):
            out = Path(tmp) / path.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            if path.name == "stats.json":
                shutil.copyfile(path, out)
                continue
            items = read_records(path)
            for item in items:
                turn = item["conversations"][0]
                turn["value"] = withhold_aspects(template, turn["value"])
                n += 1
            write_json(out, items)
        write_json(Path(tmp) / "blind.json", {"source": str(src), "objective_text": "withheld"})
    return n


def copy_stats(answers: list[str], edits: list[str]) -> dict[str, Any]:
    """How often the edit differs from a plain copy of the input answer (whitespace-normalised), and
    the mean character-level similarity (difflib ratio) between answer and edit."""
    import difflib

    from metaaligner.io import normalise_space

    if len(answers) != len(edits):
        raise ValueError("answers and edits differ in length")
    differs = [normalise_space(a) != normalise_space(e) for a, e in zip(answers, edits)]
    sims = [difflib.SequenceMatcher(None, normalise_space(a), normalise_space(e)).ratio()
            for a, e in zip(answers, edits)]
    n = len(answers)
    return {"rows": n, "differs": sum(differs), "differs_rate": sum(differs) / n if n else None,
            "mean_similarity": sum(sims) / n if n else None,
            "empty_edits": sum(1 for e in edits if not normalise_space(e))}


def plot_loss_curve(log_path: str | Path, png_path: str | Path, title: str) -> Path:
    """Training loss per optimizer step, one colour per stage, steps concatenated across stages."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(x) for x in Path(log_path).read_text(encoding="utf-8").splitlines() if x.strip()]
    records = [r for r in records if "step" in r and "event" not in r]  # per-step events, not stage summaries
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    offset = 0
    for stage in ("warmup", "equal", "contrastive"):
        points = [(r["step"], r["loss"]) for r in records if r.get("stage") == stage and "loss" in r]
        evals = [(r["step"], r["eval_loss"]) for r in records if r.get("stage") == stage and "eval_loss" in r]
        if not points:
            continue
        line, = ax.plot([offset + s for s, _ in points], [v for _, v in points], marker="o", ms=3,
                        label=f"{stage}: train")
        if evals:
            ax.scatter([offset + s for s, _ in evals], [v for _, v in evals], marker="x", s=40,
                       color=line.get_color(), label=f"{stage}: no_equal/val")
        offset += max(r["step"] for r in records if r.get("stage") == stage)
        ax.axvline(offset, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("optimizer step (stages concatenated)")
    ax.set_ylabel("loss (target tokens)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)
    return Path(png_path)
