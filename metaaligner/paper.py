"""Paper-scale runs as data: ``configs/paper/<dataset>.yaml`` -> the stage commands, checked and run.

A paper config lists the pipeline's stages in order; each stage names its script, an optional
launcher (``torchrun ...``, ``accelerate launch ...``), and its flags as a mapping whose keys are the
script's real flag names (``check_flags`` verifies them against the script's own parser, so a config
can never drift from the code). ``${NAME}`` in a value is replaced from ``variables`` (a ``variants``
entry such as ``7B`` and ``--set NAME=VALUE`` override them). ``requires`` lists input files that must
exist before the stage may start (e.g. a preference CSV that this repository cannot download).
``ablations`` names Table 3's ablation rows (``no_equal`` = "-Equal Pref.", ``no_warmup`` = "-Warm Up"):
each sets variables after the variant's, and ``${ABLATION_SUFFIX}`` (``-<name>``, empty for the full
run) keeps its outputs in a run folder of their own.

    from metaaligner.paper import load_paper_config
    run = load_paper_config("configs/paper/hh-rlhf.yaml", variant="7B", ablation="no_equal")
    for stage in run.stages:
        print(stage.command())
"""
from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metaaligner.errors import MetaAlignerError

REPO_ROOT = Path(__file__).resolve().parent.parent
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class PaperStage:
    name: str
    script: str
    args: dict[str, Any]
    launcher: str = ""
    device_hours: str = "fill from your logs"
    requires: list[str] = field(default_factory=list)
    note: str = ""

    def argv(self, python: str = "python") -> list[str]:
        """The full command line: launcher (or ``python``), script, ``--flag value`` pairs in order.
        ``true`` becomes a bare ``--flag``, ``false`` ``--flag false``, lists are comma-joined."""
        head = shlex.split(self.launcher) if self.launcher else [python]
        out = head + [self.script]
        for key, value in self.args.items():
            if value is None:
                continue
            if value is True:
                out.append(f"--{key}")
            elif value is False:
                out += [f"--{key}", "false"]
            elif isinstance(value, (list, tuple)):
                out += [f"--{key}", ",".join(str(v) for v in value)]
            else:
                out += [f"--{key}", str(value)]
        return out

    def command(self, python: str = "python") -> str:
        return shlex.join(self.argv(python))


@dataclass
class PaperRun:
    name: str
    path: Path
    variables: dict[str, str]
    stages: list[PaperStage]
    description: str = ""
    ablation: str | None = None
    ablation_label: str = ""

    def select(self, names: list[str] | None) -> list[PaperStage]:
        if not names:
            return list(self.stages)
        known = [s.name for s in self.stages]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise MetaAlignerError(f"{self.path}: unknown stage(s) {unknown}; stages: {', '.join(known)}")
        return [s for s in self.stages if s.name in names]


def _substitute(value: Any, variables: dict[str, str], where: str) -> Any:
    if isinstance(value, str):
        def repl(match: re.Match) -> str:
            name = match.group(1)
            if name not in variables:
                raise MetaAlignerError(f"{where}: unknown variable ${{{name}}}; known: {', '.join(sorted(variables))}")
            return str(variables[name])
        for _ in range(10):  # variables may refer to variables
            new = _VAR.sub(repl, value)
            if new == value:
                break
            value = new
        return value
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    return value


def _apply_ablation(path: Path, data: dict, ablation: str | None, variables: dict[str, str]) -> str:
    """Set an ablation's variables (and ``ABLATION``, ``ABLATION_SUFFIX``); return its label."""
    ablations = data.get("ablations") or {}
    variables["ABLATION"], variables["ABLATION_SUFFIX"] = "none", ""
    if ablation is None:
        return ""
    if ablation not in ablations:
        raise MetaAlignerError(f"{path}: unknown ablation {ablation!r}; ablations: "
                               f"{', '.join(map(str, ablations)) or 'none'}")
    entry = ablations[ablation] or {}
    variables.update({k: str(v) for k, v in (entry.get("variables") or {}).items()})
    variables["ABLATION"], variables["ABLATION_SUFFIX"] = ablation, f"-{ablation}"
    return str(entry.get("label") or ablation)


def load_paper_config(path: str | Path, variant: str | None = None,
                      overrides: dict[str, str] | None = None, ablation: str | None = None) -> PaperRun:
    """Read a paper config; apply the ``variant``'s variables, then the ``ablation``'s, then ``overrides``."""
    path = Path(path)
    if not path.is_file():
        raise MetaAlignerError(f"{path}: no such paper config (see configs/paper/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MetaAlignerError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise MetaAlignerError(f"{path}: expected a mapping with a 'stages' list")
    variables = {k: str(v) for k, v in (data.get("variables") or {}).items()}
    variants = data.get("variants") or {}
    variant = variant or data.get("default_variant")
    if variant is not None:
        if str(variant) not in variants:
            raise MetaAlignerError(f"{path}: unknown variant {variant!r}; variants: {', '.join(map(str, variants))}")
        variables.update({k: str(v) for k, v in (variants[str(variant)] or {}).items()})
        variables["VARIANT"] = str(variant)
    label = _apply_ablation(path, data, ablation, variables)
    for key, value in (overrides or {}).items():
        variables[key] = str(value)
    stages = []
    for i, raw in enumerate(data["stages"], start=1):
        where = f"{path}: stage {i}"
        if not isinstance(raw, dict) or not raw.get("name") or not raw.get("script"):
            raise MetaAlignerError(f"{where}: needs 'name' and 'script'")
        where = f"{path}: stage {raw['name']!r}"
        args = raw.get("args") or {}
        if not isinstance(args, dict):
            raise MetaAlignerError(f"{where}: 'args' must map flag names to values")
        stages.append(PaperStage(
            name=str(raw["name"]), script=str(raw["script"]),
            args={str(k): _substitute(v, variables, where) for k, v in args.items()},
            launcher=_substitute(str(raw.get("launcher") or ""), variables, where),
            device_hours=str(raw.get("device_hours", "fill from your logs")),
            requires=[_substitute(str(r), variables, where) for r in raw.get("requires") or []],
            note=_substitute(str(raw.get("note") or ""), variables, where)))
    return PaperRun(name=str(data.get("name", path.stem)), path=path, variables=variables, stages=stages,
                    description=str(data.get("description") or ""), ablation=ablation, ablation_label=label)


def script_flags(script: str | Path, repo_root: Path = REPO_ROOT) -> set[str]:
    """Every flag name (dest) that a stage script's ``make_parser()`` accepts, without running it."""
    path = Path(script)
    if not path.is_absolute():
        path = repo_root / path
    if not path.is_file():
        raise MetaAlignerError(f"{path}: stage script not found")
    name = f"_paper_stage_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    if not hasattr(module, "make_parser"):
        raise MetaAlignerError(f"{path}: has no make_parser()")
    parser = module.make_parser()
    return {action.dest for action in parser._actions if action.dest != "help"}


def check_flags(stage: PaperStage, repo_root: Path = REPO_ROOT) -> list[str]:
    """Flag names in ``stage.args`` that its script does not know (empty when all are real)."""
    flags = script_flags(stage.script, repo_root)
    return sorted(k for k in stage.args if k not in flags)


def missing_inputs(stage: PaperStage, repo_root: Path = REPO_ROOT) -> list[str]:
    return [r for r in stage.requires if not (Path(r) if Path(r).is_absolute() else repo_root / r).exists()]
