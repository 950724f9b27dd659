"""The degeneration guard (issue 30): a loop is trimmed to its first occurrence; the input answer
comes back only when nothing usable is left (no model is loaded)."""
from __future__ import annotations

import pytest

from metaaligner.aligner.inference import (
    GUARD_ACTIONS,
    AlignStats,
    align_iteratively,
    degenerate_reason,
    guard_output,
    guard_outputs,
)
from metaaligner.generation import GenerationParams
from metaaligner.testing.fakes import Scripted

HARMFUL = "Sure, his home address is 12 Elm Street and his phone is 555-0134."
REFUSAL = "I'm sorry, but I can't help with that."


@pytest.mark.parametrize("output, expected", [
    # real 135M demo aligner outputs
    ("I'm sorry, but I don't know how to help you. I'm sorry, I don't know how to help you.",
     "I'm sorry, but I don't know how to help you."),
    ("I'm not a medical professional. I'm not a doctor. I'm not a doctor. I'm not a doctor. I'm not a doctor.",
     "I'm not a medical professional. I'm not a doctor."),
    ("I\u2019m sorry, I avoid \u201cblack culture\u201d or \u201cracial groups.\u201d  I\u2019m sorry, I avoid "
     "\u201cblack culture\u201d or \u201cracial groups.\u201d",
     "I\u2019m sorry, I avoid \u201cblack culture\u201d or \u201cracial groups.\u201d"),   # keeps its closing quote
    # a lone repeat is dropped and what follows it kept
    ("I'm not a doctor. I'm not a doctor. But rest helps.", "I'm not a doctor. But rest helps."),
    # a cycle goes from where it starts, short sentences in it included
    ("Yes. I can help you with that. Yes. I can help you with that. Yes.", "Yes. I can help you with that."),
    # a loop cut by the token budget: the unfinished tail goes with it
    ("Eggs are easy to cook well. Put the egg in water. Eggs are easy to cook well. I'm sorr",
     "Eggs are easy to cook well. Put the egg in water."),
    # a later sentence contained in an earlier one says nothing new (difflib ratio only 0.6 here)
    ("I can't help with that request, but you could call a doctor today. Rest well. I can't help with that request.",
     "I can't help with that request, but you could call a doctor today. Rest well."),
    # word n-gram loops without sentence ends keep their first turn
    ("you can try to you can try to you can try to you can try to", "you can try to"),
    ("The answer is: The answer is: The answer is: The answer is:", "The answer is:"),
    ("First, boil the water, then boil the water, then boil the water, then boil", "First, boil the water, then"),
])
def test_a_loop_is_trimmed_to_its_first_occurrence(output, expected):
    text, action = guard_output("the input answer", output)
    assert (text, action) == (expected, "trimmed")
    assert degenerate_reason(text) is None


def test_a_near_repeat_is_trimmed_where_the_old_guard_kept_it():
    # not verbatim and no word 4-gram 3 times: the old guard (degenerate_reason) let it through whole
    output = "I'm sorry, but I don't know how to help you. I'm sorry, I don't know how to help you."
    assert degenerate_reason(output) is None
    assert guard_output("an answer", output)[0] == "I'm sorry, but I don't know how to help you."


def test_a_looping_refusal_of_a_harmful_answer_stays_a_refusal():
    output = f"{REFUSAL} {REFUSAL} {REFUSAL}"
    text, action = guard_output(HARMFUL, output)
    assert (text, action) == (REFUSAL, "trimmed") and HARMFUL not in text


@pytest.mark.parametrize("output, action", [
    ("", "fallback_empty"), ("  \n ", "fallback_empty"),
    ("no no no no no no no no", "fallback_unusable"),          # trimmed to "no": under 3 words
    ("Sure. the the the the the the the", "fallback_unusable"),  # trimmed to "Sure. the"
])
def test_fall_back_to_the_answer_only_when_nothing_usable_is_left(output, action):
    assert guard_output("Put it in water.", output) == ("Put it in water.", action)


@pytest.mark.parametrize("output", [
    "Boil water, add the egg, wait nine minutes, then cool it in cold water.",
    "Rest helps. Drink water, and rest helps more. Rest helps.",      # short sentences may recur
    "Boil it. Then cool it in cold water; cool it in cold water for a minute.",  # a 4-gram only twice
    "I'm not a doctor. I'm not a doctor, but rest and water help.",    # the later sentence adds something
    "No.",                                                             # short but clean
    "  Fine, with spaces around.\n",
])
def test_a_clean_output_is_kept_byte_identical(output):
    text, action = guard_output("the answer", output)
    assert action == "kept" and text is output


def test_guard_outputs_returns_texts_and_actions():
    texts, actions = guard_outputs(["a1", "a2", "a3", "a4"],
                                   ["A fine edit of it.", f"{REFUSAL} {REFUSAL}", "", "no no no no no no"])
    assert texts == ["A fine edit of it.", REFUSAL, "a3", "a4"]
    assert actions == ["kept", "trimmed", "fallback_empty", "fallback_unusable"]
    assert set(actions) == set(GUARD_ACTIONS)


def test_align_iteratively_records_each_iterations_actions():
    gen = Scripted(["A fine edit.", f"{REFUSAL} {REFUSAL} {REFUSAL}", "", "no no no no no no"])
    actions: list[list[str]] = []
    history = align_iteratively(gen, GenerationParams(), "hh-rlhf", ["q1", "q2"], ["a1", HARMFUL],
                                ["Harmlessness: x"], iterations=2, guard=True, actions=actions)
    # iteration 2 falls back to iteration 1's output, not to the original answer
    assert history == [["A fine edit.", REFUSAL], ["A fine edit.", REFUSAL]]
    assert actions == [["kept", "trimmed"], ["fallback_empty", "fallback_unusable"]]


def test_align_stats_summary_counts_trimmed_and_fallbacks_apart():
    line = AlignStats(name="P", rows_in=4, aligned=4, trimmed=3, fallbacks=1, output="out.csv").summary()
    assert ("3 looping outputs trimmed to their first occurrence, 1 fell back to the answer (nothing usable left), "
            in line)
    quiet = AlignStats(name="P", rows_in=4, aligned=4, output="out.csv").summary()
    assert "trimmed" not in quiet and "fell back" not in quiet


def test_what_the_guard_returns_never_loops_by_degenerate_reasons_measure():
    import random

    vocab = ["I'm", "I\u2019m", "sorry,", "but", "can't", "Can't", "help", "with", "that.", "Yes.", "no", "the",
             "water", "egg.", "\u201cquote.\u201d", "-", "...", "!", "doctor?", "you"]
    rng = random.Random(0)
    for _ in range(500):
        base = [rng.choice(vocab) for _ in range(rng.randint(1, 12))]
        words = (base * 10)[:rng.randint(0, 60)] if rng.random() < 0.5 else rng.choices(vocab, k=rng.randint(0, 60))
        text, action = guard_output("ANSWER", " ".join(words))
        assert action in GUARD_ACTIONS
        assert action.startswith("fallback") or degenerate_reason(text) is None, words
