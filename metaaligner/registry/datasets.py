"""Dataset configs (shipped as ``metaaligner/data/datasets/<name>.yaml``, or any YAML path):
template, objective keys in score order, column names. Code never branches on a dataset's name;
it reads one of these."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from metaaligner.errors import MetaAlignerError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "data" / "datasets"


@dataclass
class DatasetConfig:
    name: str
    template: str
    objective_group: str
    objectives: list[str]
    columns: dict[str, str] = field(default_factory=lambda: {"query": "query", "goldens": "goldens",
                                                             "answer": "generated_text"})
    unseen_objectives: list[str] = field(default_factory=list)
    judge_family: str = "general"
    samples: str | None = None
    path: str | None = None

    def objective_descriptions(self, registry=None) -> list[str]:
        from metaaligner.registry.objectives import ObjectiveRegistry

        registry = registry or ObjectiveRegistry.builtin()
        return registry.descriptions(self.objectives, self.objective_group)

    def objective_names(self, registry=None) -> list[str]:
        from metaaligner.registry.objectives import ObjectiveRegistry

        registry = registry or ObjectiveRegistry.builtin()
        return [o.name for o in registry.resolve(self.objectives, self.objective_group)]


def available() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_dataset_config(name_or_path: str) -> DatasetConfig:
    """A shipped config by name (``hh-rlhf``, ``ultrafeedback``, ``imhi``) or a YAML path."""
    path = Path(name_or_path)
    if not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        close = difflib.get_close_matches(str(name_or_path), available(), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise MetaAlignerError(f"unknown dataset config {name_or_path!r}{hint}; shipped: {', '.join(available())}, "
                               "or give a path to a YAML file")
    from metaaligner.io import load_yaml

    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise MetaAlignerError(f"{path}: expected a YAML mapping of key -> value")
    known = set(DatasetConfig.__dataclass_fields__) - {"path"}
    unknown = set(data) - known
    if unknown:
        raise MetaAlignerError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    for key in ("name", "template", "objectives"):
        if key not in data:
            raise MetaAlignerError(f"{path}: missing key {key!r}")
    data.setdefault("objective_group", data["name"])
    return DatasetConfig(**data, path=str(path))
