"""Test helpers shipped with the package (no test framework needed to import them).

Names are imported lazily so ``python -m metaaligner.testing.openai_server`` runs cleanly.
"""
from __future__ import annotations

import importlib

_WAITS = ["wait_for", "wait_for_http"]
__all__ = ["Fault", "ScriptedOpenAIServer", "count_tokens", "fail_first_per_prompt", "fail_first_requests",
           "last_user_text", "user_text", *_WAITS]


def __getattr__(name: str):
    if name in _WAITS:
        return getattr(importlib.import_module("metaaligner.testing.waits"), name)
    if name in __all__:
        return getattr(importlib.import_module("metaaligner.testing.openai_server"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
