"""The judge registry: prompt sets, answer parsers and prices loaded from ``prompts.yaml`` (data).

``get_prompt("clean", "pairwise", "general")`` returns a ``JudgePrompt`` that renders chat messages
and parses replies; ``default_prices("gpt-4o-2024-05-13")`` finds the registry's price by the
longest matching model prefix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from metaaligner.errors import MetaAlignerError

REGISTRY_FILE = Path(__file__).with_name("prompts.yaml")
MODES = ("pairwise", "rating")
FIELDS = {"pairwise": ("query", "output1", "output2", "aspects"), "rating": ("query", "output", "aspects")}
_FIELD_RE = re.compile(r"\{(query|output1|output2|output|aspects)\}")
_FLAG_NAMES = {"IGNORECASE": re.IGNORECASE, "DOTALL": re.DOTALL, "MULTILINE": re.MULTILINE}


PARSER_METHODS = ("regex", "released_substring")


@dataclass(frozen=True)
class ParserSpec:
    """An anchored regex whose first group is the answer: ``choice`` (0/1/2) or ``score`` (int).

    ``method: released_substring`` (choice only) is the released scripts' substring check instead
    (``positions.released_verdict``): it needs the candidate's position, never fails, never reminds.
    """

    name: str
    kind: str
    pattern: str
    flags: tuple[str, ...] = ()
    method: str = "regex"

    def __post_init__(self):
        if self.kind not in ("choice", "score"):
            raise MetaAlignerError(f"parser {self.name!r}: kind must be choice or score, got {self.kind!r}")
        if self.method not in PARSER_METHODS:
            raise MetaAlignerError(f"parser {self.name!r}: method must be one of {PARSER_METHODS}, "
                                   f"got {self.method!r}")
        if self.method != "regex":
            if self.kind != "choice":
                raise MetaAlignerError(f"parser {self.name!r}: {self.method} reads pairwise choices only")
            return
        unknown = [f for f in self.flags if f not in _FLAG_NAMES]
        if unknown:
            raise MetaAlignerError(f"parser {self.name!r}: unknown regex flags {unknown}")
        try:
            self.regex
        except re.error as exc:
            raise MetaAlignerError(f"parser {self.name!r}: bad regex ({exc})") from None

    @property
    def regex(self) -> re.Pattern:
        flags = 0
        for name in self.flags:
            flags |= _FLAG_NAMES[name]
        return _compile(self.pattern, flags)

    def parse(self, reply: str | None) -> int | None:
        """The answer as an int (choice 0/1/2 or score), or None when the reply does not match."""
        if reply is None or self.method != "regex":
            return None
        match = self.regex.match(reply)
        if not match:
            return None
        try:
            return int(match.group(1))
        except (IndexError, ValueError, TypeError):
            return None

    def verdict(self, reply: str | None, position: int) -> str:
        """win / tie / loss / invalid of the candidate in ``position`` (pairwise)."""
        from metaaligner.judge.positions import released_verdict, verdict_from_choice

        if self.method == "released_substring":
            return released_verdict(reply, position)
        return verdict_from_choice(self.parse(reply), position)

    @property
    def never_invalid(self) -> bool:
        return self.method == "released_substring"

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "kind": self.kind, "pattern": self.pattern, "flags": list(self.flags)}
        if self.method != "regex":  # regex specs keep their old cache keys
            out["method"] = self.method
        return out


@lru_cache(maxsize=64)
def _compile(pattern: str, flags: int) -> re.Pattern:
    return re.compile(pattern, flags)


@dataclass(frozen=True)
class JudgePrompt:
    set_name: str
    mode: str
    family: str
    user: str
    parser: ParserSpec
    reminder: str
    max_tokens: int = 32
    system: str | None = None

    def render(self, **values: str) -> str:
        """The user message with the fields inserted verbatim in one pass."""
        missing = [f for f in FIELDS[self.mode] if f not in values]
        if missing:
            raise MetaAlignerError(f"judge prompt {self.set_name}/{self.mode}: missing values {missing}")
        return _FIELD_RE.sub(lambda m: str(values.get(m.group(1), m.group(0))), self.user)

    def messages(self, **values: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": self.render(**values)})
        return messages

    def reminder_messages(self, messages: list[dict[str, str]], reply: str) -> list[dict[str, str]]:
        """The follow-up conversation sent once when ``reply`` did not parse."""
        return [*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": self.reminder}]


@lru_cache(maxsize=1)
def load_registry() -> dict[str, Any]:
    from metaaligner.io import load_yaml

    return load_yaml(REGISTRY_FILE)


def prompt_set_names() -> list[str]:
    return sorted(load_registry()["prompt_sets"])


def _load_set(name_or_path: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    registry = load_registry()
    parsers = dict(registry.get("parsers", {}))
    if name_or_path in registry["prompt_sets"]:
        return name_or_path, registry["prompt_sets"][name_or_path], parsers
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") and path.exists():
        from metaaligner.io import DuplicateKey, check_types, json_loads, load_yaml

        try:  # named in every error; aliases refused; each field's type checked
            data = (json_loads(path.read_text(encoding="utf-8")) if path.suffix == ".json" else load_yaml(path)) or {}
        except ValueError as exc:  # invalid JSON, or a key given twice
            what = f"key {exc.key!r} given twice" if isinstance(exc, DuplicateKey) else f"invalid JSON ({exc})"
            raise MetaAlignerError(f"{path}: {what}; fix the file") from None
        if not isinstance(data, dict):
            raise MetaAlignerError(f"{path}: a judge prompt set must be a mapping")
        check_types(path, "", data, {"parsers": (dict, dict), **{mode: (dict, dict) for mode in MODES}})
        for mode in MODES:
            for family, spec in (data.get(mode) or {}).items():
                check_types(path, f"{mode}/{family}: ", spec, {"user": str, "reminder": str,
                                                               "system": (str, type(None)), "max_tokens": int,
                                                               "parser": (str, dict)})
        parsers.update(data.pop("parsers", None) or {})
        return path.stem, data, parsers
    raise MetaAlignerError(f"unknown judge prompt {name_or_path!r}; choose one of {prompt_set_names()} "
                           "or give a YAML file shaped like an entry of metaaligner/judge/prompts.yaml")


def parser_names(extra: dict[str, Any] | None = None) -> list[str]:
    return sorted({**dict(load_registry().get("parsers", {})), **(extra or {})})


def get_prompt(name_or_path: str, mode: str, family: str = "general", parser: str | None = None) -> JudgePrompt:
    """The prompt of set ``name_or_path`` for ``mode`` and ``family`` (falling back to ``general``);
    ``parser`` names a registry parser that replaces the set's own (same kind)."""
    if mode not in MODES:
        raise MetaAlignerError(f"judge mode must be one of {MODES}, got {mode!r}")
    set_name, data, parsers = _load_set(name_or_path)
    by_family = data.get(mode) or {}
    spec = by_family.get(family) or by_family.get("general")
    if not isinstance(spec, dict):
        raise MetaAlignerError(f"judge prompt set {set_name!r} has no {mode!r} prompt for family {family!r}")
    where = f"judge prompt {set_name}/{mode}/{family}"
    user = spec.get("user")
    if not isinstance(user, str):
        raise MetaAlignerError(f"{where}: needs a 'user' string")
    for field in FIELDS[mode]:
        if "{" + field + "}" not in user:
            raise MetaAlignerError(f"{where}: the user text lacks the field {{{field}}}")
    parser_name = parser or spec.get("parser")
    parser_spec = parsers.get(parser_name) if isinstance(parser_name, str) else parser_name
    if not isinstance(parser_spec, dict):
        raise MetaAlignerError(f"{where}: unknown parser {parser_name!r}; known: {sorted(parsers)}")
    spec_parser = ParserSpec(name=str(parser_spec.get("name", parser_name)), kind=parser_spec.get("kind", ""),
                             pattern=str(parser_spec.get("pattern", "")), flags=tuple(parser_spec.get("flags") or ()),
                             method=str(parser_spec.get("method", "regex")))
    expected_kind = "choice" if mode == "pairwise" else "score"
    if spec_parser.kind != expected_kind:
        raise MetaAlignerError(f"{where}: a {mode} prompt needs a {expected_kind} parser, got "
                               f"{spec_parser.name!r} ({spec_parser.kind})")
    return JudgePrompt(set_name=set_name, mode=mode, family=family, user=user, parser=spec_parser,
                       reminder=str(spec.get("reminder", "")), max_tokens=int(spec.get("max_tokens", 32)),
                       system=spec.get("system"))


def default_prices(model: str) -> tuple[float, float] | None:
    """USD per 1k (input, output) tokens for ``model`` by the longest matching prefix, or None."""
    prices = load_registry().get("prices") or {}
    name = model.rsplit("/", 1)[-1] if "/" in model and not Path(model).exists() else model
    best = None
    for prefix, pair in prices.items():
        if name == prefix or name.startswith(prefix + "-") or name.startswith(prefix + ":"):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, pair)
    if best is None:
        return None
    return float(best[1][0]), float(best[1][1])
