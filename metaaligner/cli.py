"""Shared command-line plumbing: dataclass configs -> argparse (help from field metadata),
``--config_file x.yaml`` for defaults (CLI flags override it, unknown keys are rejected), and one-line
errors instead of tracebacks for user mistakes.

We build on transformers' ``HfArgumentParser`` (what TRL's ``TrlParser`` extends) and add:
exact flag names only (no prefix matching), an unknown flag as one ``error:`` line naming the closest
real flag, deprecated spellings that still parse but print one ``warning:`` line
(``field(metadata={"help": ..., **deprecated_aliases("--config")})``), and booleans shown as bare
flags in ``--help`` (``--resume``) while ``--resume true/false`` still parses.
"""
from __future__ import annotations

import difflib
import errno
import logging
import os
import re
import sys
from typing import Any, Callable

YAML_FLAG = "--config_file"
DEPRECATED_KEY = "deprecated_aliases"
_PARSER_CLASS = None


def deprecated_aliases(*flags: str) -> dict[str, tuple[str, ...]]:
    """Field metadata for old flag spellings: accepted, hidden from --help's flag column, warned about."""
    return {DEPRECATED_KEY: tuple(flags)}


# ---------------------------------------------------------------- flag rules, declared next to the field

CHECK_KEY = "check"


class Rule:
    """What a flag accepts, declared in its field's metadata (``**check(...)``) so that the rule and its
    ``--help`` text live together: a range (``ge``/``gt``/``le``/``lt``; ``None`` = unset is always
    allowed), extra values outside it (``also``: e.g. ``-1`` = the registry's default), and pairs:
    ``only_with={"backend": ("openai", "auto")}`` (when this flag is given, those flags must hold one of
    those values, else the flag would be silently ignored) and ``not_with={"mode": ("rating",)}``."""

    def __init__(self, ge=None, gt=None, le=None, lt=None, also=(), only_with=None, not_with=None):
        self.ge, self.gt, self.le, self.lt, self.also = ge, gt, le, lt, tuple(also)
        self.only_with, self.not_with = dict(only_with or {}), dict(not_with or {})

    def range_text(self) -> str:
        bounds = [f"{op} {v:g}" if isinstance(v, float) else f"{op} {v}"
                  for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if v is not None]
        text = " and ".join(bounds)
        return text + (", or " + " or ".join(str(v) for v in self.also) if text and self.also else "")

    def describe(self) -> str:
        parts = [self.range_text()] if self.range_text() else []
        parts += [f"only with --{k} {' or '.join(map(str, v))}" for k, v in self.only_with.items()]
        parts += [f"not with --{k} {' or '.join(map(str, v))}" for k, v in self.not_with.items()]
        return "; ".join(parts)

    def in_range(self, value) -> bool:
        if value is None or value in self.also:
            return True
        try:
            return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                    and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        except TypeError:
            return False


def check(ge=None, gt=None, le=None, lt=None, also=(), only_with=None, not_with=None) -> dict[str, Rule]:
    """Field metadata for a flag's rule: ``field(default=16, metadata={"help": ..., **check(ge=1)})``.
    ``parse`` (and ``run_main``) refuse a value that breaks it before any work starts; ``--help`` shows it."""
    return {CHECK_KEY: Rule(ge, gt, le, lt, also, only_with, not_with)}


def _is_given(config, f) -> bool:
    import dataclasses

    value = getattr(config, f.name)
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = None
    return value not in (None, False, "", []) and value != default


def check_config(*configs) -> None:
    """One validation pass over config dataclasses: every field's declared ``Rule`` (a one-line
    ``MetaAlignerError`` naming the flag, what it accepts and what it got)."""
    import dataclasses

    from metaaligner.errors import MetaAlignerError

    for config in configs:
        if not dataclasses.is_dataclass(config):
            continue
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        for f in dataclasses.fields(config):
            rule = f.metadata.get(CHECK_KEY)
            if rule is None:
                continue
            value = values[f.name]
            if not isinstance(value, bool) and not rule.in_range(value):
                raise MetaAlignerError(f"--{f.name} must be {rule.range_text()}, got {value!r}")
            if not _is_given(config, f):
                continue
            for other, allowed in rule.only_with.items():
                if values.get(other) not in allowed:
                    raise MetaAlignerError(f"--{f.name} needs --{other} {' or '.join(map(str, allowed))} (got "
                                           f"--{other} {values.get(other)}): it would be ignored")
            for other, refused in rule.not_with.items():
                if values.get(other) in refused:
                    raise MetaAlignerError(f"--{f.name} does not go with --{other} {values.get(other)}")


def config_fingerprint(config, ignore: tuple[str, ...] | frozenset[str] = ()) -> dict[str, Any]:
    """Every flag of ``config`` as ``{"--name": value}`` for a run's fingerprint, except the fields named in
    ``ignore`` (those that cannot change an output row: ``--resume``, ``--dry_run``, where the rows are read
    from or written to...). A flag added later is covered by default; URL credentials are redacted."""
    import dataclasses
    import json

    from metaaligner.io import redact_url

    unknown = sorted(set(ignore) - {f.name for f in dataclasses.fields(config)})
    if unknown:  # a renamed flag must not silently drop out of the fingerprint's exceptions
        raise ValueError(f"{type(config).__name__} has no fields {unknown}")
    out = {}
    for f in dataclasses.fields(config):
        if f.name in ignore:
            continue
        value = getattr(config, f.name)
        if isinstance(value, str) and "://" in value:
            value = redact_url(value)
        out[f"--{f.name}"] = json.loads(json.dumps(value, default=str))
    return out


def deprecation_line(old: str, new: str) -> str:
    return f"warning: {old} is deprecated; use {new} (the old name will be removed in a later release)"


def closest(name: str, candidates) -> str:
    """' (did you mean X?)' for the nearest candidate by difflib, else ''."""
    match = difflib.get_close_matches(name, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def _is_flag(action) -> bool:
    """A bool field as HfArgumentParser builds it: ``--x`` alone means True, ``--x false`` still parses."""
    return action.nargs == "?" and action.const is True and getattr(action.type, "__name__", "") == "string_to_bool"


def _help_formatter():
    import argparse
    import re

    class HelpFormatter(argparse.RawDescriptionHelpFormatter):
        """Keeps the docstring's line breaks; shows booleans as bare flags; hides deprecated names."""

        def _format_action_invocation(self, action):
            old = set(getattr(action, DEPRECATED_KEY, ()))
            names = [s for s in action.option_strings if s not in old]
            if not names:  # a positional
                return super()._format_action_invocation(action)
            if action.nargs == 0 or _is_flag(action):
                return ", ".join(names)
            args = self._format_args(action, self._get_default_metavar_for_optional(action))
            return ", ".join(f"{name} {args}" for name in names)

        def _format_args(self, action, default_metavar):
            return "" if _is_flag(action) else super()._format_args(action, default_metavar)

        def _format_usage(self, usage, actions, groups, prefix):
            # argparse writes "[--flag ARGS]"; for a bare flag ARGS is empty, leaving "[--flag ]".
            return re.sub(r"(--[\w-]+) \]", r"\1]", super()._format_usage(usage, actions, groups, prefix))

        def _expand_help(self, action):
            # At --help time, so a default set by --config_file shows too.
            return super()._expand_help(action) + default_note(action)

    return HelpFormatter


# A help text that already says what the flag's default is ("default: the --dataset config's", "rloo
# (default) or grpo"); other defaults it names ("-1 = registry default", "0: torch's default") do not count.
_STATES_DEFAULT = re.compile(r"(?<!'s )(?<!' )(?<!registry )(?<!offline )\bdefault\b(?! of\b)(?! targets\b)", re.I)


def default_text(value) -> str:
    """A default as --help shows it: ``none``, ``true``/``false``, a list's items, a string bare."""
    import enum

    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return " ".join(default_text(v) for v in value)
    if value == "":
        return "empty"
    return str(value)


def default_note(action) -> str:
    """What --help appends to a flag's help: `` (default: X)`` unless the help already says it,
    `` (required)`` for a required flag, nothing for a bare flag that is off unless given."""
    import argparse

    if isinstance(action, argparse._HelpAction) or not action.option_strings:
        return ""
    if action.required:
        return " (required)"
    if action.nargs == 0 or (_is_flag(action) and action.default in (False, None)):
        return ""
    if _STATES_DEFAULT.search(action.help or ""):
        return ""
    return f" (default: {default_text(action.default)})"


def plain_text(text: str | None) -> str | None:
    """Docstring and field help as --help prints them: reST's double backticks dropped
    (````rewards.csv```` reads ``rewards.csv``)."""
    return text.replace("``", "") if text else text


def plain_parser(description: str | None = None):
    """An ``argparse`` parser for scripts without a config dataclass (the benchmarks): the same ``--help``
    as the stage scripts (docstring line breaks kept, double backticks dropped, every default shown)."""
    import argparse

    return argparse.ArgumentParser(description=plain_text(description), formatter_class=_help_formatter())


def _parser_class():
    """HfArgumentParser that knows deprecated aliases and reports errors as one line."""
    global _PARSER_CLASS
    if _PARSER_CLASS is not None:
        return _PARSER_CLASS
    import copy
    import types

    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        @staticmethod
        def _parse_dataclass_field(parser, field):
            old = tuple(field.metadata.get(DEPRECATED_KEY, ()))
            rule = field.metadata.get(CHECK_KEY)
            if old or rule is not None:
                meta = {k: v for k, v in field.metadata.items() if k not in (DEPRECATED_KEY, CHECK_KEY)}
                if old:
                    given = meta.get("aliases", [])
                    meta["aliases"] = [*([given] if isinstance(given, str) else given), *old]
                if rule is not None and rule.describe():  # the rule shows where the flag is documented
                    meta["help"] = f"{meta.get('help', '')} [{rule.describe()}]".strip()
                field = copy.copy(field)
                field.metadata = types.MappingProxyType(meta)
            HfArgumentParser._parse_dataclass_field(parser, field)
            negation = parser._option_string_actions.get(f"--no_{field.name}")
            if negation is not None and negation.dest == field.name:  # HfArgumentParser's twin of a True bool
                negation.help = f"turn --{field.name} off (the same as --{field.name} false)"
            if old:
                action = parser._option_string_actions[f"--{field.name}"]
                setattr(action, DEPRECATED_KEY, old)
                note = f"(old name{'s' if len(old) > 1 else ''} {', '.join(old)}: deprecated)"
                action.help = f"{action.help} {note}" if action.help else note

        def error(self, message):
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    _PARSER_CLASS = Parser
    return Parser


def make_parser(*dataclass_types, description: str | None = None):
    parser = _parser_class()(dataclass_types, description=plain_text(description),
                             formatter_class=_help_formatter(), allow_abbrev=False)
    parser.add_argument(YAML_FLAG, default=None, metavar="FILE.yaml",
                        help="YAML file of flag defaults; flags given on the command line override it")
    # argparse %-formats help strings: a literal "95%" in a field's help made --help crash.
    for action in parser._actions:
        action.help = plain_text(action.help)
        if action.help and "%" in action.help and "%(" not in action.help and "%%" not in action.help:
            action.help = action.help.replace("%", "%%")
    return parser


def _deprecated_map(parser) -> dict[str, Any]:
    """old spelling -> its action, for every deprecated alias of the parser."""
    return {old: action for action in parser._actions for old in getattr(action, DEPRECATED_KEY, ())}


def _warn_deprecated(parser, args: list[str]) -> None:
    old_names = _deprecated_map(parser)
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in old_names:
            print(deprecation_line(name, old_names[name].option_strings[0]), file=sys.stderr)


def _rename_deprecated_keys(parser, path: str, values: dict) -> None:
    """``config_file`` YAML keys spelled like a deprecated flag go to the flag's current name."""
    for old, action in _deprecated_map(parser).items():
        key = old.lstrip("-")
        if key in values and key != action.dest:
            print(deprecation_line(f"{path}: key {key}", action.dest), file=sys.stderr)
            values[action.dest] = values.pop(key)


# The released scripts took the key as a flag (--api_key YOUR_OPENAI_API_KEY); ours read it from the
# environment only, so it stays out of shell history and process lists.
KEY_FLAGS = ("--api_key", "--api-key", "--openai_api_key", "--openai-api-key")


def _reject_unknown(parser, remaining: list[str]) -> None:
    """One ``error:`` line for the first argument nobody consumed, with the closest real flag; a key
    flag is named first, and its value is never printed."""
    flags = [s for s in remaining if s.startswith("-")]
    if not flags:
        parser.error(f"unexpected argument {remaining[0]!r}; see --help")
    keys = [f.split("=", 1)[0] for f in flags if f.split("=", 1)[0] in KEY_FLAGS]
    if keys:
        parser.error(f"unknown flag {keys[0]}: API keys are never flags here; put the key in the environment "
                     "instead (OPENAI_API_KEY=... python ...); see --help")
    name = flags[0].split("=", 1)[0]
    known = [s for a in parser._actions for s in a.option_strings if s not in getattr(a, DEPRECATED_KEY, ())]
    parser.error(f"unknown flag {name}{closest(name, known)}; see --help")


def parse(parser, argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse into the parser's dataclasses, applying ``--config_file`` defaults first."""
    args = list(sys.argv[1:] if argv is None else argv)
    if YAML_FLAG in args:
        i = args.index(YAML_FLAG)
        if i + 1 >= len(args):
            parser.error(f"{YAML_FLAG} needs a file")
        path = args[i + 1]
        del args[i:i + 2]
        from metaaligner.errors import DataError
        from metaaligner.io import load_yaml

        try:  # aliases refused, errors name the file
            values = load_yaml(path) or {}
        except OSError as exc:
            parser.error(f"{path}: {exc.strerror}")
        except DataError as exc:
            parser.error(str(exc))
        if not isinstance(values, dict):
            parser.error(f"{path}: expected a YAML mapping of flag -> value")
        dests = {a.dest: a for a in parser._actions}
        _rename_deprecated_keys(parser, path, values)
        unknown = sorted(set(values) - set(dests))
        if unknown:
            parser.error(f"{path}: unknown keys {unknown}{closest(unknown[0], dests)}")
        for key, value in values.items():
            dests[key].default = value
            dests[key].required = False
    _warn_deprecated(parser, args)
    # No .args file next to the script is read: a stray file must not change a run's settings.
    from metaaligner.errors import MetaAlignerError

    try:  # a config's __post_init__ may refuse a value: one line, like the rules below
        *outputs, remaining = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True,
                                                                 look_for_args_file=False)
    except MetaAlignerError as exc:
        parser.error(str(exc))
    if remaining:
        _reject_unknown(parser, remaining)
    # The --config_file action belongs to no dataclass: HfArgumentParser returns it as a trailing
    # Namespace, which would be passed to main() as an extra argument.
    import argparse

    if outputs and isinstance(outputs[-1], argparse.Namespace) and set(vars(outputs[-1])) <= {"config_file"}:
        outputs = outputs[:-1]
    try:  # every flag's rule, before any work starts
        check_config(*outputs)
    except MetaAlignerError as exc:
        parser.error(str(exc))
    return tuple(outputs)


# Libraries whose FutureWarnings a stage run hides: they speak to our code's maintainers, not its users.
LIBRARY_MODULES = r"(transformers|peft|trl|accelerate|datasets|torch|huggingface_hub|deepspeed)(\.|$)"


def _uses_deepspeed(configs) -> bool:
    launched = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")
    return launched or any(getattr(c, "deepspeed", None) for c in configs)


_HIDDEN_BARS = ("Loading weights", "Writing model shards")


def _hide_weight_loading_bar() -> None:
    """transformers 5 draws bars for loading and saving weights inside our own (per-row, per-step) bar;
    a stage shows one bar per long loop."""
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "set_tqdm_hook"):
        return

    def hook(factory, args, kwargs):
        if kwargs.get("desc") in _HIDDEN_BARS:
            return hf_logging.EmptyTqdm(*args, **kwargs)
        return factory(*args, **kwargs)

    hf_logging.set_tqdm_hook(hook)


def quiet_libraries(configs=()) -> None:
    """A stage run prints what its user needs: no library FutureWarnings, no DeepSpeed accelerator warning
    in a run that does not use DeepSpeed, no weight loading/saving bars."""
    import importlib.util
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=LIBRARY_MODULES)
    if "DS_ACCELERATOR" not in os.environ and not _uses_deepspeed(configs) and importlib.util.find_spec("deepspeed"):
        # accelerate imports an installed deepspeed only to type-check models (extract_model_from_parallel);
        # its import auto-detects an accelerator and, without CUDA, warns "unable to detect". This run never
        # uses DeepSpeed, so its accelerator choice does not matter.
        os.environ["DS_ACCELERATOR"] = "cpu"
    if "transformers" in sys.modules:
        _hide_weight_loading_bar()


def run_main(main: Callable[..., Any], *configs) -> int:
    """Call ``main``; print user-facing errors (``MetaAlignerError``, OS errors, malformed YAML) as
    one line ``error: ...`` (URL credentials redacted) and exit 2."""
    from metaaligner.errors import MetaAlignerError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries(configs)
    quiet_http_logs()
    try:
        check_config(*configs)  # also for configs built in Python, not parsed
        main(*configs)
    except MetaAlignerError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(os_error_line(exc))
    except KeyboardInterrupt:
        print("interrupted; re-run with --resume to continue", file=sys.stderr)
        return 130
    except Exception as exc:
        line = yaml_error_line(exc)
        if line is None:
            raise
        return _fail(line)
    return 0


COLUMN_FLAGS = {"query": "--query_column", "answer": "--answer_column", "goldens": "--goldens_column"}


def add_column_hint(exc, columns: dict[str, str]):
    """A missing-column ``DataError`` names the flag that maps a differently named column."""
    role = next((r for r, name in columns.items() if name == exc.column and r in COLUMN_FLAGS), None)
    if role is not None and exc.row is None:
        exc.args = (f"{exc}; if your file names it differently, pass {COLUMN_FLAGS[role]} NAME",)
    return exc
def _fail(message: str) -> int:
    from metaaligner.io import redact_text

    print(f"error: {redact_text(' '.join(message.split()))}", file=sys.stderr)
    return 2


class _RedactFilter(logging.Filter):
    """Scrub secrets (``metaaligner.io.redact_text``) from every log record, ours and libraries'."""

    def filter(self, record: logging.LogRecord) -> bool:
        from metaaligner.io import redact_text

        message = record.getMessage()
        clean = redact_text(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


# The HTTP client libraries (and their forks: httpx2/httpcore2 ship beside newer openai clients) log one
# INFO line per request; every stage keeps them at WARNING, here and nowhere else.
HTTP_CLIENT_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "urllib3", "requests", "h11", "h2",
                       "hpack", "aiohttp")
_HTTP_LOGGER = re.compile(r"(?:%s)\d*(?:\.|$)" % "|".join(HTTP_CLIENT_LOGGERS))


class _QuietHttpFilter(logging.Filter):
    """Drops INFO and DEBUG records of HTTP client loggers, also of a client version named like
    ``httpx3`` that no setLevel call names."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _HTTP_LOGGER.match(record.name)


def quiet_http_logs() -> None:
    """The one place that quiets HTTP client loggers (one INFO line per request otherwise): they stay
    at WARNING, and every root handler drops their INFO records and redacts secrets
    (``metaaligner.io.redact_text``) from whatever is logged."""
    for noisy in HTTP_CLIENT_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        for kind in (_QuietHttpFilter, _RedactFilter):
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())


_OS_FIXES = {
    errno.EACCES: "check its permissions or choose another output path",
    errno.EPERM: "check its permissions or choose another output path",
    errno.EROFS: "the file system is read-only; choose another output path",
    errno.EEXIST: "a file is in the way where a folder is needed; move it or choose another path",
    errno.ENOTDIR: "a file is in the way where a folder is needed; move it or choose another path",
    errno.EISDIR: "a folder is where a file goes; move it or choose another path",
    errno.ENOSPC: "the disk is full; free space or choose another output path",
    errno.EFBIG: "the file outgrew the file system's or the process's size limit (ulimit -f); raise the limit, "
                 "free space or choose another output path",
    errno.EDQUOT: "the disk quota is used up; free space or choose another output path",
    errno.ENOENT: "check the path",
}


def os_error_line(exc: OSError) -> str:
    """``<path>: <reason>; <fix>`` for an OS error (the path it names, else the bare reason)."""
    where = exc.filename if exc.filename is not None else None
    reason = exc.strerror or str(exc)
    fix = _OS_FIXES.get(exc.errno, "")
    head = f"{where}: {reason}" if where is not None else reason
    if exc.filename2 is not None:
        head += f" (and {exc.filename2})"
    return f"{head}; {fix}" if fix else head


def yaml_error_line(exc: BaseException) -> str | None:
    """``<file>: line L, column C: <problem>`` for a malformed YAML file, else None."""
    try:
        import yaml
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(exc, yaml.YAMLError):
        return None
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"malformed YAML: {problem}"
    name = mark.name if mark.name and not mark.name.startswith("<") else "YAML input"
    return f"{name}: line {mark.line + 1}, column {mark.column + 1}: malformed YAML ({problem}); fix the file"


def split_csv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [v.strip() for item in value for v in str(item).split(",") if v.strip()]
    return [v.strip() for v in value.split(",") if v.strip()]
