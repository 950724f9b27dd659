"""SePO (Yang et al., "Selective Preference Optimization via Token-Level Reward Function Estimation"):
token-level rewards from a DPO-trained oracle, key-token selection, and the selection dataset file.

Token reward of response token y_t (no beta, as in the issue):

    r(y_t) = log pi_oracle(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)

Position shift: the logit at absolute position p - 1 predicts the token at position p, so response
token j (absolute position len(prompt) + j) is scored from the logits at len(prompt) + j - 1.

Selection with ratio k: in a chosen response of N tokens keep the floor(k * N) tokens of highest
reward; in a rejected response keep the floor(k * N) tokens of lowest reward. A pair where either side
selects zero tokens is skipped (and counted).

Tokenisation mirrors TRL's ``DPOTrainer`` (EOS appended to each response, the prompt/response split
at the common prefix of tokenize(prompt) and tokenize(prompt + response)), so the scored tokens are
the tokens the DPO oracle was trained on and the tokens the policy trainer supervises.

Scoring is batched (sequences sorted by length, right-padded per batch) and sharded as every row-wise
stage is (``metaaligner.sharding``): under ``torchrun``/``accelerate launch`` each rank writes the shard
of its rows, rank 0 merges every row exactly once, in input order; ``--shard I/N`` jobs write one shard
each and ``--merge`` joins them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from metaaligner.distributed import length_sorted_batches
from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.io import OUTPUT_COLUMNS

log = logging.getLogger(__name__)

OUTPUT_FIELDS = ("chosen_token_rewards", "rejected_token_rewards", "chosen_selected", "rejected_selected")
ZERO_TOKENS = "zero tokens selected"


# ---------------------------------------------------------------- tokenisation (as TRL's DPOTrainer)

def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_pair(tokenizer, prompt: str, chosen: str, rejected: str, add_eos: bool = True
                  ) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids) exactly as TRL's ``DPOTrainer`` tokenises a text pair."""
    eos = tokenizer.eos_token or ""
    if add_eos and eos:
        chosen = chosen if chosen.endswith(eos) else chosen + eos
        rejected = rejected if rejected.endswith(eos) else rejected + eos
    prompt_ids = tokenizer(prompt)["input_ids"]
    chosen_full = tokenizer(prompt + chosen)["input_ids"]
    rejected_full = tokenizer(prompt + rejected)["input_ids"]
    n = min(common_prefix_length(prompt_ids, chosen_full), common_prefix_length(prompt_ids, rejected_full))
    return list(prompt_ids[:n]), list(chosen_full[n:]), list(rejected_full[n:])


def truncate_response(prompt_len: int, response_ids: list[int], max_length: int | None) -> list[int]:
    """Keep-start truncation of prompt + response at ``max_length`` (what TRL's collator does)."""
    if max_length is None:
        return response_ids
    return response_ids[:max(0, max_length - prompt_len)]


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the vocabulary and the EOS token: equal fingerprints mean token ids mean the same text."""
    vocab = sorted(tokenizer.get_vocab().items())
    payload = json.dumps({"vocab": vocab, "eos": tokenizer.eos_token}, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def check_same_tokenizer(first, second, first_name: str, second_name: str) -> None:
    """Refuse models that do not share a tokenizer: SePO compares log-probs token by token."""
    a, b = tokenizer_fingerprint(first), tokenizer_fingerprint(second)
    if a != b:
        raise MetaAlignerError(
            f"tokenizer mismatch: {first_name} (vocab {len(first)}, fingerprint {a}) and {second_name} "
            f"(vocab {len(second)}, fingerprint {b}) must share one tokenizer, because SePO compares "
            "log-probabilities token by token; use an oracle from the same model family as the policy")


# ---------------------------------------------------------------- token log-probs and rewards

def response_logprobs(model, sequences: list[tuple[list[int], list[int]]], pad_token_id: int,
                      device) -> list[list[float]]:
    """Per-token log pi(y_j | x, y_<j) of each response, for one right-padded batch.

    ``sequences`` holds (prompt_ids, response_ids) with a non-empty prompt. The logit at absolute
    position p - 1 predicts the token at p, so response token j uses row ``len(prompt) + j - 1``.
    """
    import torch

    lengths = [len(p) + len(r) for p, r in sequences]
    width = max(lengths)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (prompt, response) in enumerate(sequences):
        ids = prompt + response
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, :len(ids)] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
        # shift: logits[:, t] scores input_ids[:, t + 1]
        logps = gather_logprobs(logits[:, :-1], input_ids[:, 1:]).cpu()
    out = []
    for i, (prompt, response) in enumerate(sequences):
        start = len(prompt) - 1
        out.append(logps[i, start:start + len(response)].tolist())
    return out


def gather_logprobs(logits, token_ids):
    """log softmax(logits)[token] in float32, one row at a time (never a float32 copy of the whole
    batch's logits): logit[token] - logsumexp(logits)."""
    import torch

    out = torch.empty(token_ids.shape, dtype=torch.float32, device=logits.device)
    for i in range(logits.size(0)):
        row = logits[i].float()
        out[i] = row.gather(-1, token_ids[i].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(row, dim=-1)
    return out


def token_rewards(oracle, reference, sequences: list[tuple[list[int], list[int]]], pad_token_id: int,
                  device, batch_size: int = 16) -> list[list[float]]:
    """r(y_t) = log pi_oracle - log pi_ref for every response token, in input order."""
    out: list[list[float] | None] = [None] * len(sequences)
    lengths = [len(p) + len(r) for p, r in sequences]
    for batch in length_sorted_batches(lengths, batch_size):
        seqs = [sequences[i] for i in batch]
        oracle_lp = response_logprobs(oracle, seqs, pad_token_id, device)
        ref_lp = response_logprobs(reference, seqs, pad_token_id, device)
        for i, o, r in zip(batch, oracle_lp, ref_lp):
            out[i] = [a - b for a, b in zip(o, r)]
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------- selection

def selection_count(n_tokens: int, ratio: float) -> int:
    """floor(k * N), robust to float error (0.3 * 10 is 3.0000000000000004, 0.29 * 100 is 28.999...)."""
    return math.floor(round(ratio * n_tokens, 9))


def check_ratio(ratio: float) -> float:
    if not (0.0 < ratio <= 1.0):
        raise MetaAlignerError(f"--ratio must be in (0, 1], got {ratio}")
    return ratio


def select_top(rewards: Sequence[float], ratio: float) -> list[int]:
    """Positions of the floor(k * N) highest rewards (ties: earlier position first), ascending."""
    n = selection_count(len(rewards), ratio)
    order = sorted(range(len(rewards)), key=lambda j: (-rewards[j], j))
    return sorted(order[:n])


def select_bottom(rewards: Sequence[float], ratio: float) -> list[int]:
    """Positions of the floor(k * N) lowest rewards (ties: earlier position first), ascending."""
    n = selection_count(len(rewards), ratio)
    order = sorted(range(len(rewards)), key=lambda j: (rewards[j], j))
    return sorted(order[:n])


def select_row(row: dict[str, Any], ratio: float) -> dict[str, Any]:
    """The row with ``chosen_selected`` (top k) and ``rejected_selected`` (bottom k) from its rewards."""
    out = dict(row)
    out["chosen_selected"] = select_top(row["chosen_token_rewards"], ratio)
    out["rejected_selected"] = select_bottom(row["rejected_token_rewards"], ratio)
    return out


@dataclass
class SelectionResult:
    rows: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    skip_reasons: Counter = field(default_factory=Counter)
    selected_tokens: int = 0
    total_tokens: int = 0

    @property
    def selected_share(self) -> float:
        return self.selected_tokens / self.total_tokens if self.total_tokens else 0.0

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skip_reasons.items())) or "none"
        return (f"{len(self.rows)} rows kept, {len(self.skipped)} skipped ({reasons}); "
                f"{self.selected_tokens}/{self.total_tokens} response tokens selected ({self.selected_share:.1%})")


def apply_selection(rows: Iterable[dict[str, Any]], ratio: float) -> SelectionResult:
    """Select tokens in every scored row; rows where either side selects zero tokens are skipped
    and counted (``ZERO_TOKENS``); rows without rewards keep their ``skip_reason``."""
    check_ratio(ratio)
    result = SelectionResult(rows=[])
    for row in rows:
        if row.get("chosen_token_rewards") is None or row.get("rejected_token_rewards") is None:
            result.skipped.append(row)
            result.skip_reasons[row.get("skip_reason") or "not scored"] += 1
            continue
        selected = select_row(row, ratio)
        result.total_tokens += len(row["chosen_token_rewards"]) + len(row["rejected_token_rewards"])
        if not selected["chosen_selected"] or not selected["rejected_selected"]:
            selected.update(chosen_selected=[], rejected_selected=[], skip_reason=ZERO_TOKENS)
            result.skipped.append(selected)
            result.skip_reasons[ZERO_TOKENS] += 1
            continue
        selected.pop("skip_reason", None)
        result.selected_tokens += len(selected["chosen_selected"]) + len(selected["rejected_selected"])
        result.rows.append(selected)
    return result


# ---------------------------------------------------------------- the selection file

def sidecar_paths(output: str | Path) -> tuple[Path, Path]:
    """``selected.jsonl`` -> (``selected.skipped.jsonl``, ``selected.meta.json``)."""
    output = Path(output)
    stem = output.name[:-len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(stem + ".skipped.jsonl"), output.with_name(stem + ".meta.json")


def read_pairs(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    from metaaligner.io import read_table

    rows = read_table(path, required=["prompt", "chosen", "rejected"])
    return rows[:limit] if limit else rows


def read_selection(path: str | Path, ratio: float | None = None,
                   ) -> tuple[list[dict[str, Any]], dict[str, Any], SelectionResult | None]:
    """Rows of a selection file ready for training, its meta (``{}`` if absent), and the re-selection
    result when ``ratio`` is given (then the skipped sidecar's scored rows are re-selected too)."""
    from metaaligner.io import read_records

    path = Path(path)
    rows = read_records(path)
    for i, row in enumerate(rows, start=1):
        for key in ("prompt", "chosen", "rejected", *OUTPUT_FIELDS):
            if key not in row:
                raise DataError(path, "missing field (is this a select_tokens.py output?)", row=i, column=key)
    skipped_path, meta_path = sidecar_paths(path)
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    if ratio is None:
        kept = [r for r in rows if r["chosen_selected"] and r["rejected_selected"]]
        return kept, meta, None
    extra = read_records(skipped_path) if skipped_path.exists() and skipped_path.stat().st_size else []
    every = sorted(rows + extra, key=lambda r: r.get("row_id", 0))
    result = apply_selection(every, ratio)
    return result.rows, meta, result


def _tokenizer_source(path: str) -> str:
    """The folder holding the tokenizer of a model folder or of a PEFT adapter folder."""
    from metaaligner.models import _adapter_base, resolve_model_path

    path = resolve_model_path(path)
    if (Path(path) / "adapter_config.json").exists() and not (Path(path) / "tokenizer_config.json").exists():
        return _adapter_base(path)
    return path


def load_scoring_tokenizer(path: str):
    from metaaligner.models import load_tokenizer

    return load_tokenizer(_tokenizer_source(path), padding_side="right")


@dataclass
class ScoringStats:
    rows_in: int = 0
    rows_scored: int = 0
    tokens: int = 0
    seconds: float = 0.0


def prepare_rows(pairs: list[dict[str, Any]], tokenizer, max_length: int | None, add_eos: bool
                 ) -> list[dict[str, Any]]:
    """Tokenised pairs with ``row_id``; rows that cannot be scored carry a ``skip_reason``."""
    out = []
    for row_id, pair in enumerate(pairs):
        prompt_ids, chosen_ids, rejected_ids = tokenize_pair(tokenizer, pair["prompt"], pair["chosen"],
                                                             pair["rejected"], add_eos=add_eos)
        item = {"row_id": row_id, "prompt_ids": prompt_ids,
                "chosen_ids": truncate_response(len(prompt_ids), chosen_ids, max_length),
                "rejected_ids": truncate_response(len(prompt_ids), rejected_ids, max_length)}
        if not prompt_ids:
            item["skip_reason"] = "empty prompt"
        elif max_length is not None and len(prompt_ids) >= max_length:
            item["skip_reason"] = "prompt fills max_length"
        elif not item["chosen_ids"] or not item["rejected_ids"]:
            item["skip_reason"] = "empty response"
        out.append(item)
    return out


def scoring_fingerprint(oracle_path: str, reference_path: str, max_length: int | None, add_eos: bool,
                        tokenizer) -> dict[str, Any]:
    """What decides a row's token rewards: the two models, the tokenizer and the length rule."""
    from metaaligner.io import folder_identity

    return {"stage": "sepo_scores", "oracle": str(oracle_path), "oracle_files": folder_identity(oracle_path),
            "reference": str(reference_path), "reference_files": folder_identity(reference_path),
            "tokenizer": tokenizer_fingerprint(tokenizer), "max_length": max_length, "add_eos": add_eos}


def scoring_shards(pairs: list[dict[str, Any]], output: str | Path, fingerprint: dict[str, Any]):
    """(the shards of ``output``, each pair's input hash by row id)."""
    from metaaligner.io import row_hash
    from metaaligner.sharding import ShardSet

    return ShardSet(output, len(pairs), fingerprint, []), {i: row_hash(p) for i, p in enumerate(pairs)}


def _legacy_partials(output: Path) -> list[Path]:
    """Partial files an older version wrote (``<output>.shard{rank}of{world}.partial.jsonl``)."""
    from metaaligner.io import glob_escape

    return sorted(output.parent.glob(f"{glob_escape(output.name)}.shard*of*.partial.jsonl"))


def _read_legacy(output: Path) -> dict[int, dict[str, Any]]:
    """Every complete row of those partial files, by row_id (they carry no settings: reused as they were)."""
    done: dict[int, dict[str, Any]] = {}
    for part in _legacy_partials(output):
        for line in part.read_bytes().split(b"\n"):
            try:
                row = json.loads(line.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                continue  # a line cut short by a kill
            done[int(row["row_id"])] = row
    return done


def clear_partials(output: str | Path) -> None:
    """Remove every shard of ``output`` (finished or partial, any process count) and older partial files."""
    from metaaligner.sharding import remove_shards

    remove_shards(output)
    for part in _legacy_partials(Path(output)):
        part.unlink()


def _load_scorers(oracle_path: str, reference_path: str, device: str | None, dtype: str | None, models):
    """(oracle, reference, device); ``models`` = (oracle, reference, tokenizer) skips loading."""
    if models is not None:
        return models[0], models[1], device or next(models[0].parameters()).device
    from metaaligner.models import load_causal_lm

    oracle, _, device = load_causal_lm(oracle_path, device=device, dtype=dtype)
    reference, _, device = load_causal_lm(reference_path, device=device, dtype=dtype)
    return oracle, reference, device


def scoring_tokenizer(oracle_path: str, reference_path: str):
    """The oracle's tokenizer, checked to be the reference's."""
    oracle_tok = load_scoring_tokenizer(oracle_path)
    check_same_tokenizer(oracle_tok, load_scoring_tokenizer(reference_path), f"oracle {oracle_path}",
                         f"reference {reference_path}")
    return oracle_tok


def score_items(items: list[dict[str, Any]], oracle, reference, pad_id: int, device, batch_size: int,
                stats: ScoringStats) -> list[dict[str, Any]]:
    """Shard records of prepared rows: token rewards (6 decimals) or the ``skip_reason``."""
    scorable = [it for it in items if "skip_reason" not in it]
    seqs = []
    for it in scorable:
        seqs += [(it["prompt_ids"], it["chosen_ids"]), (it["prompt_ids"], it["rejected_ids"])]
    rewards = token_rewards(oracle, reference, seqs, pad_id, device, batch_size) if seqs else []
    by_id = {it["row_id"]: {"row_id": it["row_id"], **({"skip_reason": it["skip_reason"]} if "skip_reason" in it
                                                         else {})} for it in items}
    for k, it in enumerate(scorable):
        by_id[it["row_id"]]["chosen_token_rewards"] = [round(x, 6) for x in rewards[2 * k]]
        by_id[it["row_id"]]["rejected_token_rewards"] = [round(x, 6) for x in rewards[2 * k + 1]]
        stats.tokens += len(it["prompt_ids"]) * 2 + len(it["chosen_ids"]) + len(it["rejected_ids"])
    stats.rows_scored += len(scorable)
    return list(by_id.values())


def score_shard(pairs: list[dict[str, Any]], oracle_path: str, reference_path: str, output: str | Path,
                rank: int = 0, world: int = 1, batch_size: int = 16, max_length: int | None = 1024,
                add_eos: bool = True, resume: bool = False, device: str | None = None,
                dtype: str | None = None, progress: bool = True, models=None, plan=None) -> ScoringStats:
    """Score this process's rows (``plan``'s slice, else ``rank`` of ``world``) into its shard
    ``<output>.rows<a>-<b>of<n>.jsonl`` (``metaaligner.sharding``; ``resume`` reuses the finished rows
    of every shard with the same models and settings, any process count).

    ``models`` = (oracle, reference, tokenizer) skips loading (tests, benchmarks).
    """
    from tqdm import tqdm

    from metaaligner.io import INPUT_HASH
    from metaaligner.sharding import ShardPlan

    output, plan = Path(output), plan or ShardPlan(rank, world, launched=True)
    tok = models[2] if models is not None else scoring_tokenizer(oracle_path, reference_path)
    shards, hashes = scoring_shards(pairs, output, scoring_fingerprint(oracle_path, reference_path, max_length,
                                                                      add_eos, tok))
    writer = shards.open(plan, hashes, resume)
    legacy = [{**row, INPUT_HASH: hashes[i]} for i, row in _read_legacy(output).items()
              if i in plan.rows(len(pairs)) and not writer.is_done(i)] if resume else []
    if legacy:  # rows of an older version's partial files (they carry no settings: reused, as that version did)
        writer.append(legacy)
    mine = [i for i in plan.rows(len(pairs)) if not writer.is_done(i, hashes[i])]
    stats = ScoringStats(rows_in=len(mine))
    if mine:
        oracle, reference, device = _load_scorers(oracle_path, reference_path, device, dtype, models)
        items = prepare_rows([pairs[i] for i in mine], tok, max_length, add_eos)
        for item, row_id in zip(items, mine):
            item["row_id"] = row_id
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        chunk = max(1, batch_size) * 8  # pairs per resumable write; length-sorted batches inside
        start = time.time()
        bar = tqdm(total=len(items), desc=f"scoring tokens ({plan.label})", disable=not progress, unit="pair")
        try:
            for s in range(0, len(items), chunk):
                records = score_items(items[s:s + chunk], oracle, reference, pad_id, device, batch_size, stats)
                writer.append({**rec, INPUT_HASH: hashes[rec["row_id"]]} for rec in records)
                bar.update(len(records))
        except BaseException:
            writer.close()
            raise
        finally:
            bar.close()
        stats.seconds = time.time() - start
    writer.finish(order=list(plan.rows(len(pairs))))
    return stats


def merge_selection(pairs: list[dict[str, Any]], output: str | Path, ratio: float,
                    meta: dict[str, Any] | None = None, fingerprint: dict[str, Any] | None = None,
                    paths: list[Path] | None = None) -> SelectionResult:
    """Merge the shards (``paths``, else every shard of ``output`` there is) in input order, checked
    (``sharding.ShardSet.collect``: made with ``fingerprint``, else one fingerprint they all share;
    every row there), select tokens, write ``output`` (kept rows), the ``.skipped.jsonl`` sidecar
    (rows skipped, rewards kept so another k can use them) and ``.meta.json``; remove the shards."""
    from metaaligner.io import write_json, write_jsonl
    from metaaligner.sharding import finished_fingerprint, shard_files

    output = Path(output)
    if fingerprint is None:
        made = {json.dumps(fp, sort_keys=True) for p in shard_files(output, len(pairs))
                if (fp := finished_fingerprint(p)) is not None}
        fingerprint = json.loads(made.pop()) if len(made) == 1 else {}
    shards, hashes = scoring_shards(pairs, output, fingerprint)
    scored = shards.collect(hashes, paths)
    rows = []
    for row_id, pair in enumerate(pairs):
        rec = scored[row_id]
        row = {**pair, "row_id": row_id}
        if "skip_reason" in rec:
            row["skip_reason"] = rec["skip_reason"]
        else:
            row["chosen_token_rewards"] = rec["chosen_token_rewards"]
            row["rejected_token_rewards"] = rec["rejected_token_rewards"]
        rows.append(row)
    result = apply_selection(rows, ratio)
    skipped_path, meta_path = sidecar_paths(output)
    write_jsonl(output, result.rows)
    write_jsonl(skipped_path, result.skipped)
    write_json(meta_path, {**(meta or {}), "ratio": ratio, "rows_in": len(pairs), "rows_out": len(result.rows),
                           "skipped": dict(result.skip_reasons), "selected_tokens": result.selected_tokens,
                           "response_tokens": result.total_tokens,
                           "selected_share": round(result.selected_share, 6)})
    clear_partials(output)
    return result


def run_selection(input_path: str | Path, oracle_path: str, reference_path: str, output: str | Path,
                  ratio: float = 0.3, batch_size: int = 16, max_length: int | None = 1024, add_eos: bool = True,
                  resume: bool = False, limit: int | None = None, dtype: str | None = None,
                  plan=None) -> SelectionResult | None:
    """The whole selection step, sharded as ``metaaligner.sharding`` says: one process; the ranks of
    ``torchrun``/``accelerate launch`` (rank 0 merges); ``plan`` from ``--shard I/N`` (writes its shard
    and returns ``None``) or ``--merge`` (merges the shards there are, scores nothing).

    Returns the selection where the output was written (``None`` on the other processes)."""
    from metaaligner.sharding import plan_shards, rank_device

    check_ratio(ratio)
    plan = plan or plan_shards()
    pairs = read_pairs(input_path, limit)
    tok = scoring_tokenizer(oracle_path, reference_path)
    fingerprint = scoring_fingerprint(oracle_path, reference_path, max_length, add_eos, tok)
    stats = ScoringStats()
    if not plan.merge:
        stats = score_shard(pairs, oracle_path, reference_path, output, batch_size=batch_size, max_length=max_length,
                            add_eos=add_eos, resume=resume, device=rank_device(None, plan), dtype=dtype,
                            plan=plan if plan.sharded else None)
    shards, _ = scoring_shards(pairs, output, fingerprint)
    if plan.sharded and not plan.merges_after:
        print(f"select_tokens[{plan.label}]: scored {stats.rows_scored} rows -> {shards.path(plan)}")
        return None
    paths = None
    if not plan.merge:
        paths = shards.run_paths(plan) if plan.sharded else [shards.path(plan)]
        shards.wait(paths)
    meta = {"input": str(input_path), "oracle": oracle_path, "reference": reference_path,
            "max_length": max_length, "add_eos": add_eos, "tokenizer_fingerprint": tokenizer_fingerprint(tok),
            "processes": plan.count}
    result = merge_selection(pairs, output, ratio, meta, fingerprint, paths)
    rate = stats.tokens / stats.seconds if stats.seconds else 0.0
    print(f"select_tokens: {len(pairs)} pairs in, {result.summary()}; this process scored {stats.rows_scored} rows, "
          f"{stats.tokens} tokens in {stats.seconds:.1f}s ({rate:.0f} tokens/s, x2 models) -> {output}")
    return result


# ---------------------------------------------------------------- preference pairs from transcripts

def split_transcript_pair(chosen: str, rejected: str, marker: str = "\n\nAssistant:") -> dict[str, str] | None:
    """HH-RLHF style (chosen, rejected) transcripts -> {prompt, chosen, rejected}: the prompt is the
    shared text before the last ``marker``, then ``" " + marker`` (a space before the cue, as in the
    released test queries SePO inference is given, so training and test prompts agree); None if they
    share no such prefix."""
    n = common_prefix_length(chosen, rejected)
    cut = chosen.rfind(marker, 0, n)
    if cut < 0:
        return None
    end = cut + len(marker)
    return {"prompt": chosen[:cut] + " " + marker, "chosen": chosen[end:], "rejected": rejected[end:]}


def subsample(rows: list[dict[str, Any]], fraction: float = 1.0, seed: int = 0, limit: int | None = None
              ) -> list[dict[str, Any]]:
    """A seeded random share of ``rows`` (input order kept), then at most ``limit`` rows: the oracle
    is trained on a small part of the data."""
    import random

    if not (0.0 < fraction <= 1.0):
        raise MetaAlignerError(f"--fraction must be in (0, 1], got {fraction}")
    if fraction < 1.0:
        n = max(1, round(fraction * len(rows)))
        keep = sorted(random.Random(f"sepo-oracle|{seed}").sample(range(len(rows)), n))
        rows = [rows[i] for i in keep]
    return rows[:limit] if limit else rows


def pairs_from_records(rows: list[dict[str, Any]],
                       marker: str = "\n\nAssistant:") -> tuple[list[dict[str, str]], Counter]:
    """Preference pairs from HH-RLHF transcripts (``chosen``/``rejected``) or a stage-1 rewards table
    (``prompt``/``chosen_response``/``rejected_response``); identical responses are dropped and counted."""
    pairs, dropped = [], Counter()
    for row in rows:
        if "chosen_response" in row and "prompt" in row:
            pair = {"prompt": row["prompt"], "chosen": row["chosen_response"], "rejected": row["rejected_response"]}
        elif "chosen" in row and "rejected" in row and "prompt" not in row:
            pair = split_transcript_pair(row["chosen"], row["rejected"], marker)
            if pair is None:
                dropped["no shared prompt"] += 1
                continue
        elif {"prompt", "chosen", "rejected"} <= set(row):
            pair = {k: row[k] for k in ("prompt", "chosen", "rejected")}
        else:
            raise MetaAlignerError("rows need prompt/chosen/rejected, chosen/rejected transcripts, or "
                                   "prompt/chosen_response/rejected_response")
        if pair["chosen"] == pair["rejected"]:
            dropped["identical responses"] += 1
            continue
        pairs.append(pair)
    return pairs, dropped


# ---------------------------------------------------------------- inference in the aligner output format

def generate_outputs(input_path: str | Path, model: str, output: str | Path, params, backend: str = "hf",
                     origin_model: str | None = None, prompt_template: str = "{query}", limit: int | None = None,
                     resume: bool = False, chunk_size: int = 64, generators: dict | None = None,
                     overwrite: bool = False, vllm_options: dict | None = None) -> list[dict[str, Any]]:
    """Answer each ``query`` with the SePO policy, in the aligner output format (``query``, ``goldens``,
    ``origin_responses``, ``aligned_responses``) so ``evaluation/`` scores it like an aligner.

    ``aligned_responses`` = the SePO policy's answer; ``origin_responses`` = the input's
    ``generated_text`` when present, else the answer of ``origin_model`` (e.g. the SFT starting point)
    when given, else "". ``generators`` = {"aligned": gen, "origin": gen} skips loading (tests).
    The output carries a fingerprint of models, template and ``params``; resume redoes rows whose
    input changed and refuses other settings (``overwrite`` replaces them). ``vllm_options``: the vllm
    backend's engine settings (``aligner.inference.VLLM_OPTIONS``), an error with another backend."""
    from metaaligner.aligner.inference import make_generator
    from metaaligner.io import INPUT_HASH, ResumableWriter, folder_identity, iter_batches, read_table, row_hash

    if "{query}" not in prompt_template:
        raise MetaAlignerError("--prompt_template must contain {query}")
    rows = read_table(input_path, required=["query"])
    rows = rows[:limit] if limit else rows
    has_origin = "generated_text" in rows[0]
    fingerprint = {"stage": "sepo", "model": model, "model_files": folder_identity(model), "backend": backend,
                   "origin_model": origin_model, "prompt_template": prompt_template,
                   "params": {k: getattr(params, k, None) for k in ("max_new_tokens", "temperature", "top_p", "seed",
                                                                     "decoding", "long_prompts")}}
    writer = ResumableWriter(output, OUTPUT_COLUMNS, key="row_id", resume=resume, fingerprint=fingerprint,
                             overwrite=overwrite)
    hashes = [row_hash(r) for r in rows]
    todo = [i for i in range(len(rows)) if not writer.is_done(i, hashes[i])]
    generators = dict(generators or {})
    if todo and "aligned" not in generators:
        generators["aligned"] = make_generator(backend, model, vllm_options=vllm_options)
    if todo and origin_model and not has_origin and "origin" not in generators:
        generators["origin"] = make_generator(backend, origin_model, vllm_options=vllm_options)
    start = time.time()
    for batch in iter_batches(todo, chunk_size):
        prompts = [prompt_template.format(query=rows[i]["query"]) for i in batch]
        aligned = generators["aligned"].generate(prompts, params, progress=False)
        if has_origin:
            origin = [str(rows[i].get("generated_text", "")) for i in batch]
        elif "origin" in generators:
            origin = generators["origin"].generate(prompts, params, progress=False)
        else:
            origin = [""] * len(batch)
        writer.append([{"row_id": i, "query": rows[i]["query"], "goldens": str(rows[i].get("goldens", "")),
                        "origin_responses": o, "aligned_responses": a, INPUT_HASH: hashes[i]}
                       for i, o, a in zip(batch, origin, aligned)])
    out = writer.finish(order=list(range(len(rows))))
    elapsed = time.time() - start
    print(f"sepo_inference: {len(rows)} rows in, {len(out)} rows out ({len(todo)} generated, "
          f"{len(rows) - len(todo)} resumed) in {elapsed:.1f}s -> {output}")
    return out
