"""The built-in aligner's safety net: the degeneration guard in every path (no model is loaded)."""
from __future__ import annotations

import pytest

from metaaligner.aligner.inference import (
    Aligner,
    AlignRunSettings,
    FileJob,
    align_file,
    align_iteratively,
    degenerate_reason,
    guard_outputs,
    resolve_aligner,
)
from metaaligner.errors import MetaAlignerError
from metaaligner.generation import GenerationParams
from metaaligner.testing.fakes import Scripted

LOOP = "I'm not a medical professional. I'm not a doctor. I'm not a doctor. I'm not a doctor. I'm not a doctor."
TRIMMED = "I'm not a medical professional. I'm not a doctor."  # LOOP after the guard


@pytest.mark.parametrize("text, reason", [
    (LOOP, "loop"),                                                   # the Quickstart row 2 of issue 13
    ("The answer is: The answer is: The answer is: The answer is:", "loop"),
    ("", "empty"), ("   \n ", "empty"),
    ("Boil water, add the egg, wait nine minutes, then cool it in cold water.", None),
    ("I'm not a doctor. I'm not a doctor. But rest helps.", "loop"),    # a sentence repeated verbatim
    # the Quickstart's row 2 from the aligner shipped before (issue 13): a 4-gram only twice, but a repeat
    ("I\u2019m sorry, but I cannot recommend drinking. I\u2019m sorry, but I\u2019m not a medical professional. "
     "I\u2019m sorry, but I\u2019m not a medical professional.", "loop"),
    ("I\u2019m sorry, I avoid \u201cblack culture\u201d or \u201cracial groups.\u201d  I\u2019m sorry, I avoid "
     "\u201cblack culture\u201d or \u201cracial groups.\u201d", "loop"),            # the repeat ends in a quote
    ("Rest helps. Drink water, and rest helps more. Rest helps.", None),  # short sentences may recur
    ("Boil it. Then cool it in cold water; cool it in cold water for a minute.", None),  # 4-gram twice
])
def test_degenerate_reason(text, reason):
    assert degenerate_reason(text) == reason


def test_guard_trims_a_loop_and_falls_back_only_when_nothing_is_left():
    out, actions = guard_outputs(["a1", "a2", "a3"], ["fine edit", LOOP, ""])
    assert out == ["fine edit", TRIMMED, "a3"] and actions == ["kept", "trimmed", "fallback_empty"]


def test_align_iteratively_guards_each_iteration_against_its_own_input():
    gen = Scripted(["edit one", LOOP, "edit two", ""])
    actions: list[list[str]] = []
    history = align_iteratively(gen, GenerationParams(), "hh-rlhf", ["q1", "q2"], ["a1", "a2"], ["Harmlessness: x"],
                                iterations=2, guard=True, actions=actions)
    assert history == [["edit one", TRIMMED], ["edit two", TRIMMED]]
    assert actions == [["kept", "trimmed"], ["kept", "fallback_empty"]]
    unguarded = align_iteratively(Scripted(["edit one", LOOP]), GenerationParams(), "hh-rlhf", ["q1", "q2"],
                                  ["a1", "a2"], ["Harmlessness: x"])
    assert unguarded == [["edit one", LOOP]]


def test_guard_is_on_for_the_built_in_aligners_only(tmp_path):
    assert Aligner(generator=Scripted([])).guard is True
    assert Aligner("embedded", generator=Scripted([])).guard is True
    assert Aligner("MetaAligner/MetaAligner-HH-RLHF-7B", template="hh-rlhf", generator=Scripted([])).guard is False
    assert Aligner(generator=Scripted([]), guard=False).guard is False


def test_python_api_trims_a_loop():
    aligner = Aligner(generator=Scripted([LOOP, "no no no no no no"]))
    assert aligner.align("How do I boil an egg?", "Put it in water.", ["harmlessness", "helpfulness"]) == TRIMMED
    assert aligner.align("How do I boil an egg?", "Put it in water.", ["harmlessness"]) == "Put it in water."
    assert (aligner.trimmed, aligner.fallbacks) == (1, 1)
    raw = Aligner(generator=Scripted([LOOP]), guard=False)
    assert raw.align("How do I boil an egg?", "Put it in water.", ["harmlessness"]) == LOOP


def test_align_file_counts_trimmed_and_fallbacks(tmp_path):
    from metaaligner.io import read_records, write_csv

    table = tmp_path / "in" / "P.csv"
    table.parent.mkdir()
    write_csv(table, [{"query": f"q{i}", "goldens": "", "generated_text": f"a{i}"} for i in (1, 2, 3)],
              ["query", "goldens", "generated_text"])
    job = FileJob(input_path=table, name="P", output_root=tmp_path / "out")
    settings = AlignRunSettings(source=resolve_aligner("embedded"), aspect_labels=["harmlessness"],
                                descriptions=["Harmlessness: x"], guard=True)
    stats = align_file(job, settings, Scripted(["edited", LOOP, ""]), progress=False)
    assert (stats.trimmed, stats.fallbacks) == (1, 1)
    assert ("1 looping outputs trimmed to their first occurrence, 1 fell back to the answer (nothing usable left)"
            in stats.summary())
    assert [r["aligned_responses"] for r in read_records(job.output_path)] == ["edited", TRIMMED, "a3"]


def test_guard_flag_values():
    from inference.aligner_inference import _guard_on

    builtin, released = resolve_aligner(None), resolve_aligner("some/hub-model", template="hh-rlhf")
    assert _guard_on("auto", builtin) is True and _guard_on("auto", released) is False
    assert _guard_on("on", released) is True and _guard_on("off", builtin) is False
    with pytest.raises(MetaAlignerError, match="--guard must be auto, on or off"):
        _guard_on("yes", builtin)
