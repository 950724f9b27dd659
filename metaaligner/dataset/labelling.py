"""Stage 1's labelling: preference pairs in, one raw score per reward out, merged and normalised.

- ``load_preference_rows``: HH-RLHF transcripts (``chosen``/``rejected``) or ready columns
  (``prompt``/``chosen_response``/``rejected_response``) -> ``PreferenceRow`` list.
- ``label_rows``: raw scores of rows with the scorers that ``rewards.build_scorers`` made.
- ``label_shard``: one process's slice (``metaaligner.sharding``: a shard named by the rows it covers,
  with the scorers' fingerprint), resumable, raw scores plus a status per row.
- ``merge_shards`` / ``finalise``: every input row exactly once, in input order; rounding
  (``--round 1``, the released behaviour that creates ties) then normalisation by the mean/std over
  chosen + rejected; ``reward_stats.json`` beside the output.

Why a merged run writes the same bytes as one process: a shard stores each raw score as JSON (the
float's shortest repr, read back bit for bit), the merge puts the rows back in input order, and the
mean and std are taken over that same list in that same order, so rounding and normalisation see the
same numbers as in one process. What can differ is a raw score itself when its batch-mates differ
(padding changes the order of the sums: up to 5e-5 on SmolLM2); ``--round 1`` (the released rounding,
before normalisation) absorbs that unless a score lies within that distance of a rounding boundary
(x.x5). On the tiny test model the raw scores already agree bit for bit (``tests/test_sharding.py``).

Rows are never written with a made-up score: empty/NaN responses, pairs whose transcript tokenises
to fewer than ``min_tokens`` or more than a scorer's max length, and non-finite scores are dropped,
counted by reason and reported.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from metaaligner.dataset.classifier_scorer import ClassifierScorer
from metaaligner.dataset.llm_scorer import LLMScorer
from metaaligner.dataset.scoring import RULE, Scorer, score_sequences
from metaaligner.distributed import in_input_order, shard_range
from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.sharding import ShardPlan, ShardSet, remove_shards, shard_files  # noqa: F401  (labelling's names)

log = logging.getLogger(__name__)

ASSISTANT_CUE = "\n\nAssistant:"
OK = "ok"
# Row statuses that drop a pair (counted in the stats; never written as rewards).
EMPTY_RESPONSE, NO_ASSISTANT_TURN, TOO_SHORT, TOO_LONG, NAN_SCORE = (
    "empty_response", "no_assistant_turn", "too_short", "too_long", "nan_score")
SHARD_COLUMNS = ["row_id", "status", "chosen", "rejected"]


# ---------------------------------------------------------------- input rows

@dataclass
class PreferenceRow:
    row_id: int                      # 0-based position in the input file
    prompt: str
    chosen_response: str
    rejected_response: str
    status: str = OK                 # OK, EMPTY_RESPONSE or NO_ASSISTANT_TURN after loading
    prompt_mismatch: bool = False    # the rejected transcript's context differs from the chosen one's


def split_transcript(text: str) -> tuple[str, str] | None:
    """An HH-RLHF transcript -> (prompt, response), as released: the prompt is the text before the
    last ``\\n\\nAssistant:``, then ``" \\n\\nAssistant:"`` (the release's
    ``'\\n\\nAssistant:'.join(parts[:-1]) + ' ' + '\\n\\nAssistant:'``: a space before the cue, as in
    every released test query); the response is the text after the cue, stripped. ``None`` without
    that cue."""
    cut = text.rfind(ASSISTANT_CUE)
    if cut < 0:
        return None
    return text[:cut] + " " + ASSISTANT_CUE, text[cut + len(ASSISTANT_CUE):].strip()


def _text(value: Any, path: Path, row: int, column: str) -> str | None:
    """A text cell; ``None`` for a missing/NaN cell (reported as an empty response)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        raise DataError(path, f"expected text, got {type(value).__name__}", row=row, column=column)
    return value


def load_preference_rows(path: str | Path, limit: int | None = None) -> list[PreferenceRow]:
    """Rows of an HH-RLHF JSONL(.gz) (``chosen``/``rejected`` transcripts) or of a CSV/JSONL with
    ``prompt``, ``chosen_response``, ``rejected_response``."""
    from metaaligner.io import read_records

    path = Path(path)
    records = read_records(path)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise DataError(path, "no rows")
    columns = set(records[0])
    ready = {"prompt", "chosen_response", "rejected_response"}
    if ready <= columns:
        mode = "columns"
    elif {"chosen", "rejected"} <= columns:
        mode = "transcripts"
    else:
        raise DataError(path, "needs columns chosen, rejected (HH-RLHF transcripts) or prompt, chosen_response, "
                              f"rejected_response (found: {', '.join(sorted(columns)) or 'none'})")
    rows = []
    for i, rec in enumerate(records):
        if mode == "columns":
            prompt, chosen, rejected = (_text(rec.get(c), path, i + 1, c)
                                        for c in ("prompt", "chosen_response", "rejected_response"))
            row = PreferenceRow(i, prompt or "", (chosen or "").strip(), (rejected or "").strip())
            if chosen is None or rejected is None or not row.chosen_response or not row.rejected_response:
                row.status = EMPTY_RESPONSE
        else:
            chosen, rejected = (_text(rec.get(c), path, i + 1, c) for c in ("chosen", "rejected"))
            if chosen is None or rejected is None:
                rows.append(PreferenceRow(i, "", "", "", status=EMPTY_RESPONSE))
                continue
            a, b = split_transcript(chosen), split_transcript(rejected)
            if a is None or b is None:
                rows.append(PreferenceRow(i, "", "", "", status=NO_ASSISTANT_TURN))
                continue
            # As released: the chosen transcript's context is the prompt of both responses.
            row = PreferenceRow(i, a[0], a[1], b[1], prompt_mismatch=a[0] != b[0])
            if not row.chosen_response or not row.rejected_response:
                row.status = EMPTY_RESPONSE
        rows.append(row)
    return rows


# ---------------------------------------------------------------- one process's share

def shard_path(output: str | Path, rank: int, world: int, n_rows: int) -> Path:
    """``<output>.rows<start>-<stop>of<n>.jsonl``: named by the rows it covers, not the process count,
    so that ``--resume`` at another count finds every finished row (``label_shard``)."""
    from metaaligner import sharding

    return sharding.shard_path(output, shard_range(n_rows, rank, world), n_rows)


def labelling_shards(output: str | Path, rows: list[PreferenceRow], scorers: list[Scorer],
                     min_tokens: int) -> tuple[ShardSet, dict[int, str]]:
    """The shards of ``output`` for these rows and scorers, and each row's input hash."""
    shards = ShardSet(output, len(rows), shard_fingerprint(scorers, min_tokens), SHARD_COLUMNS)
    return shards, {r.row_id: preference_row_hash(r) for r in rows}


def label_rows(rows: list[PreferenceRow], scorers: list[Scorer], batch_size: int = 16, min_tokens: int = 8,
               on_progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Raw scores of ``rows``: ``{"row_id", "status", "chosen": [..], "rejected": [..]}`` per row,
    scores in ``scorers`` order; a row whose status is not ``ok`` carries no scores."""
    results = {r.row_id: {"row_id": r.row_id, "status": r.status, "chosen": [], "rejected": []} for r in rows}
    live = [r for r in rows if r.status == OK]
    # Length filter with every distinct tokenizer, on the transcript (as released).
    checked: dict[tuple[int, int], dict[int, str]] = {}
    for scorer in scorers:
        if scorer.tokenizer is None:  # a rule check reads text: no token limits
            continue
        key = (id(scorer.tokenizer), scorer.max_length)
        if key not in checked:
            verdicts = {}
            for r in live:
                lengths = [scorer.transcript_length(r.prompt, resp)
                           for resp in (r.chosen_response, r.rejected_response)]
                verdicts[r.row_id] = TOO_SHORT if min(lengths) < min_tokens else (
                    TOO_LONG if max(lengths) > scorer.max_length else OK)
            checked[key] = verdicts
        for r in live:
            if results[r.row_id]["status"] == OK and checked[key][r.row_id] != OK:
                results[r.row_id]["status"] = checked[key][r.row_id]
    live = [r for r in live if results[r.row_id]["status"] == OK]
    skipped = (len(rows) - len(live)) * 2 * len(scorers)
    if on_progress and skipped:
        on_progress(skipped)
    columns: dict[int, tuple[list[float], list[float]]] = {}   # scorer position -> (chosen, rejected)
    judges: dict[int, list[int]] = {}                          # LLM scorers sharing one model
    for i, scorer in enumerate(scorers):
        if isinstance(scorer, LLMScorer):
            judges.setdefault(id(scorer.judge), []).append(i)
            continue
        if scorer.kind == RULE:
            columns[i] = ([scorer.score(r.prompt, r.chosen_response) for r in live],
                          [scorer.score(r.prompt, r.rejected_response) for r in live])
            if on_progress:
                on_progress(2 * len(live))
            continue
        sequences = [scorer.encode(r.prompt, resp) for r in live for resp in (r.chosen_response, r.rejected_response)]
        scores = score_sequences(scorer, sequences, batch_size, on_progress)
        columns[i] = (scores[0::2], scores[1::2])
    for members in judges.values():
        judge = scorers[members[0]].judge
        per_pair = judge.score_pairs([(r.prompt, r.chosen_response, r.rejected_response) for r in live],
                                     [scorers[i].description for i in members], batch_size, on_progress)
        for k, i in enumerate(members):
            columns[i] = ([c[k] for c, _ in per_pair], [r[k] for _, r in per_pair])
    for i in range(len(scorers)):
        for k, r in enumerate(live):
            results[r.row_id]["chosen"].append(columns[i][0][k])
            results[r.row_id]["rejected"].append(columns[i][1][k])
    for res in results.values():
        if res["status"] == OK and not all(math.isfinite(s) for s in res["chosen"] + res["rejected"]):
            res["status"], res["chosen"], res["rejected"] = NAN_SCORE, [], []
    return [results[r.row_id] for r in rows]


def label_shard(rows: list[PreferenceRow], scorers: list[Scorer], output: str | Path, rank: int = 0,
                world: int = 1, batch_size: int = 16, chunk_size: int = 512, min_tokens: int = 8,
                resume: bool = False, progress: bool = True, plan: ShardPlan | None = None) -> Path:
    """Score this rank's slice of ``rows`` (``plan``'s, else rank of world) chunk by chunk into
    ``<output>.rows<start>-<stop>of<n>.jsonl`` (appended per chunk, so ``resume`` continues after the
    last finished chunk, also from the shards of a run at another process count; only a run with the
    same scorers, and rows whose texts are unchanged). Returns the shard path."""
    from tqdm.auto import tqdm

    from metaaligner.io import INPUT_HASH

    plan = plan or ShardPlan(rank, world, launched=True)   # one process too writes its (whole) shard
    shards, hashes = labelling_shards(output, rows, scorers, min_tokens)
    writer = shards.open(plan, hashes, resume)
    mine = [rows[i] for i in plan.rows(len(rows))]
    todo = [r for r in mine if not writer.is_done(r.row_id, hashes[r.row_id])]
    if len(todo) < len(mine):
        log.info("%s: resuming, %d of %d rows already scored", plan.label, len(mine) - len(todo), len(mine))
    bar = tqdm(total=len(todo) * 2 * len(scorers), desc=f"score[{plan.label}]" if plan.count > 1 else "score",
               unit="seq", disable=not progress)
    try:
        for start in range(0, len(todo), max(1, chunk_size)):
            chunk = todo[start:start + chunk_size]
            writer.append({**res, INPUT_HASH: hashes[res["row_id"]]}
                          for res in label_rows(chunk, scorers, batch_size, min_tokens, bar.update))
    except BaseException:
        writer.close()
        raise
    finally:
        bar.close()
    writer.finish(order=[r.row_id for r in mine])
    return shards.path(plan)


def shard_fingerprint(scorers: list[Scorer], min_tokens: int) -> dict[str, Any]:
    """What decides a row's scores: each scorer (model, kind, length limit, description) and the filter."""
    from metaaligner.io import folder_identity

    return {"stage": "rewards", "min_tokens": min_tokens,
            "scorers": [{"name": s.name, "kind": s.kind, "model": s.model_name,
                         "model_files": folder_identity(s.model_name),
                         "max_length": s.max_length, "description": getattr(s, "description", None)}
                        for s in scorers]}


def preference_row_hash(row: PreferenceRow) -> str:
    from metaaligner.io import row_hash

    return row_hash({"prompt": row.prompt, "chosen": row.chosen_response, "rejected": row.rejected_response,
                     "status": row.status})


def merge_shards(paths: list[Path], n_rows: int) -> list[dict[str, Any]]:
    """Shard results -> one list in input order; every row id 0..n-1 exactly once, else an error."""
    from metaaligner.io import read_records

    merged: dict[int, dict[str, Any]] = {}
    for path in paths:
        for rec in read_records(path) if path.stat().st_size else []:
            rid = int(rec["row_id"])
            if rid in merged:
                raise MetaAlignerError(f"{path}: row {rid} appears in two shards")
            merged[rid] = rec
    ordered, missing = in_input_order(merged, n_rows)
    if missing or len(merged) != n_rows:
        raise MetaAlignerError(f"shards cover {len(merged)} of {n_rows} rows (missing e.g. {missing[:5]}); "
                               "re-run with --resume")
    return ordered


# ---------------------------------------------------------------- rounding, normalisation, output

@dataclass
class RewardStat:
    name: str
    model: str
    kind: str
    mean: float
    std: float
    description: str | None = None


def normalise_scores(results: list[dict[str, Any]], n_rewards: int, round_digits: int | None = 1,
                     normalize: bool = True) -> tuple[list[list[float]], list[list[float]], list[tuple[float, float]]]:
    """Per reward: round the raw scores (``round_digits``; None/negative = off), then z-score them with
    the population mean/std over chosen + rejected of the kept rows. Returns (chosen, rejected, stats)
    with ``chosen[i][k]`` = reward i of kept row k."""
    import numpy as np

    kept = [r for r in results if r["status"] == OK]
    chosen_out, rejected_out, stats = [], [], []
    for i in range(n_rewards):
        c = [float(r["chosen"][i]) for r in kept]
        rj = [float(r["rejected"][i]) for r in kept]
        if round_digits is not None and round_digits >= 0:
            c, rj = [round(x, round_digits) for x in c], [round(x, round_digits) for x in rj]
        both = np.array(c + rj, dtype=np.float64)
        mean = float(both.mean()) if len(both) else 0.0
        std = float(both.std()) if len(both) else 0.0
        if normalize:
            div = std if std > 0 else 1.0
            if std == 0 and kept:
                log.warning("reward %d has zero spread over %d rows; written as score - mean", i + 1, len(kept))
            c = [float((x - mean) / div) for x in c]
            rj = [float((x - mean) / div) for x in rj]
        chosen_out.append(c)
        rejected_out.append(rj)
        stats.append((mean, std))
    return chosen_out, rejected_out, stats


def stats_path_for(output: str | Path) -> Path:
    """``runs/rewards.csv`` -> ``runs/rewards.reward_stats.json`` (beside the output, whatever its folder)."""
    output = Path(output)
    name = output.name
    for suffix in (".csv.gz", ".jsonl.gz", ".csv", ".jsonl", ".json"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return output.with_name(f"{name}.reward_stats.json")


def output_columns(n_rewards: int) -> list[str]:
    return (["prompt", "chosen_response", "rejected_response"]
            + [f"chosen_score{i + 1}" for i in range(n_rewards)]
            + [f"rejected_score{i + 1}" for i in range(n_rewards)])


def finalise(rows: list[PreferenceRow], results: list[dict[str, Any]], scorers_info: list[dict[str, Any]],
             output: str | Path, round_digits: int | None = 1, normalize: bool = True,
             extra_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the output CSV (kept rows, input order) and ``reward_stats.json``; return the stats."""
    from metaaligner.io import write_csv, write_json, write_jsonl

    n = len(scorers_info)
    chosen, rejected, moments = normalise_scores(results, n, round_digits, normalize)
    kept_rows = [row for row, res in zip(rows, results) if res["status"] == OK]
    table = []
    for k, row in enumerate(kept_rows):
        rec = {"prompt": row.prompt, "chosen_response": row.chosen_response,
               "rejected_response": row.rejected_response}
        for i in range(n):
            rec[f"chosen_score{i + 1}"] = chosen[i][k]
            rec[f"rejected_score{i + 1}"] = rejected[i][k]
        table.append(rec)
    output = Path(output)
    if output.name.lower().endswith((".jsonl", ".jsonl.gz")):
        write_jsonl(output, table)
    else:
        write_csv(output, table, output_columns(n))
    dropped = Counter(res["status"] for res in results if res["status"] != OK)
    reported = {reason: [res["row_id"] for res in results if res["status"] == reason][:50]
                for reason in (EMPTY_RESPONSE, NAN_SCORE, NO_ASSISTANT_TURN) if dropped.get(reason)}
    stats = {
        "rewards": [dict(info, mean=m, std=s) for info, (m, s) in zip(scorers_info, moments)],
        "round": round_digits if round_digits is not None and round_digits >= 0 else None,
        "normalized": normalize,
        "rows_in": len(rows),
        "rows_out": len(table),
        "dropped": dict(sorted(dropped.items())),
        "dropped_row_ids": reported,
        "prompt_mismatch_kept": sum(r.prompt_mismatch for r, res in zip(rows, results) if res["status"] == OK),
        "output": str(output),
    }
    stats.update(extra_stats or {})
    write_json(stats_path_for(output), stats)
    return stats


def scorer_info(scorer: Scorer) -> dict[str, Any]:
    info = {"name": scorer.name, "model": scorer.model_name, "kind": scorer.kind, "max_length": scorer.max_length}
    if isinstance(scorer, LLMScorer):
        info["description"] = scorer.description
    elif isinstance(scorer, ClassifierScorer):
        info["label"] = scorer.label
    return info
