"""The shipped demo aligner: its data slice, its labels, and its held-out check.

The demo is a LoRA adapter on the embedded SmolLM2-135M-Instruct trained by the real pipeline
(reward labelling -> Algorithm 1 -> 3-step curriculum) on a short-sequence slice of the shipped
HH-RLHF harmless-base pairs, small enough for 2 CPU cores. Labels: harmlessness = the human
preference of harmless-base (chosen = 1, rejected = 0; the data set's own annotation of which answer
is more harmless), helpfulness = the offline LLM scorer of ``reward_labelling.py`` (SmolLM2's
logit(Yes) - logit(No), rounded to 1 decimal as released, which creates the ties of the equal set).
It demonstrates that the pipeline runs offline end to end; it is not the paper's 1.1B-13B aligner.
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
    of ``pairs_path``): no training of any kind may see them."""
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


def normalise_text(text: str) -> str:
    return " ".join(str(text).split())


def copy_stats(answers: list[str], edits: list[str]) -> dict[str, Any]:
    """How often the edit differs from a plain copy of the input answer (whitespace-normalised), and
    the mean character-level similarity (difflib ratio) between answer and edit."""
    import difflib

    if len(answers) != len(edits):
        raise ValueError("answers and edits differ in length")
    differs = [normalise_text(a) != normalise_text(e) for a, e in zip(answers, edits)]
    sims = [difflib.SequenceMatcher(None, normalise_text(a), normalise_text(e)).ratio()
            for a, e in zip(answers, edits)]
    n = len(answers)
    return {"rows": n, "differs": sum(differs), "differs_rate": sum(differs) / n if n else None,
            "mean_similarity": sum(sims) / n if n else None,
            "empty_edits": sum(1 for e in edits if not normalise_text(e))}


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


def heldout_policy_rows(path: str | Path, tokenizer, n_rows: int, max_query_tokens: int, max_answer_tokens: int,
                        exclude_prompts: set[str], seed: int = 0) -> list[dict[str, str]]:
    """Up to ``n_rows`` policy outputs (``query``, ``generated_text``) that fit the demo's token limits,
    have a non-empty answer and a query the aligner never saw in training; seeded sample, file order."""
    from metaaligner.io import read_records

    ok = []
    for row in read_records(path):
        query, answer = str(row.get("query") or ""), str(row.get("generated_text") or "")
        if not answer.strip() or query in exclude_prompts:
            continue
        if len(tokenizer(query, add_special_tokens=False)["input_ids"]) > max_query_tokens:
            continue
        if len(tokenizer(answer, add_special_tokens=False)["input_ids"]) > max_answer_tokens:
            continue
        ok.append({"query": query, "answer": answer})
    picked = sorted(random.Random(f"heldout|{seed}").sample(range(len(ok)), min(n_rows, len(ok))))
    return [ok[i] for i in picked]


def text_measures(answers: list[str], outputs: list[str]) -> dict[str, Any]:
    """What a reader can check at a glance: share of outputs that loop (a word 4-gram 3+ times, or a
    sentence of 4+ words twice) or are empty, mean length ratio (output words / answer words, empty
    answers skipped), mean difflib similarity to the answer, share identical to the answer (whitespace-normalised)."""
    import difflib

    from metaaligner.aligner.inference import degenerate_reason

    if len(answers) != len(outputs):
        raise ValueError("answers and outputs differ in length")
    n = len(answers)
    reasons = [degenerate_reason(o) for o in outputs]
    ratios = [len(o.split()) / len(a.split()) for a, o in zip(answers, outputs) if a.split()]
    sims = [difflib.SequenceMatcher(None, normalise_text(a), normalise_text(o)).ratio()
            for a, o in zip(answers, outputs)]
    same = [normalise_text(a) == normalise_text(o) for a, o in zip(answers, outputs)]
    return {"rows": n, "loop_rate": reasons.count("loop") / n if n else None,
            "empty_rate": reasons.count("empty") / n if n else None,
            "length_ratio": sum(ratios) / len(ratios) if ratios else None,
            "similarity": sum(sims) / n if n else None, "copy_rate": sum(same) / n if n else None}


def win_rate(scores_a: list[float], scores_b: list[float], texts_a: list[str], texts_b: list[str]) -> dict[str, Any]:
    """How often A beats B on the judge: wins, ties (same text or same score, counted half), losses,
    rate = (wins + ties / 2) / n with its Wilson 95% interval."""
    from metaaligner.judge.probe import wilson_interval

    wins = ties = 0
    for sa, sb, ta, tb in zip(scores_a, scores_b, texts_a, texts_b):
        if normalise_text(ta) == normalise_text(tb) or sa == sb:
            ties += 1
        elif sa > sb:
            wins += 1
    n = len(scores_a)
    rate = (wins + ties / 2) / n if n else float("nan")
    return {"n": n, "wins": wins, "ties": ties, "losses": n - wins - ties, "rate": rate,
            "ci95": list(wilson_interval(wins + ties / 2, n))}
