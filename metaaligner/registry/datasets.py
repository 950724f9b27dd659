"""Dataset configs (shipped as ``metaaligner/data/datasets/<name>.yaml``, or any YAML path):
template, objective keys in score order, column names. Code never branches on a dataset's name;
it reads one of these."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from metaaligner.errors import MetaAlignerError

REPO_ROOT = Path(__file__).resolve().parents[2]  # a checkout; after a plain `pip install .`: site-packages' parent
CONFIG_DIR = Path(__file__).resolve().parents[1] / "data" / "datasets"
DATA_ENV = "METAALIGNER_DATA"  # a folder holding samples/ (a checkout of the repository, or a copy of its data)


def find_data(relative: str | Path, what: str = "data") -> Path:
    """A data path the user did not name (a shipped dataset config's samples folder, the probe's training
    file), found where the data is rather than where the package was installed:

    1. ``relative`` itself when absolute;
    2. ``$METAALIGNER_DATA/<relative>`` (the documented data folder);
    3. the working tree: ``<relative>`` under the current folder, then under each of its parents;
    4. the checkout the package was imported from (an editable install).

    Absent everywhere: a one-line error listing where it looked and how to get the data."""
    relative = Path(relative)
    if relative.is_absolute():
        return relative
    places: list[Path] = []
    if os.environ.get(DATA_ENV):
        places.append(Path(os.environ[DATA_ENV]).expanduser())
    cwd = Path.cwd().resolve()
    places += [cwd, *cwd.parents, REPO_ROOT]
    for place in dict.fromkeys(places):
        if (place / relative).exists():
            return place / relative
    env = f"${DATA_ENV} ({os.environ[DATA_ENV]})" if os.environ.get(DATA_ENV) else f"${DATA_ENV} (unset)"
    raise MetaAlignerError(f"{relative}: no such {what} under {env}, the current folder ({cwd}) or its parents, or "
                           f"{REPO_ROOT}; the samples ship with the repository, not the installed package: run from "
                           f"a checkout, set {DATA_ENV} to a checkout (a folder holding samples/), or name the data "
                           "with --data_dir FILE_OR_FOLDER (the release's other policy outputs: "
                           "scripts/fetch_release_samples.py)")


CONDITIONING_LABELS = ("name", "key")


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
    # Policies whose outputs are folders of tasks (IMHI: <policy>/<task>.csv): Table 2 pools each
    # policy's tasks into one row; the task names, in the order the report lists them.
    tasks: list[str] = field(default_factory=list)
    # The SFT / CDPO conditioning prompt as the release wrote it for this dataset (``--conditioning_text
    # released``; the clean text always uses display names and two decimals): ``name`` (``<Harmlessness>``)
    # or ``key`` (``<instruction_following>``) labels, and whether the scores are integer ratings
    # (a whole number written ``5``, not ``5.0``).
    conditioning_labels: str = "name"
    integer_ratings: bool = False
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
    from metaaligner.io import check_types

    check_types(path, "", data, {"name": str, "template": str, "objective_group": str, "objectives": (list, str),
                                 "columns": (dict, str), "unseen_objectives": (list, str), "judge_family": str,
                                 "samples": (str, type(None)), "tasks": (list, str), "conditioning_labels": str,
                                 "integer_ratings": bool})
    if data.get("conditioning_labels", "name") not in CONDITIONING_LABELS:
        raise MetaAlignerError(f"{path}: conditioning_labels must be one of {CONDITIONING_LABELS}, "
                               f"got {data['conditioning_labels']!r}")
    data.setdefault("objective_group", data["name"])
    return DatasetConfig(**data, path=str(path))
