"""Stage 1 of the dataset pipeline: score preference pairs with one reward per objective.

Pieces, each usable on its own:

- ``load_preference_rows``: HH-RLHF transcripts (``chosen``/``rejected``) or ready columns
  (``prompt``/``chosen_response``/``rejected_response``) -> ``PreferenceRow`` list.
- The reward registry ``REWARDS`` (name -> released classifier + objective key) and
  ``resolve_rewards`` (names + overrides -> ``RewardSpec`` list). Three scorer kinds:
  ``pair`` (sequence classifier on the (prompt, response) text pair, score = the single logit),
  ``response`` (classifier on the response alone, score = logit of label 1) and ``llm`` (any causal
  LM; score = logit("Yes") - logit("No") after ``templates.llm_scorer_prompt``; the embedded SmolLM2
  by default, so everything runs offline).
- ``score_sequences``: batched forward passes, sequences sorted by length and padded per batch.
- ``label_shard``: one process's rows (``accelerate launch``/``torchrun`` give each rank a contiguous
  slice), resumable, raw scores plus a status per row.
- ``merge_shards`` / ``finalise``: every input row exactly once, in input order; rounding
  (``--round 1``, the released behaviour that creates ties) then normalisation by the mean/std over
  chosen + rejected; ``reward_stats.json`` beside the output.

Rows are never written with a made-up score: empty/NaN responses, pairs whose transcript tokenises
to fewer than ``min_tokens`` or more than a scorer's max length, and non-finite scores are dropped,
counted by reason and reported.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from metaaligner.distributed import in_input_order, length_sorted_batches, shard_range
from metaaligner.errors import DataError, MetaAlignerError

log = logging.getLogger(__name__)

ASSISTANT_CUE = "\n\nAssistant:"
PAIR, RESPONSE, LLM, RULE = "pair", "response", "llm", "rule"
KINDS = (PAIR, RESPONSE, LLM, RULE)
OK = "ok"
# Row statuses that drop a pair (counted in the stats; never written as rewards).
EMPTY_RESPONSE, NO_ASSISTANT_TURN, TOO_SHORT, TOO_LONG, NAN_SCORE = (
    "empty_response", "no_assistant_turn", "too_short", "too_long", "nan_score")


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


# ---------------------------------------------------------------- the reward registry

@dataclass(frozen=True)
class RegisteredReward:
    name: str
    classifier: str            # the released reward model (hub name)
    input: str                 # PAIR or RESPONSE
    label: int | None          # None: the single logit; else the logit of this label
    objective: str             # objective key whose description the LLM scorer asks about


REWARDS: dict[str, RegisteredReward] = {
    "harmless": RegisteredReward("harmless", "Ray2333/gpt2-large-harmless-reward_model", PAIR, None,
                                 "hh-rlhf:harmlessness"),
    "helpful": RegisteredReward("helpful", "Ray2333/gpt2-large-helpful-reward_model", PAIR, None,
                                "hh-rlhf:helpfulness"),
    "humor": RegisteredReward("humor", "mohameddhiab/humor-no-humor", RESPONSE, 1, "hh-rlhf:humour"),
}
ALIASES = {"harmlessness": "harmless", "helpfulness": "helpful", "humour": "humor"}


@dataclass(frozen=True)
class RewardSpec:
    """One reward column: how to score it. ``model`` is a hub name or local path (``None`` = the
    embedded model, LLM scorer only); ``description`` is the objective text the LLM scorer asks about."""
    name: str
    kind: str
    model: str | None
    label: int | None = None
    description: str | None = None


def parse_overrides(specs: Iterable[str]) -> dict[str, tuple[str | None, str]]:
    """``name=path`` or ``name=pair:path`` / ``name=response:path`` -> {name: (kind or None, path)}."""
    out = {}
    for spec in specs:
        if "=" not in spec:
            raise MetaAlignerError(f"--reward_models expects name=path (or name=pair:path, name=response:path), "
                                   f"got {spec!r}")
        name, target = (s.strip() for s in spec.split("=", 1))
        kind = None
        for prefix in (PAIR, RESPONSE):
            if target.startswith(prefix + ":"):
                kind, target = prefix, target[len(prefix) + 1:]
        if not name or not target:
            raise MetaAlignerError(f"--reward_models: empty name or path in {spec!r}")
        out[ALIASES.get(name, name)] = (kind, target)
    return out


def resolve_rewards(names: list[str], scorer: str = LLM, model: str | None = None,
                    overrides: dict[str, tuple[str | None, str]] | None = None, registry=None,
                    objective_group: str | None = "hh-rlhf") -> list[RewardSpec]:
    """Reward names (in output-column order) -> specs.

    ``scorer="classifier"``: the registered classifier (hub name) unless overridden by a path.
    ``scorer="llm"``: the LLM yes/no scorer with ``model`` for every name without an override; a
    name is a registered reward (its objective's description) or any objective key of the registry.
    An override ``name=path`` always makes that name a classifier at ``path``.
    """
    from metaaligner.registry.objectives import ObjectiveRegistry

    if scorer not in ("llm", "classifier", RULE):
        raise MetaAlignerError(f"--scorer must be llm, classifier or rule, got {scorer!r}")
    if not names:
        raise MetaAlignerError("--reward_names is empty")
    overrides = overrides or {}
    registry = registry or ObjectiveRegistry.builtin()
    specs, seen = [], set()
    for raw in names:
        name = ALIASES.get(raw, raw)
        if name in seen:
            raise MetaAlignerError(f"reward {raw!r} is named twice in --reward_names")
        seen.add(name)
        registered = REWARDS.get(name)
        if scorer == RULE and name not in overrides:
            from metaaligner.dataset.rule_scorer import rule_key

            specs.append(RewardSpec(name, RULE, None, None, rule_key(raw)))
        elif name in overrides:
            kind, path = overrides[name]
            kind = kind or (registered.input if registered else PAIR)
            label = registered.label if registered and kind == registered.input else (1 if kind == RESPONSE else None)
            specs.append(RewardSpec(name, kind, path, label))
        elif scorer == "classifier":
            if registered is None:
                raise MetaAlignerError(f"no classifier registered for reward {raw!r}; registered: "
                                       f"{', '.join(sorted(REWARDS))}; give one with --reward_models {raw}=PATH "
                                       "or use --scorer llm")
            specs.append(RewardSpec(name, registered.input, registered.classifier, registered.label))
        else:
            key = registered.objective if registered else raw
            description = registry.get(key, objective_group).description
            specs.append(RewardSpec(name, LLM, model, None, description))
    return specs


# ---------------------------------------------------------------- scorers

class Scorer:
    """Encodes a (prompt, response) into token ids and scores padded batches of them."""
    name: str
    kind: str
    model_name: str
    max_length: int
    tokenizer: Any

    def encode(self, prompt: str, response: str) -> list[int]:
        raise NotImplementedError

    def score_batch(self, batch: list[list[int]]) -> list[float]:
        raise NotImplementedError

    def transcript_length(self, prompt: str, response: str) -> int:
        """Tokens of the pair's transcript (prompt + response), the length the filter checks (as released)."""
        return len(self.tokenizer(transcript(prompt, response), add_special_tokens=True)["input_ids"])


def transcript(prompt: str, response: str) -> str:
    return f"{prompt} {response}" if prompt else response


def _pad_right(batch: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, :len(ids)] = 1
    return input_ids.to(device), mask.to(device)


class ClassifierScorer(Scorer):
    """A sequence classifier: ``pair`` kind on (prompt, response) as a text pair, ``response`` kind on
    the response alone; inputs truncated to ``max_length``; right padding (absolute positions stay 0..n)."""

    def __init__(self, spec: RewardSpec, model, tokenizer, device, max_length: int):
        self.name, self.kind, self.model_name, self.label = spec.name, spec.kind, str(spec.model), spec.label
        self.model, self.tokenizer, self.device, self.max_length = model, tokenizer, device, max_length
        n_labels = int(getattr(model.config, "num_labels", 1))
        if self.label is None and n_labels != 1:
            raise MetaAlignerError(f"{spec.model}: reward {spec.name!r} expects one logit but the model has "
                                   f"{n_labels} labels; use name=response:PATH for a 2-label classifier")
        if self.label is not None and self.label >= n_labels:
            raise MetaAlignerError(f"{spec.model}: reward {spec.name!r} reads label {self.label} but the model "
                                   f"has {n_labels} labels")

    def encode(self, prompt: str, response: str) -> list[int]:
        if self.kind == PAIR:
            enc = self.tokenizer(prompt, response, truncation=True, max_length=self.max_length)
        else:
            enc = self.tokenizer(response, truncation=True, max_length=self.max_length)
        return list(enc["input_ids"])

    def score_batch(self, batch: list[list[int]]) -> list[float]:
        import torch

        input_ids, mask = _pad_right(batch, self.tokenizer.pad_token_id, self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
        column = logits[:, 0 if self.label is None else self.label]
        return column.cpu().tolist()


class SharedLMScorer:
    """One causal LM shared by every LLM-scored reward: score = logit("Yes") - logit("No") at the
    next token after ``templates.llm_scorer_parts`` (context, answer, objective), optionally wrapped
    in the tokenizer's chat template.

    With ``prefix_sharing`` (default), one pair's 2 x R questions (two answers, R objectives) are
    packed into one sequence shaped as a tree, context -> answer -> objective, with a 4D attention
    mask and per-path position ids: the context is encoded once instead of 2R times, and each
    context + answer once instead of R times. Every path holds exactly the tokens of the unpacked
    question, so the scores match the unpacked ones (checked on the first pair; a model whose
    attention ignores custom masks falls back to unpacked scoring with a warning).
    """

    def __init__(self, model, tokenizer, device, model_name: str, max_length: int, chat_template: bool,
                 prefix_sharing: bool = True):
        import inspect

        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.model_name, self.max_length, self.chat_template = model_name, max_length, chat_template
        self.prefix_sharing, self._checked = prefix_sharing, False
        lead = "" if chat_template else " "   # raw prompts end with "Reply:", so the answer starts with a space
        self.yes_id = tokenizer.encode(lead + "Yes", add_special_tokens=False)[0]
        self.no_id = tokenizer.encode(lead + "No", add_special_tokens=False)[0]
        if self.yes_id == self.no_id:
            raise MetaAlignerError(f"{model_name}: 'Yes' and 'No' start with the same token; cannot score")
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.pre, self.post = self._wrapping()
        self.lead_ids = self._lead_ids()

    def _wrapping(self) -> tuple[str, str]:
        """Chat-template text before and after the user message ("" and "" for raw prompts)."""
        if not self.chat_template:
            return "", ""
        marker = "\x00METAALIGNER\x00"
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": marker}],
                                                  add_generation_prompt=True, tokenize=False)
        pre, _, post = text.partition(marker)
        return pre, post

    def _lead_ids(self) -> list[int]:
        """Special tokens the tokenizer puts in front of a raw text (a BOS), none for chat prompts."""
        if self.chat_template:
            return []
        with_special = self.tokenizer("x", add_special_tokens=True)["input_ids"]
        plain = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        return list(with_special[:with_special.index(plain[0])]) if plain and plain[0] in with_special else []

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_pair(self, prompt: str, responses: list[str], descriptions: list[str]
                    ) -> tuple[list[int], list[list[int]], list[list[int]]]:
        """(context ids, one answer-ids list per response, one objective-ids list per description);
        the question for (response a, objective k) is context + answers[a] + objectives[k]. The
        conversation loses its start when the longest question exceeds ``max_length``."""
        from metaaligner.registry.templates import llm_scorer_parts

        answers = [self._ids(llm_scorer_parts(prompt, r, "")[1]) for r in responses]
        objectives = [self._ids(llm_scorer_parts("", "", d)[2] + self.post) for d in descriptions]
        tail = max(len(a) for a in answers) + max(len(o) for o in objectives)
        question = prompt
        context = self.lead_ids + self._ids(self.pre + llm_scorer_parts(question, "", "")[0])
        for _ in range(4):
            excess = len(context) + tail - self.max_length
            if excess <= 0:
                break
            q = self._ids(question)
            question = "..." + self.tokenizer.decode(q[min(len(q), excess + 8):])
            context = self.lead_ids + self._ids(self.pre + llm_scorer_parts(question, "", "")[0])
        room = self.max_length - len(context) - max(len(o) for o in objectives)
        if room <= 0:
            raise MetaAlignerError(f"--max_length {self.max_length} leaves no room for the answer in the LLM "
                                   "scorer's question; raise it")
        return context, [a[:room] for a in answers], objectives

    def score_pairs(self, pairs: list[tuple[str, str, str]], descriptions: list[str], batch_size: int = 16,
                    on_progress: Callable[[int], None] | None = None) -> list[tuple[list[float], list[float]]]:
        """For each (prompt, chosen, rejected): (chosen scores, rejected scores), one per description."""
        encoded = [self.encode_pair(p, [c, r], descriptions) for p, c, r in pairs]
        if self.prefix_sharing and encoded and not self._checked:
            self._check_tree(encoded[0])
        if self.prefix_sharing:
            trees = [_pack_tree(*e) for e in encoded]
            order = sorted(range(len(trees)), key=lambda i: len(trees[i][0]), reverse=True)
            flat: list[list[float]] = [[] for _ in trees]
            for start in range(0, len(order), max(1, batch_size)):
                idx = order[start:start + batch_size]
                for i, scores in zip(idx, self._score_trees([trees[i] for i in idx])):
                    flat[i] = scores
                if on_progress:
                    on_progress(len(idx) * 2 * len(descriptions))
        else:
            sequences = [ctx + a + o for ctx, answers, objs in encoded for a in answers for o in objs]
            scores = score_sequences(self, sequences, batch_size, on_progress)
            per = 2 * len(descriptions)
            flat = [scores[i * per:(i + 1) * per] for i in range(len(encoded))]
        n = len(descriptions)
        return [(s[:n], s[n:]) for s in flat]

    def _check_tree(self, example) -> None:
        import torch

        self._checked = True
        ctx, answers, objs = example
        plain = self.score_batch([ctx + a + o for a in answers for o in objs])
        packed = self._score_trees([_pack_tree(ctx, answers, objs)])[0]
        tol = 1e-3 if next(self.model.parameters()).dtype == torch.float32 else 0.25
        diff = max(abs(a - b) for a, b in zip(plain, packed))
        if not diff <= tol:
            log.warning("%s: packed (prefix-sharing) scores differ from plain ones by %.3g; this model's attention "
                        "does not honour custom masks, scoring unpacked", self.model_name, diff)
            self.prefix_sharing = False

    def score_batch(self, batch: list[list[int]]) -> list[float]:
        """Plain sequences, right-padded: the logit gap at each sequence's last token."""
        import torch

        input_ids, mask = _pad_right(batch, self.tokenizer.pad_token_id, self.device)
        last = mask.sum(dim=1) - 1
        kwargs = {}
        if self.keeps_logits:
            keep = torch.unique(last)
            kwargs["logits_to_keep"] = keep
            last = torch.searchsorted(keep, last)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=mask, **kwargs).logits
        rows = logits[torch.arange(len(batch), device=logits.device), last].float()
        return (rows[:, self.yes_id] - rows[:, self.no_id]).cpu().tolist()

    def _score_trees(self, trees: list[tuple[list[int], list[int], list[int], list[int]]]) -> list[list[float]]:
        """Packed trees (ids, positions, segment parents, question ends), padded to one length."""
        import torch

        width = max(len(t[0]) for t in trees)
        n = len(trees)
        dtype = next(self.model.parameters()).dtype
        input_ids = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        allowed = torch.zeros((n, width, width), dtype=torch.bool)
        ends = []
        for b, (ids, pos, segs, last) in enumerate(trees):
            L = len(ids)
            input_ids[b, :L] = torch.tensor(ids)
            positions[b, :L] = torch.tensor(pos)
            seg = torch.tensor(segs[0])
            ancestors = torch.tensor(segs[1])           # [segment, segment] ancestor-or-self
            allowed[b, :L, :L] = ancestors[seg][:, seg] & torch.ones(L, L, dtype=torch.bool).tril()
            pad = torch.arange(L, width)
            allowed[b, pad, pad] = True                 # padding attends to itself only (no NaN rows)
            ends.append(last)
        mask = torch.zeros((n, 1, width, width), dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        flat_ends = torch.tensor([e for es in ends for e in es])
        kwargs = {}
        gather = flat_ends
        if self.keeps_logits:
            keep = torch.unique(flat_ends)
            kwargs["logits_to_keep"] = keep.to(self.device)
            gather = torch.searchsorted(keep, flat_ends)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=positions.to(self.device), **kwargs).logits
        rows_idx = torch.tensor([b for b, es in enumerate(ends) for _ in es])
        picked = logits[rows_idx.to(logits.device), gather.to(logits.device)].float()
        gaps = (picked[:, self.yes_id] - picked[:, self.no_id]).cpu().tolist()
        out, k = [], 0
        for es in ends:
            out.append(gaps[k:k + len(es)])
            k += len(es)
        return out


def _pack_tree(context: list[int], answers: list[list[int]], objectives: list[list[int]]):
    """One sequence: context | answer_1 | objective_1..R | answer_2 | objective_1..R, with positions
    along each root-to-leaf path, a segment id per token, the segments' ancestor matrix, and the index
    of each question's last token (answer-major order)."""
    ids, pos, seg_of = list(context), list(range(len(context))), [0] * len(context)
    parents = [-1]                                   # segment 0 = context
    ends = []
    for answer in answers:
        a_seg = len(parents)
        parents.append(0)
        start = len(context)
        ids += answer
        pos += range(start, start + len(answer))
        seg_of += [a_seg] * len(answer)
        for objective in objectives:
            o_seg = len(parents)
            parents.append(a_seg)
            base = start + len(answer)
            ids += objective
            pos += range(base, base + len(objective))
            seg_of += [o_seg] * len(objective)
            ends.append(len(ids) - 1)
    n = len(parents)
    ancestors = [[False] * n for _ in range(n)]
    for s in range(n):
        a = s
        while a >= 0:
            ancestors[s][a] = True
            a = parents[a]
    return ids, pos, (seg_of, ancestors), ends


class LLMScorer(Scorer):
    """One LLM-scored reward: the shared ``SharedLMScorer`` asked about ``description``."""

    def __init__(self, spec: RewardSpec, judge: SharedLMScorer):
        self.name, self.kind, self.description, self.judge = spec.name, LLM, spec.description, judge
        self.model_name, self.max_length, self.tokenizer = judge.model_name, judge.max_length, judge.tokenizer

    def encode(self, prompt: str, response: str) -> list[int]:
        context, answers, objectives = self.judge.encode_pair(prompt, [response], [self.description])
        return context + answers[0] + objectives[0]

    def score_batch(self, batch: list[list[int]]) -> list[float]:
        return self.judge.score_batch(batch)


def build_scorers(specs: list[RewardSpec], device: str | None = None, dtype: str | None = None,
                  max_length: int = 1024, chat_template: str = "auto", prefix_sharing: bool = True) -> list[Scorer]:
    """Load each distinct model once (several LLM-scored rewards share one model) on ``device``."""
    from metaaligner.models import load_causal_lm, pick_device, quiet_transformers

    device = pick_device(device)
    judges: dict[str | None, SharedLMScorer] = {}
    classifiers: dict[str, tuple] = {}
    scorers: list[Scorer] = []
    for spec in specs:
        if spec.kind == RULE:
            from metaaligner.dataset.rule_scorer import RuleScorer

            scorers.append(RuleScorer(spec.name, spec.description))
        elif spec.kind == LLM:
            if spec.model not in judges:
                with quiet_transformers():
                    model, tokenizer, dev = load_causal_lm(spec.model, device=device, dtype=dtype)
                use_chat = {"auto": bool(getattr(tokenizer, "chat_template", None)), "yes": True, "no": False}
                if chat_template not in use_chat:
                    raise MetaAlignerError(f"--chat_template must be auto, yes or no, got {chat_template!r}")
                if use_chat[chat_template] and not getattr(tokenizer, "chat_template", None):
                    raise MetaAlignerError(f"{spec.model}: the tokenizer has no chat template; use --chat_template no")
                name = str(spec.model) if spec.model else "embedded:SmolLM2-135M-Instruct"
                judges[spec.model] = SharedLMScorer(model, tokenizer, dev, name, _max_len(tokenizer, max_length),
                                                    use_chat[chat_template], prefix_sharing)
            scorers.append(LLMScorer(spec, judges[spec.model]))
        else:
            if spec.model not in classifiers:
                classifiers[spec.model] = _load_classifier(spec.model, device, dtype)
            model, tokenizer = classifiers[spec.model]
            scorers.append(ClassifierScorer(spec, model, tokenizer, device, _max_len(tokenizer, max_length)))
    return scorers


def _max_len(tokenizer, max_length: int) -> int:
    limit = getattr(tokenizer, "model_max_length", None) or max_length
    return int(min(limit, max_length))


def _load_classifier(path: str, device: str, dtype: str | None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metaaligner.models import pick_dtype, quiet_transformers

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=pick_dtype(device, dtype))
    except OSError as exc:
        raise MetaAlignerError(f"cannot load reward model {path!r}: {str(exc).splitlines()[0]}") from None
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    return model, tokenizer


def score_sequences(scorer: Scorer, sequences: list[list[int]], batch_size: int,
                    on_batch: Callable[[int], None] | None = None) -> list[float]:
    """Scores in input order; batches of ``batch_size`` sequences after sorting by length (longest
    first, so an out-of-memory error shows up at once), each padded to its own longest."""
    out: list[float] = [math.nan] * len(sequences)
    for idx in length_sorted_batches([len(s) for s in sequences], batch_size):
        for i, score in zip(idx, scorer.score_batch([sequences[i] for i in idx])):
            out[i] = float(score)
        if on_batch:
            on_batch(len(idx))
    return out


# ---------------------------------------------------------------- one process's share

def shard_path(output: str | Path, rank: int, world: int) -> Path:
    output = Path(output)
    return output.with_name(f"{output.name}.shard{rank}of{world}.jsonl")


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
                resume: bool = False, progress: bool = True) -> Path:
    """Score this rank's slice of ``rows`` chunk by chunk into ``<output>.shard{rank}of{world}.jsonl``
    (appended per chunk, so ``resume`` continues after the last finished chunk; only a run with the
    same scorers, and rows whose texts are unchanged). Returns the shard path."""
    from tqdm.auto import tqdm

    from metaaligner.io import INPUT_HASH, ResumableWriter

    path = shard_path(output, rank, world)
    mine = [rows[i] for i in shard_range(len(rows), rank, world)]
    if path.exists() and not resume:
        path.unlink()
    # a shard is an intermediate file: a fresh run replaces one made with other settings
    writer = ResumableWriter(path, ["row_id", "status", "chosen", "rejected"], key="row_id", resume=resume,
                             fingerprint=shard_fingerprint(scorers, min_tokens), overwrite=not resume)
    hashes = {r.row_id: preference_row_hash(r) for r in mine}
    todo = [r for r in mine if not writer.is_done(r.row_id, hashes[r.row_id])]
    if len(todo) < len(mine):
        log.info("rank %d: resuming, %d of %d rows already scored", rank, len(mine) - len(todo), len(mine))
    bar = tqdm(total=len(todo) * 2 * len(scorers), desc=f"score[rank {rank}]" if world > 1 else "score",
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
    return path


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


def wait_for_shards(output: str | Path, world: int, timeout_s: float = 7200, poll_s: float = 2.0) -> list[Path]:
    paths = [shard_path(output, r, world) for r in range(world)]
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            missing = [str(p) for p in paths if not p.exists()]
            raise MetaAlignerError(f"timed out after {timeout_s:.0f}s waiting for shards: {', '.join(missing)}")
        time.sleep(poll_s)
    return paths


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
