"""Shared command-line plumbing: dataclass configs -> argparse (help from field metadata),
``--config_file x.yaml`` for defaults (CLI flags override it, unknown keys are rejected), and one-line
errors instead of tracebacks for user mistakes.

We build on transformers' ``HfArgumentParser`` (what TRL's ``TrlParser`` extends) but name the YAML
flag ``--config_file`` because ``--config`` already means the dataset config in our released flags.
"""
from __future__ import annotations

import errno
import logging
import sys
from typing import Any, Callable

YAML_FLAG = "--config_file"


def make_parser(*dataclass_types, description: str | None = None):
    from transformers import HfArgumentParser
    import argparse

    parser = HfArgumentParser(dataclass_types, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(YAML_FLAG, default=None, metavar="FILE.yaml",
                        help="YAML file of flag defaults; flags given on the command line override it")
    # argparse %-formats help strings: a literal "95%" in a field's help made --help crash.
    for action in parser._actions:
        if action.help and "%" in action.help and "%(" not in action.help and "%%" not in action.help:
            action.help = action.help.replace("%", "%%")
    return parser


def parse(parser, argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse into the parser's dataclasses, applying ``--config_file`` defaults first."""
    import yaml

    args = list(sys.argv[1:] if argv is None else argv)
    if YAML_FLAG in args:
        i = args.index(YAML_FLAG)
        if i + 1 >= len(args):
            parser.error(f"{YAML_FLAG} needs a file")
        path = args[i + 1]
        del args[i:i + 2]
        try:
            with open(path, encoding="utf-8") as fh:
                values = yaml.safe_load(fh) or {}
        except OSError as exc:
            parser.error(f"{path}: {exc.strerror}")
        except yaml.YAMLError as exc:
            parser.error(yaml_error_line(exc) or f"{path}: malformed YAML")
        if not isinstance(values, dict):
            parser.error(f"{path}: expected a YAML mapping of flag -> value")
        dests = {a.dest: a for a in parser._actions}
        unknown = sorted(set(values) - set(dests))
        if unknown:
            parser.error(f"{path}: unknown keys {unknown}")
        for key, value in values.items():
            dests[key].default = value
            dests[key].required = False
    outputs = parser.parse_args_into_dataclasses(args=args)
    # The --config_file action belongs to no dataclass: HfArgumentParser returns it as a trailing
    # Namespace, which would be passed to main() as an extra argument.
    import argparse

    if outputs and isinstance(outputs[-1], argparse.Namespace) and set(vars(outputs[-1])) <= {"config_file"}:
        outputs = outputs[:-1]
    return tuple(outputs)


def run_main(main: Callable[..., Any], *configs) -> int:
    """Call ``main``; print user-facing errors (``MetaAlignerError``, OS errors, malformed YAML) as
    one line ``error: ...`` (URL credentials redacted) and exit 2."""
    from metaaligner.errors import MetaAlignerError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_http_logs()
    try:
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


def _fail(message: str) -> int:
    from metaaligner.io import redact_text

    print(f"error: {redact_text(' '.join(message.split()))}", file=sys.stderr)
    return 2


class _RedactFilter(logging.Filter):
    """Scrub URL credentials from every log record (ours and libraries')."""

    def filter(self, record: logging.LogRecord) -> bool:
        from metaaligner.io import redact_text

        if record.args or "://" in str(record.msg):
            record.msg, record.args = redact_text(record.getMessage()), None
        return True


def quiet_http_logs() -> None:
    """The HTTP clients log one INFO line per request with its URL: keep them at WARNING, and
    redact URLs in whatever is logged."""
    for noisy in ("httpx", "httpcore", "openai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactFilter) for f in handler.filters):
            handler.addFilter(_RedactFilter())


_OS_FIXES = {
    errno.EACCES: "check its permissions or choose another output path",
    errno.EPERM: "check its permissions or choose another output path",
    errno.EROFS: "the file system is read-only; choose another output path",
    errno.EEXIST: "a file is in the way where a folder is needed; move it or choose another path",
    errno.ENOTDIR: "a file is in the way where a folder is needed; move it or choose another path",
    errno.EISDIR: "a folder is where a file goes; move it or choose another path",
    errno.ENOSPC: "the disk is full; free space or choose another output path",
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
