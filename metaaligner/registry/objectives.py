"""The objective registry: one place that maps objective keys to their descriptions.

The built-in objectives live in ``data/objectives.yaml`` (data, not code), grouped by dataset
because two datasets use the same key with different text (``helpfulness``). Users add their own
objectives from a YAML/JSON file or inline ``key=description`` specs; those take priority.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from metaaligner.errors import MetaAlignerError

BUILTIN_FILE = Path(__file__).resolve().parents[1] / "data" / "objectives.yaml"
USER_GROUP = "user"
# An objective key (and a group) is a name, never a path: it becomes part of output file names (the
# judge writes <mode>/<policy>/<target>/<key>.csv). Letters, digits, '_', '.', '-'; not starting with
# '.' or '-', and no '..'.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_key(key: str, what: str = "objective key") -> str:
    """``key`` if it is a plain name (``KEY_PATTERN``, no ``..``), else a one-line error."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key) or ".." in key:
        raise MetaAlignerError(f"{what} {key!r} is not a plain name: use letters, digits, '_', '.' and '-' "
                               "(not starting with '.' or '-', no '..'), since it becomes part of file names")
    return key


@dataclass(frozen=True)
class Objective:
    key: str
    name: str
    description: str
    group: str
    unseen: bool = False


class ObjectiveRegistry:
    """Objectives by (group, key). ``resolve`` turns user-given keys into objectives, in order."""

    def __init__(self, objectives: list[Objective] | None = None, aliases: dict[tuple[str, str], str] | None = None):
        self._items: dict[tuple[str, str], Objective] = {}
        for obj in objectives or []:
            check_key(obj.group, "objective group")
            self._items[(obj.group, check_key(obj.key))] = obj
        self._aliases: dict[tuple[str, str], str] = dict(aliases or {})  # (group, alias) -> key
        for _, alias in self._aliases:
            check_key(alias, "objective alias")

    @classmethod
    def builtin(cls) -> "ObjectiveRegistry":
        from metaaligner.io import load_yaml

        data = load_yaml(BUILTIN_FILE)
        objectives = [
            Objective(key, spec["name"], spec["description"], group, bool(spec.get("unseen", False)))
            for group, entries in data.items()
            for key, spec in entries.items()
        ]
        aliases = {(group, str(alias)): key for group, entries in data.items()
                   for key, spec in entries.items() for alias in spec.get("aliases") or ()}
        return cls(objectives, aliases)

    def dealias(self, key: str, group: str | None = None) -> str:
        """A release spelling (``humor``, ``specificity``) -> our key (``group:key`` when needed).
        Real keys are returned unchanged, so a user objective named like an alias wins."""
        g, _, k = key.rpartition(":")
        if g:
            return f"{g}:{self._aliases.get((g, k), k)}"
        if any(k == key for _, k in self._items):
            return key
        if group and (group, key) in self._aliases:
            return f"{group}:{self._aliases[(group, key)]}"
        targets = sorted(f"{g}:{t}" for (g, a), t in self._aliases.items() if a == key)
        if len(targets) > 1:
            raise MetaAlignerError(f"objective {key!r} is ambiguous; name one of: {', '.join(targets)}")
        return targets[0] if targets else key

    def groups(self) -> list[str]:
        return sorted({group for group, _ in self._items})

    def keys(self, group: str | None = None) -> list[str]:
        return [k for (g, k) in self._items if group is None or g == group]

    def group(self, group: str) -> list[Objective]:
        return [obj for (g, _), obj in self._items.items() if g == group]

    def add(self, key: str, description: str, name: str | None = None, group: str = USER_GROUP) -> Objective:
        key, description = key.strip(), description.strip()
        if not key or not description:
            raise MetaAlignerError(f"objective needs a key and a description, got key={key!r}")
        if ":" in key or "," in key:
            raise MetaAlignerError(f"objective key {key!r} may not contain ':' or ','")
        check_key(key)
        obj = Objective(key, name or description.split(":", 1)[0].strip(), description, group)
        self._items[(group, key)] = obj
        return obj

    def add_inline(self, spec: str) -> Objective:
        """``key=description`` as given to ``--add_objective``."""
        if "=" not in spec:
            raise MetaAlignerError(f"--add_objective expects key=description, got {spec!r}")
        key, description = spec.split("=", 1)
        return self.add(key, description)

    def add_file(self, path: str | Path) -> list[Objective]:
        """A YAML or JSON mapping key -> description (or key -> {description, name}). Every value is
        type-checked (a list where a description belongs is an error, never text); YAML aliases are
        refused (``metaaligner.io.load_yaml``), JSON objects naming a key twice too."""
        from metaaligner.io import DuplicateKey, check_types, json_loads, load_yaml

        path = Path(path)
        if not path.exists():
            raise MetaAlignerError(f"{path}: objectives file not found")
        try:
            data = json_loads(path.read_text(encoding="utf-8")) if path.suffix == ".json" else load_yaml(path)
        except json.JSONDecodeError as exc:
            raise MetaAlignerError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg}); fix the file") from None
        except DuplicateKey as exc:
            raise MetaAlignerError(f"{path}: objective {exc.key!r} is given twice; keep one") from None
        if not isinstance(data, dict) or not data:
            raise MetaAlignerError(f"{path}: expected a non-empty mapping of key -> description")
        added = []
        for key, value in data.items():
            if not isinstance(key, str):
                raise MetaAlignerError(f"{path}: objective key {key!r} must be text")
            if isinstance(value, dict):
                unknown = sorted(set(value) - {"description", "name"})
                if unknown:
                    raise MetaAlignerError(f"{path}: objective {key!r}: unknown keys {unknown}; allowed: "
                                           "description, name")
                check_types(path, f"objective {key!r}: ", value, {"description": str, "name": (str, type(None))})
                added.append(self.add(key, value.get("description", ""), value.get("name")))
            elif isinstance(value, str):
                added.append(self.add(key, value))
            else:
                raise MetaAlignerError(f"{path}: objective {key!r} must map to a description string, got "
                                       f"{type(value).__name__}")
        return added

    def get(self, key: str, group: str | None = None) -> Objective:
        """Look a key up: ``group:key`` explicitly, else user objectives, then ``group``, then any
        group where the key is unique. Release spellings are aliases (``dealias``)."""
        key = self.dealias(key, group)
        if ":" in key:
            g, k = key.split(":", 1)
            if (g, k) in self._items:
                return self._items[(g, k)]
            raise self._unknown(key)
        for g in (USER_GROUP, group):
            if g is not None and (g, key) in self._items:
                return self._items[(g, key)]
        matches = [obj for (g, k), obj in self._items.items() if k == key]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            options = ", ".join(f"{m.group}:{key}" for m in matches)
            raise MetaAlignerError(f"objective {key!r} is ambiguous; name one of: {options}")
        raise self._unknown(key)

    def resolve(self, keys: str | list[str], group: str | None = None) -> list[Objective]:
        """Comma-separated (or listed) keys -> objectives, in the order given."""
        if isinstance(keys, str):
            keys = [k for k in keys.split(",")]
        keys = [k.strip() for k in keys if k.strip()]
        if not keys:
            raise MetaAlignerError("no objectives given (use --aspects key1,key2)")
        return [self.get(k, group) for k in keys]

    def descriptions(self, keys: str | list[str], group: str | None = None) -> list[str]:
        return [obj.description for obj in self.resolve(keys, group)]

    def _unknown(self, key: str) -> MetaAlignerError:
        import difflib

        known = ", ".join(sorted({f"{g}:{k}" for g, k in self._items}))
        names = {f"{g}:{k}" if ":" in key else k for g, k in self._items}
        close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return MetaAlignerError(f"unknown objective {key!r}{hint}; known keys: {known}")


def build_registry(objectives_file: str | None = None, add_objective: list[str] | None = None) -> ObjectiveRegistry:
    """The built-in registry plus the user's file and inline objectives (what the CLI flags give)."""
    registry = ObjectiveRegistry.builtin()
    if objectives_file:
        registry.add_file(objectives_file)
    for spec in add_objective or []:
        registry.add_inline(spec)
    return registry
