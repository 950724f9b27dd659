"""UltraFeedback from its raw ratings (dynamic_multi_objective_dataset/prepare_ultrafeedback.py).

A hand-written fixture in openbmb/UltraFeedback's schema: "N/A" ratings, a NaN response, equal
ratings, a one-completion instruction, an instruction without completions; every output row is
checked exactly."""
from __future__ import annotations

import json
import math

import pytest

from metaaligner.dataset import ultrafeedback as uf
from metaaligner.io import read_records

ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")


def completion(response, ratings, model="m"):
    annotations = {a: {"Rating": r, "Rationale": f"why {a}"} for a, r in zip(ASPECTS, ratings) if r is not None}
    return {"annotations": annotations, "critique": "c", "fine-grained_score": 1.0, "model": model,
            "overall_score": 1.0, "principle": "helpfulness", "response": response}


RECORDS = [
    {"source": "s", "instruction": "Name a primary colour.", "models": ["a"], "completions": [
        completion("Red.", ["5", "5", "5", "4"]),
        completion("Blue is one.", ["4", "5", "5", "4"]),
        completion(math.nan, ["3", "3", "3", "3"]),               # NaN response: skipped
        completion("Green?", ["2", "N/A", "3", "2"]),              # a non-digit rating: not used for training
        completion("  Yellow.\n", ["3", "4", "5", "3"]),           # kept verbatim, whitespace included
    ]},
    {"source": "s", "instruction": "Say hi.", "completions": [completion("Hi!", ["5", "5", "5", "5"])]},
    {"source": "s", "instruction": "What is 2+2?", "completions": [
        completion("4", ["5", "5", "5", "5"]), completion("Four.", ["5", "5", "5", "5"])]},   # equal ratings
    {"source": "s", "instruction": "Define entropy.", "completions": [       # test from here (test_size 3)
        completion("A measure of disorder.", ["4", "4", "4", "4"]),          # sum 16, first of the tie
        completion("Entropy is heat.", ["5", "5", "N/A", "5"]),              # sum 15 (N/A counts 0)
        completion(math.nan, ["5", "5", "5", "5"]),                          # NaN: skipped, even with sum 20
        completion("Tie one.", ["4", "4", "4", "4"])]},                      # sum 16, loses the tie
    {"source": "s", "instruction": "Nothing here?", "completions": []},
    {"source": "s", "instruction": "Tell a joke.", "completions": [
        completion("No.", ["N/A", "N/A", "N/A", "N/A"]), completion("Why did the chicken...", ["1", "1", "1", "N/A"])]},
]


def row(prompt, chosen, rejected, cs, rs):
    """A rewards.csv row as read back (strings); ``cs``/``rs`` spell the four scores, e.g. "5554"."""
    out = {"prompt": prompt, "chosen_response": chosen, "rejected_response": rejected}
    out.update({f"chosen_score{i}": c for i, c in enumerate(cs, start=1)})
    out.update({f"rejected_score{i}": r for i, r in enumerate(rs, start=1)})
    return out


EXPECTED_REWARDS = [
    row("Name a primary colour.", "Red.", "Blue is one.", "5554", "4554"),
    row("Name a primary colour.", "Red.", "  Yellow.\n", "5554", "3453"),
    row("Name a primary colour.", "Blue is one.", "  Yellow.\n", "4554", "3453"),
    row("What is 2+2?", "4", "Four.", "5555", "5555"),
]
# every used training completion once, with its record and position (the released SFT and aligner
# loops iterate over these): "Say hi." keeps its single completion, which rewards.csv cannot hold
EXPECTED_COMPLETIONS = [
    {"record": "1", "completion": "0", "prompt": "Name a primary colour.", "response": "Red.",
     "score1": "5", "score2": "5", "score3": "5", "score4": "4"},
    {"record": "1", "completion": "1", "prompt": "Name a primary colour.", "response": "Blue is one.",
     "score1": "4", "score2": "5", "score3": "5", "score4": "4"},
    {"record": "1", "completion": "4", "prompt": "Name a primary colour.", "response": "  Yellow.\n",
     "score1": "3", "score2": "4", "score3": "5", "score4": "3"},
    {"record": "2", "completion": "0", "prompt": "Say hi.", "response": "Hi!",
     "score1": "5", "score2": "5", "score3": "5", "score4": "5"},
    {"record": "3", "completion": "0", "prompt": "What is 2+2?", "response": "4",
     "score1": "5", "score2": "5", "score3": "5", "score4": "5"},
    {"record": "3", "completion": "1", "prompt": "What is 2+2?", "response": "Four.",
     "score1": "5", "score2": "5", "score3": "5", "score4": "5"},
]
EXPECTED_TEST = [{"query": "Define entropy.", "goldens": "A measure of disorder."},
                 {"query": "Tell a joke.", "goldens": "Why did the chicken..."}]
EXPECTED_STATS = {
    "test_size": 3,
    "objectives": list(ASPECTS),
    "records": {"total": 6, "train": 3, "test": 3},
    "train": {"completions": 8, "completions_used": 6,
              "dropped_completions": {"nan_response": 1, "non_digit_rating": 1},
              "records_without_pairs": 1, "pairs": 4},
    "completions": 6,
    "test": {"rows": 2, "dropped_completions": {"nan_response": 1}, "records_without_golden": 1},
}


def write_jsonl(path, records):
    # json.dumps writes float NaN as the bare NaN literal, as pandas' to_json of the hub data does
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _script():
    from dynamic_multi_objective_dataset import prepare_ultrafeedback

    return prepare_ultrafeedback


def run_script(argv, capsys):
    from metaaligner.cli import parse, run_main

    mod = _script()
    code = run_main(mod.main, *parse(mod.make_parser(), argv))
    out, err = capsys.readouterr()
    return code, out, err


def _check_outputs(out_dir):
    assert read_records(out_dir / "rewards.csv") == EXPECTED_REWARDS
    assert (out_dir / "rewards.csv").read_text().splitlines()[0] == (
        "prompt,chosen_response,rejected_response,chosen_score1,chosen_score2,chosen_score3,chosen_score4,"
        "rejected_score1,rejected_score2,rejected_score3,rejected_score4")
    assert read_records(out_dir / "test.csv") == EXPECTED_TEST
    assert read_records(out_dir / "completions.csv") == EXPECTED_COMPLETIONS
    stats = json.loads((out_dir / "stats.json").read_text())
    assert {k: v for k, v in stats.items() if k not in ("input", "seconds")} == EXPECTED_STATS


def test_jsonl_fixture_gives_exact_rows_tests_and_stats(tmp_path, capsys):
    src = write_jsonl(tmp_path / "uf.jsonl", RECORDS)
    code, out, err = run_script(["--input", str(src), "--output_dir", str(tmp_path / "out"), "--test_size", "3",
                                 "--progress", "false"], capsys)
    assert code == 0, err
    _check_outputs(tmp_path / "out")
    assert out.startswith("prepare_ultrafeedback: 6 records (3 train, 3 test); 4 pairs from 6 of 8 completions "
                          "(dropped: nan_response=1, non_digit_rating=1); 2 test rows; ")


def test_parquet_and_save_to_disk_inputs_give_the_same_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    # parquet/arrow hold a missing response as null (the NaN of a pandas export)
    records = json.loads(json.dumps(RECORDS).replace("NaN", "null"))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "uf.parquet")
    DatasetDict({"train": Dataset.from_list(records)}).save_to_disk(str(tmp_path / "disk"))
    for name in ("uf.parquet", "disk"):
        result = uf.prepare_ultrafeedback(str(tmp_path / name), test_size=3, progress=False)
        uf.write_prepared(result, tmp_path / f"out-{name}")
        _check_outputs(tmp_path / f"out-{name}")


def test_default_test_size_is_the_released_15000_and_zero_means_all_train(tmp_path):
    src = write_jsonl(tmp_path / "uf.jsonl", RECORDS)
    assert _script().PrepareUltraFeedbackConfig(input="x", output_dir="y").test_size == 15000
    everything = uf.prepare_ultrafeedback(str(src), test_size=15000, progress=False)
    assert everything.rewards == [] and [t["query"] for t in everything.test] == [
        "Name a primary colour.", "Say hi.", "What is 2+2?", "Define entropy.", "Tell a joke."]
    assert everything.test[0]["goldens"] == "Red."      # sum 19 beats 18, 16 and the NaN one
    train_only = uf.prepare_ultrafeedback(str(src), test_size=0, progress=False)
    assert train_only.test == [] and len(train_only.rewards) == 4 + 1   # + the two 4444 answers of "Define entropy."
    assert train_only.stats["train"]["dropped_completions"] == {"nan_response": 2, "non_digit_rating": 4}


def test_score_order_is_the_ultrafeedback_config_order():
    from metaaligner.registry.datasets import load_dataset_config

    assert list(uf.ASPECTS) == load_dataset_config("ultrafeedback").objectives


def test_rows_feed_build_aligner_dataset(tmp_path):
    from metaaligner.dataset.reformulation import pairs_from_rows

    src = write_jsonl(tmp_path / "uf.jsonl", RECORDS)
    uf.write_prepared(uf.prepare_ultrafeedback(str(src), test_size=3, progress=False), tmp_path)
    pairs, dropped = pairs_from_rows(read_records(tmp_path / "rewards.csv"), 4)
    assert [p.chosen_scores for p in pairs] == [(5, 5, 5, 4), (5, 5, 5, 4), (4, 5, 5, 4), (5, 5, 5, 5)]
    assert pairs[1].rejected == "  Yellow.\n" and not dropped


@pytest.mark.parametrize("records, message", [
    ([{"completions": []}], "row 1, column 'instruction': expected text, got NoneType"),
    ([RECORDS[1], {"instruction": "q", "completions": "none"}], "row 2, column 'completions': expected a list, got str"),
    ([{"instruction": "q", "completions": [{"response": 3, "annotations": {}}]}],
     "row 1, column 'completions[0].response': expected text, got int"),
])
def test_bad_records_are_one_line_errors_and_write_nothing(tmp_path, capsys, records, message):
    src = write_jsonl(tmp_path / "uf.jsonl", records)
    code, _, err = run_script(["--input", str(src), "--output_dir", str(tmp_path / "out"), "--progress", "false"],
                              capsys)
    assert (code, err) == (2, f"error: {src}: {message}\n")
    assert not (tmp_path / "out").exists()


def test_missing_file_and_unreachable_hub_are_one_line_errors(tmp_path, capsys, monkeypatch):
    code, _, err = run_script(["--input", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2 and err.startswith(f"error: {tmp_path / 'nope.jsonl'}: file not found")
    assert uf.is_hub_name("openbmb/UltraFeedback") and not uf.is_hub_name("data/uf.jsonl")
    assert not uf.is_hub_name("data/uf.csv") and not uf.is_hub_name("/abs/openbmb/UltraFeedback")

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    import datasets
    monkeypatch.setattr(datasets, "load_dataset", offline)
    code, _, err = run_script(["--input", "openbmb/UltraFeedback", "--output_dir", str(tmp_path / "o")], capsys)
    assert (code, err.splitlines()[0]) == (2, ("error: openbmb/UltraFeedback: cannot load from the hub "
                                               "(ConnectionError: offline); give a local JSONL / parquet / "
                                               "save_to_disk copy with --input"))
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_paper_config_prepares_ultrafeedback_instead_of_a_hand_made_csv(capsys):
    from metaaligner.cli import parse, run_main
    from scripts import run_paper

    argv = ["--config", "configs/paper/ultrafeedback.yaml", "--variant", "7B", "--dry_run"]
    code = run_main(run_paper.main, *parse(run_paper.make_parser(), argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines()]
    head = next(i for i, line in enumerate(lines) if line.startswith("[1/"))
    assert "] prepare_ultrafeedback (" in lines[head]
    assert lines[head + 2].endswith("dynamic_multi_objective_dataset/prepare_ultrafeedback.py --input "
                                    "openbmb/UltraFeedback --output_dir data/ultrafeedback --test_size 15000")
    build = next(line for line in lines if "build_aligner_dataset.py" in line)
    assert "--input data/ultrafeedback/rewards.csv --dataset ultrafeedback " in build


def test_a_failed_write_leaves_the_old_output_folder_whole(tmp_path, monkeypatch):
    """The three files come from one run: a failure while writing keeps the old folder as it was."""
    import metaaligner.io as mio

    src = tmp_path / "uf.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "out"
    uf.write_prepared(uf.prepare_ultrafeedback(str(src), test_size=1, progress=False), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mio, "write_json", failing)
    with pytest.raises(OSError):
        uf.write_prepared(uf.prepare_ultrafeedback(str(src), test_size=2, progress=False), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []
