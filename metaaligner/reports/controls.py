"""The judge's controls under every table: where the judge run wrote ``<policy>.controls.json``
beside the verdicts, how often each control answer ('.', a refusal, the first half, the answer twice)
beat the original answer on the same rows, and "judge unusable for this table" when '.' won on more
than half of them; rows the judge left out because it was trained on their query are counted."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from metaaligner.errors import DataError
from metaaligner.judge.controls import LABELS as CONTROL_LABELS, unusable_note
from metaaligner.reports.common import (
    DASH,
)


def load_controls(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The ``<policy>.controls.json`` files the judge wrote under the folders in ``paths``."""
    import json

    found = []
    for path in paths:
        path = Path(path)
        for file in sorted(path.rglob("*.controls.json")) if path.is_dir() else []:
            try:
                info = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DataError(file, f"not a controls file ({exc})") from None
            found.append(info)
    return found


def controls_for(rows: list[dict[str, Any]], controls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The control entries of the table's rows: same dataset, policy, mode and judge configuration,
    objectives the table shows; one per (policy, objective, control) when several folders hold them."""
    shown = {(r.get("dataset"), r.get("policy"), r.get("mode", "pairwise"), str(r.get("judge_config") or ""),
              r.get("objective")) for r in rows}
    out: dict[tuple, dict[str, Any]] = {}
    for info in controls:
        for entry in info.get("controls", []):
            key = (info.get("dataset"), info.get("policy"), info.get("mode"), str(info.get("judge_config") or ""),
                   entry.get("objective"))
            if key in shown:
                out.setdefault(key + (entry.get("control"),), {**entry, "policy": info.get("policy")})
    return list(out.values())


def excluded_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Rows left out per policy because the judge was trained on their query, from the summary file
    beside each verdict file (``excluded_training_prompts``)."""
    import json

    out: dict[str, int] = {}
    for file in dict.fromkeys(r["_file"] for r in rows if r.get("_file")):
        summary = Path(file).with_name(Path(file).name[: -len(".csv")] + ".summary.json")
        try:
            info = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        count = int(info.get("excluded_training_prompts") or 0) if isinstance(info, dict) else 0
        policy = str(info.get("policy", ""))
        out[policy] = max(out.get(policy, 0), count)
    return {k: v for k, v in out.items() if v}


def controls_caption(entries: list[dict[str, Any]], excluded: dict[str, int]) -> str:
    """The caption's sentences on the judge: unusable ('.' preferred on most rows), rows left out."""
    parts = []
    dot = [e for e in entries if e["control"] == "dot"]
    note = unusable_note(sum(e["wins"] for e in dot), sum(e["n"] for e in dot))
    if note:
        objectives = len({(e["policy"], e["objective"]) for e in dot})
        over = f" (judged rows summed over {objectives} policy-objective cells)" if objectives > 1 else ""
        parts.append(note[0].upper() + note[1:] + over + ".")
    if excluded:
        each = ", ".join(f"{p} {n}" for p, n in excluded.items())
        parts.append(f"{sum(excluded.values())} row(s) left out because the judge was trained on their query "
                     f"({each}).")
    return " ".join(parts)


def controls_markdown(entries: list[dict[str, Any]]) -> str:
    """The control rows under a table: per policy and objective, how often each control answer beat
    the original answer (wins/rows)."""
    if not entries:
        return ""
    names = list(dict.fromkeys(e["control"] for e in entries))
    index = {(e["policy"], e["objective"], e["control"]): e for e in entries}
    lines = ["Controls: the same judge on the same rows, each control answer against the original answer "
             "(wins/rows; a judge that prefers '.' on more than half of the rows is unusable).", "",
             "| Policy | Objective | " + " | ".join(CONTROL_LABELS.get(n, n) for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for policy, objective, name in dict.fromkeys((e["policy"], e["objective"], e["objective_name"])
                                                 for e in entries):
        cells = [index.get((policy, objective, n)) for n in names]
        lines.append(f"| {policy} | {name} | " + " | ".join(
            DASH if c is None else f"{c['wins']}/{c['n']}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def with_controls(text: str, rows: list[dict[str, Any]], controls: list[dict[str, Any]]) -> str:
    """A report's Markdown with the judge's caption sentences appended to its caption (the last line)
    and the control rows under it."""
    entries = controls_for(rows, controls)
    extra = controls_caption(entries, excluded_counts(rows))
    if extra:
        text = text.rstrip("\n") + " " + extra + "\n"
    block = controls_markdown(entries)
    return text + ("\n" + block if block else "")


def latex_with_controls(text: str, rows: list[dict[str, Any]], controls: list[dict[str, Any]]) -> str:
    """The LaTeX table's caption comment (its first line) with the judge's caption sentences."""
    extra = controls_caption(controls_for(rows, controls), excluded_counts(rows))
    if not extra:
        return text
    first, _, rest = text.partition("\n")
    return f"{first}; {extra}\n{rest}"
