"""One generation interface, several backends: ``generate(prompts, params) -> list[str]``.

Backends are resolved by name from a dict with lazy imports, so ``vllm`` or ``openai`` are only
imported when used. Every backend returns exactly one completion per prompt, in input order.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Protocol

from metaaligner.errors import MetaAlignerError

# How a backend decodes: "greedy" (ours: argmax, or sampling at ``temperature`` > 0) or "checkpoint"
# (the model folder's generation config, exactly as a bare ``model.generate`` applies it; the
# release passed no decoding arguments, so each checkpoint's generation_config.json decided).
DECODINGS = ("greedy", "checkpoint")
# Prompts longer than the context minus max_new_tokens: "shorten" cuts the answer, then the
# question, in the middle (``metaaligner.generation.fit``); "whole" feeds them whole, as released.
LONG_PROMPTS = ("shorten", "whole")


@dataclass
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy (decoding "greedy" only)
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16
    decoding: str = "greedy"
    long_prompts: str = "shorten"

    def __post_init__(self):
        if self.decoding not in DECODINGS:
            raise MetaAlignerError(f"unknown decoding {self.decoding!r}; choose one of {', '.join(DECODINGS)}")
        if self.long_prompts not in LONG_PROMPTS:
            raise MetaAlignerError(f"unknown long_prompts rule {self.long_prompts!r}; choose one of "
                                   f"{', '.join(LONG_PROMPTS)}")
        if self.decoding == "checkpoint" and self.temperature > 0:
            raise MetaAlignerError("--temperature samples with our settings, --decoding checkpoint with the "
                                   "checkpoint's generation config: give one of them")

    @property
    def greedy(self) -> bool:
        """Our own argmax decoding (never true for "checkpoint": the checkpoint decides)."""
        return self.decoding == "greedy" and self.temperature <= 0

    def describe(self) -> dict:
        """The decoding settings as a run's fingerprint records them."""
        return {"decoding": self.decoding, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed, "long_prompts": self.long_prompts}


@dataclass
class RowEvents:
    """What a caller hears of, and says to, each row of one ``generate_all`` call (row ``i``: its
    ``i``-th prompt). ``done(i, text, tokens)`` comes once per row as soon as its text is final (the
    fast engine: when the row stops, while the batch's other rows go on; other backends: at the end),
    with its new-token count where the backend counts them (else None). ``stopped(i)`` is asked
    between decoding steps where the backend can stop one row (the fast engine): True ends that row
    there, its text so far being what ``done`` gets and what is returned. ``more(live)``, where the
    backend batches continuously (the fast engine, in the call's last batch), is asked between
    decoding steps with the number of rows decoding: the prompts it gives join the batch there,
    numbered after the call's own prompts; their texts come only through ``done``."""

    done: Callable[[int, str, int | None], None] | None = None
    stopped: Callable[[int], bool] | None = None
    more: Callable[[int], list[str]] | None = None

    def finish(self, i: int, text: str, tokens: int | None = None) -> None:
        if self.done is not None:
            self.done(i, text, tokens)

    def is_stopped(self, i: int) -> bool:
        return self.stopped is not None and bool(self.stopped(i))


class Generator(Protocol):
    name: str

    def generate(self, prompts: list[str], params: GenerationParams, progress: bool = False) -> list[str]:
        ...


BACKENDS = {
    "hf": "metaaligner.generation.hf:HFGenerator",
    "vllm": "metaaligner.generation.vllm_backend:VLLMGenerator",
    "openai": "metaaligner.generation.openai_backend:OpenAIGenerator",
}


def generate_all(generator: Generator, prompts: list[str], params: GenerationParams,
                 progress: bool = False, events: RowEvents | None = None) -> list[str]:
    """``generator.generate`` with the interface's contract checked: one completion per prompt.
    With ``events``, a backend that takes them per row (``row_events = True``: hf) gets them;
    for any other every row's ``done`` comes once all are generated."""
    per_row = events is not None and getattr(generator, "row_events", False)
    outputs = (generator.generate(prompts, params, progress=progress, events=events) if per_row
               else generator.generate(prompts, params, progress=progress))
    if len(outputs) != len(prompts):
        raise MetaAlignerError(f"backend returned {len(outputs)} outputs for {len(prompts)} prompts")
    if events is not None and not per_row:
        for i, text in enumerate(outputs):
            events.finish(i, text)
    return outputs


def resolve_backend(backend: str, base_url: str | None = None) -> str:
    """The one ``auto`` rule: openai when a ``base_url`` is given, vllm when installed with a GPU, else hf."""
    if backend != "auto":
        return backend
    return "openai" if base_url else ("vllm" if _vllm_usable() else "hf")


def get_generator(backend: str, model: str | None = None, **kwargs) -> Generator:
    """Build a backend by name (``auto``: see ``resolve_backend``)."""
    backend = resolve_backend(backend, kwargs.get("base_url"))
    if backend not in BACKENDS:
        raise MetaAlignerError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)} or auto")
    module_name, class_name = BACKENDS[backend].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(model, **kwargs)


def _vllm_usable() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()
