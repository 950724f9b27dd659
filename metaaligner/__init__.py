"""MetaAligner: policy-agnostic, generalizable multi-objective alignment (NeurIPS 2024), rebuilt.

The three-line Python use (the model card's example)::

    from metaaligner import Aligner
    aligner = Aligner()          # or Aligner("path/or/hub-name", template="hh-rlhf"); "embedded" = SmolLM2
    aligner.align("How do I boil an egg?", "Put it in water.", "harmlessness,helpfulness")

``import metaaligner`` stays cheap: the public names below are imported on first access (PEP 562),
so torch/transformers load only when a model does.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily)
_LAZY = {
    "Aligner": "metaaligner.aligner.inference",
    "resolve_aligner": "metaaligner.aligner.inference",
    "GenerationParams": "metaaligner.generation",
    "build_registry": "metaaligner.registry.objectives",
    "render": "metaaligner.registry.templates",
    "MetaAlignerError": "metaaligner.errors",
    "DataError": "metaaligner.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metaaligner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
