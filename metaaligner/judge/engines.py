"""Judge engines by name, imported lazily: ``openai`` (any OpenAI-compatible endpoint,
``engine.py``) and ``probe`` (the offline probe, ``probe.py``). Adding an engine is one module with
``make_engine(run)`` (and, for an engine that fixes its own model and prompt set, ``pinned_judge()``)
plus one line here."""
from __future__ import annotations

import importlib
from typing import Any

from metaaligner.errors import MetaAlignerError

ENGINES: dict[str, str] = {"openai": "metaaligner.judge.engine", "probe": "metaaligner.judge.probe"}


def engine_name(judge_model: str | None) -> str:
    """The engine a ``--judge_model`` names: ``probe`` is the offline probe, anything else an endpoint model."""
    return judge_model if judge_model in ENGINES else "openai"


def _module(name: str):
    if name not in ENGINES:
        raise MetaAlignerError(f"unknown judge engine {name!r}; engines: {', '.join(ENGINES)}")
    return importlib.import_module(ENGINES[name])


def pinned_judge(name: str) -> tuple[str, str] | None:
    """(judge model id, prompt set) for an engine that fixes them, else None."""
    pin = getattr(_module(name), "pinned_judge", None)
    return pin() if pin else None


def make_engine(name: str, run) -> Any:
    """The engine ``name`` for ``run`` (a ``JudgeRun``)."""
    return _module(name).make_engine(run)
