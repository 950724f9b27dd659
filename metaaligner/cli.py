"""Shared command-line plumbing: dataclass configs -> argparse (help from field metadata),
``--config_file x.yaml`` for defaults (CLI flags override it, unknown keys are rejected), and one-line
errors instead of tracebacks for user mistakes.

We build on transformers' ``HfArgumentParser`` (what TRL's ``TrlParser`` extends) but name the YAML
flag ``--config_file`` because ``--config`` already means the dataset config in our released flags.
"""
from __future__ import annotations

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
    """Call ``main``; print user-facing errors (``MetaAlignerError``) as one line and exit 2."""
    from metaaligner.errors import MetaAlignerError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main(*configs)
    except MetaAlignerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run with --resume to continue", file=sys.stderr)
        return 130
    return 0


def split_csv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [v.strip() for item in value for v in str(item).split(",") if v.strip()]
    return [v.strip() for v in value.split(",") if v.strip()]
