"""The ``llm`` scorer kind of stage 1: any causal LM asked a yes/no question per objective, score =
logit("Yes") - logit("No"); one ``SharedLMScorer`` model shared by every LLM-scored reward, one
``LLMScorer`` per reward."""
from __future__ import annotations

import logging
from typing import Callable

from metaaligner.dataset.scoring import LLM, RewardSpec, Scorer, pad_right, score_sequences
from metaaligner.errors import MetaAlignerError

log = logging.getLogger("metaaligner.dataset.rewards")   # the name the labelling logs under


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

        input_ids, mask = pad_right(batch, self.tokenizer.pad_token_id, self.device)
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
