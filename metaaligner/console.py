r"""The ``metaaligner`` command (also ``python -m metaaligner``). Subcommands:

    metaaligner serve --port 8080 --policy_base_url http://127.0.0.1:8000/v1
        an OpenAI-compatible aligning proxy in front of any model (docs/serving.md)

``metaaligner serve --help`` lists every flag. The stage scripts (inference/, training/, ...) stay
where they are.
"""
from __future__ import annotations

import sys

SUBCOMMANDS = {"serve": "metaaligner.serve.cli"}


def main(argv: list[str] | None = None) -> int:
    import importlib

    from metaaligner.cli import closest

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}{closest(name, SUBCOMMANDS)}; choose one of "
              f"{', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    return importlib.import_module(SUBCOMMANDS[name]).run(rest)


if __name__ == "__main__":
    raise SystemExit(main())
