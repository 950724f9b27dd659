"""The aligner behind the service: in-process (``LocalEngine``, the ``Aligner`` API's model on the
hf fast greedy engine, or vLLM on a GPU) or remote (``RemoteEngine``, an OpenAI-compatible server).

Both take a batch of rows, each with its own objectives, and return per row the aligned text and
what the degeneration guard did (``metaaligner.aligner.inference.guard_output``). Prompts come from
``fit_aligner_prompts`` (the template, the objectives joined with ``'; '``, long prompts cut to the
context), one per row, and go to the engine in ONE ``generate_all`` call.
"""
from __future__ import annotations

import difflib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from metaaligner.errors import MetaAlignerError
from metaaligner.registry.objectives import KEY_PATTERN, USER_GROUP


class ObjectiveError(MetaAlignerError):
    """A request's objectives cannot be resolved (answered 400)."""


@dataclass
class Row:
    """One request's alignment work."""

    query: str
    answer: str
    labels: list[str]
    descriptions: list[str]


@dataclass
class Outcome:
    text: str
    action: str          # GUARD_ACTIONS, or "off" when the guard is off
    tokens: int = 0      # new tokens generated for this row, where the engine counts them

    @property
    def guard_fallback(self) -> bool:
        return self.action.startswith("fallback")


def resolve_request_objectives(items: Any, registry, group: str | None) -> tuple[list[str], list[str]]:
    """``(keys, descriptions)`` of a request's objectives: a list (or comma-separated string) of
    registry keys, release spellings (``humor``) or ``key=Description: ...`` free text. An unknown
    key is an ``ObjectiveError`` naming it and the closest known keys."""
    if isinstance(items, str):
        items = [p for p in items.split(",")] if "=" not in items else [items]
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ObjectiveError("'objectives' must be a list of strings: keys, release spellings or "
                             "'key=Description: ...'")
    items = [i.strip() for i in items if i.strip()]
    if not items:
        raise ObjectiveError("'objectives' is empty; name at least one (GET /v1/objectives lists them)")
    labels, descriptions = [], []
    for item in items:
        if "=" in item:
            key, description = (part.strip() for part in item.split("=", 1))
            if not KEY_PATTERN.fullmatch(key) or ".." in key or not description:
                raise ObjectiveError(f"objective {item!r}: free text is written key=Description: ... with a plain "
                                     "key (letters, digits, '_', '.', '-') and a non-empty description")
            labels.append(key)
            descriptions.append(description)
            continue
        try:
            obj = registry.get(item, group)
        except MetaAlignerError as exc:
            if "ambiguous" in str(exc):
                raise ObjectiveError(str(exc)) from None
            raise ObjectiveError(unknown_objective_message(item, registry, group)) from None
        labels.append(obj.key)
        descriptions.append(obj.description)
    return labels, descriptions


def known_keys(registry, group: str | None) -> list[str]:
    """The keys a request can name bare: the user's, the aligner's group (or every group), release spellings."""
    keys = registry.keys(USER_GROUP) + (registry.keys(group) if group else registry.keys())
    aliases = [a for (g, a) in registry._aliases if group is None or g == group]
    return list(dict.fromkeys(keys + aliases))


def unknown_objective_message(item: str, registry, group: str | None) -> str:
    keys = known_keys(registry, group)
    close = difflib.get_close_matches(item, keys, n=3, cutoff=0.5)
    shown = close or keys[:8]
    head = "closest known keys" if close else "known keys include"
    return (f"unknown objective {item!r}; {head}: {', '.join(shown)} (GET /v1/objectives lists them all; "
            "your own: 'key=Description: ...')")


class BaseEngine:
    """What both engines share: the ``Aligner`` object's source, registry, group, guard and params."""

    concurrent = False   # may batches run at the same time (True for a remote server)
    streams_live = False

    def __init__(self, aligner, label: str):
        self.aligner = aligner
        self.label = label
        self.source = aligner.source
        self.registry = aligner.registry
        self.group = aligner.group
        self.guard = aligner.guard
        self.params = aligner.params

    @property
    def template(self) -> str:
        return self.source.template

    def objectives(self, items: Any) -> tuple[list[str], list[str]]:
        return resolve_request_objectives(items, self.registry, self.group)

    def prompts(self, rows: Sequence[Row], generator=None) -> list[str]:
        from metaaligner.aligner.inference import fit_aligner_prompts

        return [fit_aligner_prompts(generator, self.params if generator is not None else None, self.template,
                                    [r.query], [r.answer], r.descriptions)[0][0] for r in rows]

    def finish(self, row: Row, output: str, tokens: int = 0) -> Outcome:
        from metaaligner.aligner.inference import guard_output, normalize_answer

        text = normalize_answer(output)
        if not self.guard:
            return Outcome(text, "off", tokens)
        text, action = guard_output(row.answer, text)
        return Outcome(text, action, tokens)


class LocalEngine(BaseEngine):
    """The aligner in this process. Every call runs in the batcher's one worker thread, so the model
    is used by one batch at a time and the event loop stays free."""

    def __init__(self, aligner, label: str):
        super().__init__(aligner, label)
        self.generator = None
        self.streams_live = False  # known once loaded: the hf backend with the guard off

    def load(self, warm_up: bool = True) -> None:
        """Load the model (the ``Aligner`` API's ``make_generator``) and, with ``warm_up``, generate one token
        once, so the engine's one-time set-up (packing weights, buffers) is not paid by the first request."""
        from dataclasses import replace

        from metaaligner.generation import generate_all

        self.generator = self.aligner.generator
        if warm_up:
            row = Row("Hello?", "Hi.", [], ["Helpfulness: the response should help"])
            generate_all(self.generator, self.prompts([row], self.generator), replace(self.params, max_new_tokens=1))
        from metaaligner.generation.hf import HFGenerator

        self.streams_live = not self.guard and isinstance(self.generator, HFGenerator)

    def _tokens(self) -> int:
        return int(getattr(self.generator, "stats", {}).get("generated_tokens", 0))

    def align_batch(self, rows: Sequence[Row], delivered: Callable[[int, Outcome], None] | None = None,
                    stopped: Callable[[int], bool] | None = None,
                    more: Callable[[int], list[Row]] | None = None) -> list[Outcome]:
        """Each row's ``Outcome``. ``delivered(i, outcome)`` hears of row i as soon as its text is final
        (the fast engine: while the batch's longer rows still decode); ``stopped(i)`` is asked between
        decoding steps and True ends row i there (its client left); ``more(live)``, asked between
        steps with the number of rows decoding, gives rows that join the batch there (continuous
        batching), numbered after those before them; the result covers them too."""
        from metaaligner.generation import RowEvents, generate_all

        rows = list(rows)
        outcomes: list[Outcome | None] = [None] * len(rows)

        def done(i: int, text: str, tokens: int | None) -> None:
            if tokens is None:  # a backend that counts per call (it has ended): its count spread evenly
                counted = self._tokens() - before
                tokens = counted // len(rows) + (counted % len(rows) if i == 0 else 0)
            outcomes[i] = self.finish(rows[i], text, tokens)
            if delivered is not None:
                delivered(i, outcomes[i])

        def joining(live: int) -> list[str]:
            new = more(live)
            rows.extend(new)
            outcomes.extend([None] * len(new))
            return self.prompts(new, self.generator) if new else []

        before = self._tokens()
        generate_all(self.generator, self.prompts(rows, self.generator), self.params,
                     events=RowEvents(done=done, stopped=stopped, more=joining if more is not None else None))
        return outcomes

    def align_stream(self, row: Row, emit: Callable[[str], None], cancelled: threading.Event) -> Outcome:
        """One row, its text handed to ``emit`` piece by piece as the model writes it (``streams_live``:
        transformers' ``TextStreamer`` on ``model.generate``, greedy, the same text as the batched engine;
        generation stops at the next token once ``cancelled`` is set). With the guard on, or an engine
        without a per-token hook (vLLM), the row is aligned whole, guarded, then handed over in words."""
        if not self.streams_live:
            outcome = self.align_batch([row])[0]
            for piece in _word_pieces(outcome.text):
                if cancelled.is_set():
                    break
                emit(piece)
            return outcome
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        gen = self.generator
        prompt = self.prompts([row], gen)[0]

        class Piecewise(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    emit(text)

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        ids = gen.tokenizer(prompt, return_tensors="pt", add_special_tokens=True).to(gen.model.device)
        streamer = Piecewise(gen.tokenizer, skip_prompt=True, skip_special_tokens=True)
        with torch.inference_mode():
            out = gen.model.generate(**ids, max_new_tokens=self.params.max_new_tokens, do_sample=False,
                                     temperature=None, top_p=None, top_k=None,
                                     pad_token_id=gen.tokenizer.pad_token_id, streamer=streamer,
                                     stopping_criteria=StoppingCriteriaList([Cancelled()]))
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        text = gen.tokenizer.decode(new, skip_special_tokens=True).strip()
        tokens = gen._count_new(new) if hasattr(gen, "_count_new") else len(new)
        gen.stats["generated_tokens"] = gen.stats.get("generated_tokens", 0) + tokens
        return self.finish(row, text, tokens)


def _word_pieces(text: str) -> list[str]:
    """``text`` cut after each run of whitespace: the pieces join back to ``text`` exactly."""
    import re

    return re.findall(r"\S+\s*|\s+", text)


class RemoteEngine(BaseEngine):
    """The aligner behind an OpenAI-compatible server: every row one request (batches run
    concurrently; the server batches them itself, e.g. vLLM)."""

    concurrent = True
    streams_live = True

    def __init__(self, aligner, label: str, upstream, model: str, api: str = "completions"):
        super().__init__(aligner, label)
        self.upstream, self.model, self.api = upstream, model, api

    def request_params(self) -> dict:
        p = self.params
        out: dict[str, Any] = {"max_tokens": p.max_new_tokens, "seed": p.seed}
        if p.decoding != "checkpoint":
            out.update(temperature=max(p.temperature, 0.0), top_p=p.top_p)
        return out

    async def align_batch_async(self, rows: Sequence[Row]) -> list[Outcome]:
        import asyncio

        prompts = self.prompts(rows)
        outputs = await asyncio.gather(*(self.upstream.complete(p, self.model, self.request_params(), self.api)
                                         for p in prompts))
        return [self.finish(row, out) for row, out in zip(rows, outputs)]

    async def align_stream_async(self, row: Row, emit: Callable[[str], None]) -> Outcome:
        """Pieces as the server sends them; with the guard on, the whole text first (then in words)."""
        prompt = self.prompts([row])[0]
        if self.guard:
            outcome = self.finish(row, await self.upstream.complete(prompt, self.model, self.request_params(),
                                                                    self.api))
            for piece in _word_pieces(outcome.text):
                emit(piece)
            return outcome
        pieces = []
        async for piece in self.upstream.stream(prompt, self.model, self.request_params(), self.api):
            pieces.append(piece)
            emit(piece)
        return self.finish(row, "".join(pieces))


def build_engine(config, upstream_factory) -> BaseEngine:
    """The engine ``config`` (a ``ServeConfig``) asks for; loads nothing yet (``LocalEngine.load``)."""
    from metaaligner.aligner.inference import Aligner, guard_default, resolve_aligner
    from metaaligner.generation import GenerationParams
    from metaaligner.registry.datasets import load_dataset_config

    dataset = load_dataset_config(config.dataset) if config.dataset else None
    params = GenerationParams(max_new_tokens=config.max_new_tokens, batch_size=config.max_batch_size)
    group = dataset.objective_group if dataset else None
    if config.aligner_base_url:
        source = resolve_aligner(config.aligner_model, config.template, None, dataset.template if dataset else None)
        guard = guard_default(source) if config.guard == "auto" else config.guard == "on"
        aligner = Aligner(config.aligner_model, template=source.template, objectives_file=config.objectives_file,
                          add_objective=config.add_objective, objective_group=group, params=params,
                          generator=object(), guard=guard)
        upstream = upstream_factory("aligner", config.aligner_base_url)
        return RemoteEngine(aligner, f"{config.aligner_model} at {upstream.shown_url}", upstream,
                            config.aligner_model, config.aligner_api)
    source = resolve_aligner(config.aligner_path, config.template, config.lora_path,
                             dataset.template if dataset else None)
    guard = guard_default(source) if config.guard == "auto" else config.guard == "on"
    aligner = Aligner(config.aligner_path, template=source.template, lora_path=config.lora_path,
                      device=config.device, dtype=config.dtype, objectives_file=config.objectives_file,
                      add_objective=config.add_objective, objective_group=group, params=params, guard=guard)
    return LocalEngine(aligner, source.label)


def default_objectives(config, engine: BaseEngine) -> list[str]:
    """``--objectives``, else the dataset config's, else the aligner card's, else harmlessness,helpfulness."""
    from metaaligner.registry.datasets import load_dataset_config
    from metaaligner.serve.config import DEFAULT_OBJECTIVES

    if config.objectives:
        return [o.strip() for o in config.objectives.split(",") if o.strip()]
    if config.dataset:
        return list(load_dataset_config(config.dataset).objectives)
    if engine.source.objectives:
        return list(engine.source.objectives)
    return DEFAULT_OBJECTIVES.split(",")
