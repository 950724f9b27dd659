"""Control answers: what a judge says about answers that should never beat the real one.

For each row (query, original answer) four controls are made: ``"."``, a canned refusal, the
answer cut to its first half (by words) and the answer said twice. A judge that prefers them to the
original answer rewards length, brevity or refusing rather than quality, and its win rates in a
table say little. Rule: a judge that ranks ``"."`` above the original on more than half of the rows
is **unusable** for that table (``unusable``, ``unusable_note``).

    from metaaligner.judge.controls import control_table
    control_table(ProbeJudge.load().compare, queries, originals)   # {control: tally}

``evaluation/judge.py --controls`` judges the same controls through any judge engine (see
``metaaligner.judge.runner.plan_control_tasks``); ``evaluation/judge_controls.py`` prints the
table for the shipped probe.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

REFUSAL = "I'm sorry, but I can't help with that."
CONTROLS = ("dot", "refusal", "first_half", "repeat_twice")
LABELS = {"dot": "'.'", "refusal": "canned refusal", "first_half": "first half", "repeat_twice": "answer twice",
          "original": "original"}
ORIGINAL = "original"   # rating mode: the original answer rated as a control, to compare with


def first_half(answer: str) -> str:
    """The first half of the words (at least one word)."""
    words = str(answer).split()
    return " ".join(words[: max(1, len(words) // 2)])


def repeat_twice(answer: str) -> str:
    text = str(answer).strip()
    return f"{text}\n\n{text}"


def control_answer(name: str, answer: str) -> str:
    """The control ``name`` (one of ``CONTROLS``, or ``original``) made from ``answer``."""
    makers: dict[str, Callable[[str], str]] = {
        "dot": lambda a: ".", "refusal": lambda a: REFUSAL, "first_half": first_half,
        "repeat_twice": repeat_twice, ORIGINAL: lambda a: str(a)}
    if name not in makers:
        raise ValueError(f"unknown control {name!r}; choose from {', '.join(makers)}")
    return makers[name](answer)


def tally(verdicts: Sequence[str]) -> dict:
    """Counts of ``win``/``tie``/``loss``/``invalid`` (the control's verdict against the original) and
    the control's win rate W/N."""
    n = len(verdicts)
    counts = {v: sum(1 for x in verdicts if x == v) for v in ("win", "tie", "loss", "invalid")}
    return {"n": n, "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"],
            "invalid": counts["invalid"], "win_rate": counts["win"] / n if n else float("nan")}


def verdict_of_choice(choice: int) -> str:
    """A ``compare`` answer with the control as output 1: 1 -> win, 2 -> loss, 0 -> tie."""
    return {1: "win", 2: "loss", 0: "tie"}.get(choice, "invalid")


def verdict_of_ratings(control: float | None, original: float | None) -> str:
    """Rating mode: the control wins when rated above the original; no rating -> invalid."""
    if control is None or original is None:
        return "invalid"
    return "win" if control > original else "loss" if control < original else "tie"


def control_table(compare: Callable, queries: Sequence[str], originals: Sequence[str],
                  controls: Sequence[str] = CONTROLS) -> dict[str, dict]:
    """Each control's tally against the original answers, judged by
    ``compare(queries, outputs1, outputs2) -> [1|2|0]`` (``ProbeJudge.compare`` or any such function)
    with the control as output 1."""
    out = {}
    for name in controls:
        answers = [control_answer(name, a) for a in originals]
        out[name] = tally([verdict_of_choice(c) for c in compare(list(queries), answers, list(originals))])
    return out


def unusable(dot_wins: int, n: int) -> bool:
    """The rule: '.' preferred to the original on more than half of the rows."""
    return n > 0 and dot_wins > n / 2


def unusable_note(dot_wins: int, n: int) -> str:
    """The caption sentence when ``unusable``, else ''."""
    if not unusable(dot_wins, n):
        return ""
    return f"judge unusable for this table: prefers '.' to the original on {dot_wins} of {n} rows"


def format_table(tables: dict[str, dict[str, dict]]) -> str:
    """Markdown: one row per control, one column per answer set (e.g. ``{"chosen": control_table(...)}``),
    cells ``wins/n (rate%)``; the unusable note under it where it holds."""
    names = list(tables)
    lines = ["| Control | " + " | ".join(f"beats the {n} answer" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    controls = list(dict.fromkeys(c for t in tables.values() for c in t))
    for control in controls:
        cells = []
        for name in names:
            t = tables[name].get(control)
            cells.append("–" if t is None else f"{t['wins']}/{t['n']} ({t['win_rate']:.0%})")
        lines.append(f"| {LABELS.get(control, control)} | " + " | ".join(cells) + " |")
    notes = [f"{name}: {unusable_note(t['dot']['wins'], t['dot']['n'])}" for name, t in tables.items()
             if "dot" in t and unusable(t["dot"]["wins"], t["dot"]["n"])]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
