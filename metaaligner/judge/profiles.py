"""Named judging profiles (``profiles.yaml``): prompt set, judge model, decoding, parser and metric.

``resolve_judge("paper", "pairwise", "general")`` gives the prompt (with the profile's parser), the
model and the ``Decoding`` to send; any argument given explicitly overrides the profile's part.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from metaaligner.errors import MetaAlignerError
from metaaligner.judge.engine import Decoding
from metaaligner.judge.registry import MODES, JudgePrompt, get_prompt

PROFILES_FILE = Path(__file__).with_name("profiles.yaml")
DEFAULT_PROFILE = "clean"
API_DEFAULT = "api_default"


@dataclass(frozen=True)
class JudgeProfile:
    name: str
    judge_prompt: str
    judge_model: str
    decoding: Any                      # API_DEFAULT or a mapping
    parsers: dict[str, str | None] = field(default_factory=dict)
    metric: str = "win_half_tie"
    description: str = ""
    empty_cells: str = "empty"         # "nan": empty cells sent as "nan", as the released scripts' str() did


@lru_cache(maxsize=1)
def _builtin() -> dict[str, Any]:
    return yaml.safe_load(PROFILES_FILE.read_text(encoding="utf-8"))["profiles"]


def profile_names() -> list[str]:
    return sorted(_builtin())


def load_profile(name_or_path: str | None) -> JudgeProfile:
    """A built-in profile by name, or a YAML file holding one profile's fields."""
    name = name_or_path or DEFAULT_PROFILE
    if name in _builtin():
        data = _builtin()[name]
    elif Path(name).suffix in (".yaml", ".yml") and Path(name).is_file():
        from metaaligner.io import check_types, load_yaml

        data = load_yaml(name)  # named in its errors, aliases refused
        if isinstance(data, dict):
            check_types(name, "", data, {k: str for k in ("judge_prompt", "judge_model", "metric", "description",
                                                           "empty_cells")} | {"parsers": dict})
        name = Path(name).stem
    else:
        raise MetaAlignerError(f"unknown judge profile {name!r}; choose one of {profile_names()} or give a YAML "
                               "file shaped like an entry of metaaligner/judge/profiles.yaml")
    if not isinstance(data, dict):
        raise MetaAlignerError(f"judge profile {name!r}: expected a mapping")
    known = set(JudgeProfile.__dataclass_fields__) - {"name"}
    unknown = sorted(set(data) - known)
    missing = [k for k in ("judge_prompt", "judge_model", "decoding") if k not in data]
    if unknown or missing:
        raise MetaAlignerError(f"judge profile {name!r}: unknown keys {unknown}, missing keys {missing}")
    decoding = data["decoding"]
    if decoding != API_DEFAULT and not isinstance(decoding, dict):
        raise MetaAlignerError(f"judge profile {name!r}: decoding must be {API_DEFAULT} or a mapping")
    return JudgeProfile(name=name, judge_prompt=str(data["judge_prompt"]), judge_model=str(data["judge_model"]),
                        decoding=decoding, parsers=dict(data.get("parsers") or {}),
                        metric=str(data.get("metric", "win_half_tie")), description=str(data.get("description", "")),
                        empty_cells=_empty_cells(name, data.get("empty_cells", "empty")))


def _empty_cells(profile: str, value: Any) -> str:
    if value not in ("empty", "nan"):
        raise MetaAlignerError(f"judge profile {profile!r}: empty_cells must be empty or nan, got {value!r}")
    return str(value)


def profile_decoding(profile: JudgeProfile, prompt: JudgePrompt, seed: int, temperature: float | None = None,
                     max_tokens: int | None = None) -> Decoding:
    """What is sent: the profile's decoding, with explicit ``temperature`` / ``max_tokens`` on top."""
    if profile.decoding == API_DEFAULT:
        return Decoding(temperature=temperature, seed=None, max_tokens=max_tokens or None)
    spec = profile.decoding
    base_t = spec.get("temperature")
    request_seed = spec.get("seed")
    base_max = spec.get("max_tokens")
    return Decoding(
        temperature=float(base_t) if temperature is None and base_t is not None else temperature,
        seed=seed if request_seed == "request" else (None if request_seed is None else int(request_seed)),
        max_tokens=int(max_tokens or (prompt.max_tokens if base_max == "prompt" else base_max or 0)) or None)


def resolve_judge(profile_name: str | None, mode: str, family: str = "general", *, judge_prompt: str | None = None,
                  judge_model: str | None = None, parser: str | None = None, temperature: float | None = None,
                  max_tokens: int | None = None, seed: int = 0) -> tuple[JudgeProfile, JudgePrompt, str, Decoding]:
    """(profile, prompt, model, decoding) for one judge run; explicit arguments win over the profile."""
    if mode not in MODES:
        raise MetaAlignerError(f"judge mode must be one of {MODES}, got {mode!r}")
    profile = load_profile(profile_name)
    prompt = get_prompt(judge_prompt or profile.judge_prompt, mode, family,
                        parser=parser or profile.parsers.get(mode) or None)
    decoding = profile_decoding(profile, prompt, seed, temperature, max_tokens)
    return profile, prompt, judge_model or profile.judge_model, decoding
