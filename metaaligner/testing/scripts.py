"""Import a stage script of the repository (``evaluation/judge.py``, ...) as a module, once per run, so a
test can call its functions or its ``main(config)`` in this process."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script(relpath: str) -> ModuleType:
    """The script at ``REPO/relpath`` as a module (cached in ``sys.modules`` under a name made from its path)."""
    name = "script_" + relpath.removesuffix(".py").replace("/", "_").replace("-", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / relpath)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
