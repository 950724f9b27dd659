"""One generation interface, several backends: ``generate(prompts, params) -> list[str]``.

Backends are resolved by name from a dict with lazy imports, so ``vllm`` or ``openai`` are only
imported when used. Every backend returns exactly one completion per prompt, in input order.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from metaaligner.errors import MetaAlignerError


@dataclass
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


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
                 progress: bool = False) -> list[str]:
    """``generator.generate`` with the interface's contract checked: one completion per prompt."""
    outputs = generator.generate(prompts, params, progress=progress)
    if len(outputs) != len(prompts):
        raise MetaAlignerError(f"backend returned {len(outputs)} outputs for {len(prompts)} prompts")
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
