"""The built-in aligner's safety net and its evaluation measures (no model is loaded)."""
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
from metaaligner.training.demo import text_measures, win_rate

LOOP = "I'm not a medical professional. I'm not a doctor. I'm not a doctor. I'm not a doctor. I'm not a doctor."
TRIMMED = "I'm not a medical professional. I'm not a doctor."  # LOOP after the guard


class Scripted:
    """A backend that returns fixed outputs in order."""

    def __init__(self, outputs):
        self.outputs = list(outputs)

    def generate(self, prompts, params, progress=False):
        out, self.outputs = self.outputs[: len(prompts)], self.outputs[len(prompts):]
        return out


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


def test_text_measures_hand_computed():
    m = text_measures(["one two three four", "a b", "x"], ["one two three four", "", LOOP])
    assert m["rows"] == 3 and m["loop_rate"] == pytest.approx(1 / 3) and m["empty_rate"] == pytest.approx(1 / 3)
    assert m["copy_rate"] == pytest.approx(1 / 3)
    assert m["length_ratio"] == pytest.approx((1 + 0 + 21) / 3)  # words out / words in; LOOP has 5 + 4 * 4 words
    assert m["similarity"] < 1 / 3 + 0.01


def test_win_rate_counts_same_text_as_tie():
    out = win_rate([2.0, 0.0, 5.0, 1.0], [1.0, 1.0, 1.0, 1.0], ["x", "y", "same", "z"], ["a", "b", "same ", "c"])
    assert (out["wins"], out["ties"], out["losses"]) == (1, 2, 1)
    assert out["rate"] == pytest.approx(0.5) and out["n"] == 4


def test_eval_script_writes_json_and_table(tiny_llama_dir, tmp_path, repo_root):
    import json
    import shutil

    import torch

    from metaaligner.judge.probe import ProbeJudge
    from training.eval_demo_aligner import EvalDemoConfig, main

    model = tmp_path / "aligner"
    shutil.copytree(tiny_llama_dir, model)
    (model / "metaaligner.json").write_text(json.dumps({"template": "hh-rlhf", "objectives": ["harmlessness"]}))
    from metaaligner.io import read_records, write_csv, write_jsonl

    records = read_records(repo_root / "samples/hh-rlhf-harmless-base/harmless-base-test.jsonl.gz")[:12]
    pairs = str(tmp_path / "pairs.jsonl")
    write_jsonl(pairs, records)
    policy = tmp_path / "policy.csv"
    write_csv(policy, [{"query": "\n\nHuman: hi?\n\nAssistant:", "generated_text": f"Hello number {i}."} for i in range(3)],
              ["query", "generated_text"])
    info = {"model": str(tiny_llama_dir), "layer": 1, "max_tokens": 64, "max_response_tokens": 32,
            "input": pairs, "heldout": {"pairs": 6, "agreement": 0.6, "ci95": [0.55, 0.65]},
            "heldout_rows": [0, 1, 2, 3, 4, 5]}
    ProbeJudge(torch.ones(16), torch.ones(16), info).save(tmp_path / "judge")
    out = main(EvalDemoConfig(output_dir=str(tmp_path / "eval"), aligner_path=str(model), base_model=str(model),
                              judge_dir=str(tmp_path / "judge"), pairs_file=pairs, policy_file=str(policy),
                              n_pair_rows=3, n_policy_rows=2, max_query_tokens=400, max_answer_tokens=200,
                              max_new_tokens=6, batch_size=8, compare_aligner=str(model),
                              compare_label="previous (†)", compare_note="(†) the same folder, for the test."))
    hb = out["by_source"]["harmless-base"]
    assert hb["copy (answer unchanged)"]["vs_unaligned"]["ties"] == 3  # a copy always ties
    assert hb["copy (answer unchanged)"]["vs_unaligned"]["rate"] == 0.5
    assert out["by_source"]["Claude-3"]["aligner, guard on"]["rows"] == 2
    assert "human-chosen response (reference)" in hb and "human-chosen response (reference)" not in out["by_source"]["Claude-3"]
    table = (tmp_path / "eval" / "eval.md").read_text()
    assert table.startswith("_judge: offline probe") and "| copy (answer unchanged) | 50.0% (" in table
    assert "| previous (†), guard on | " in table and table.endswith("\n\n(†) the same folder, for the test.\n")
    assert hb["previous (†), guard off"] == hb["aligner, guard off"] and out["compare_note"].startswith("(†)")
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["by_source"] == out["by_source"]
