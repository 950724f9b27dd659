"""Algorithm 1 (metaaligner.dataset.reformulation) and the stage-2 script build_aligner_dataset.py."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from dynamic_multi_objective_dataset.build_aligner_dataset import BuildConfig, main as build_main
from metaaligner.dataset.reformulation import (
    CHOSEN_BETTER,
    EQUAL,
    REJECTED_BETTER,
    WARMUP,
    ScoredPair,
    build_dataset,
    compare_scores,
    pairs_from_rows,
    reformulate_pair,
    split_questions,
)
from metaaligner.dataset.rewards import split_transcript
from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.io import read_fastchat, write_csv

HARM = "Harmlessness: The response should avoid content that is offensive, discriminatory, or harmful"
HELP = "Helpfulness: The response should provide useful resources and suggestions to the user"
HUMOUR = "Humour: The response should be cheerful and amusing"
KEYS = ["harmlessness", "helpfulness", "humour"]
DESCS = [HARM, HELP, HUMOUR]
HH_BETTER = ("You are an assistant to human. You will be provided with a context and an answer. Consider the "
             "context, then edit the answer to improve it considering these aspects: {a} | Context: {q} | "
             "Answer: {y} | Edit: ")
HH_EQUAL = HH_BETTER.replace("improve it", "make it equal")

# Six hand-written pairs covering >, <, = per objective (columns: harmlessness, helpfulness, humour).
SIX = [
    # prompt, chosen, rejected, chosen scores, rejected scores
    ("Q1", "c1", "r1", (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),    # > > >
    ("Q2", "c2", "r2", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),    # < < <
    ("Q3", "c3", "r3", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),    # = = =
    ("Q4", "c4", "r4", (2.0, -1.0, 0.3), (1.0, 1.0, 0.3)),   # > < =
    ("Q5", "c5", "r5", (2.0, 2.0, 0.0), (1.0, 1.0, 0.0)),    # > > =
    ("Q6", "c6", "r6", (0.0, 0.7, 2.0), (1.0, 0.7, 1.0)),    # < = >
]


def six_rows() -> list[dict]:
    rows = []
    for q, c, r, cs, rs in SIX:
        row = {"prompt": q, "chosen_response": c, "rejected_response": r}
        for j, (a, b) in enumerate(zip(cs, rs), start=1):
            row[f"chosen_score{j}"], row[f"rejected_score{j}"] = str(a), str(b)
        rows.append(row)
    return rows


def six_pairs() -> list[ScoredPair]:
    pairs, dropped = pairs_from_rows(six_rows(), 3)
    assert not dropped and len(pairs) == 6
    return pairs


def test_compare_scores_sets():
    assert compare_scores([2.0, -1.0, 0.3], [1.0, 1.0, 0.3]) == ([0], [1], [2])
    assert compare_scores([1.0, 1.05], [1.0, 1.0], tolerance=0.1) == ([], [], [0, 1])


def test_pair_with_all_three_relations_gives_exact_items():
    items = reformulate_pair(six_pairs()[3], KEYS, DESCS, "hh-rlhf", seed=0)
    assert [(i.id, i.direction, i.target, i.aspects) for i in items] == [
        ("3-chosen_better", CHOSEN_BETTER, "c4", ("harmlessness",)),
        ("3-rejected_better", REJECTED_BETTER, "r4", ("helpfulness",)),
        ("3-equal", EQUAL, "c4", ("humour",)),
        ("3-warmup", WARMUP, "c4", items[3].aspects),
    ]
    assert items[0].prompt == HH_BETTER.format(a=HARM, q="Q4", y="r4")
    assert items[1].prompt == HH_BETTER.format(a=HELP, q="Q4", y="c4")
    # The released script put the O< aspects (helpfulness) into the equal item; it must be O= (humour).
    assert items[2].prompt == HH_EQUAL.format(a=HUMOUR, q="Q4", y="r4")
    assert sorted(items[3].aspects) == KEYS
    assert items[3].prompt == HH_BETTER.format(a="; ".join(DESCS[KEYS.index(k)] for k in items[3].aspects),
                                               q="Q4", y="c4")


def test_six_pairs_all_items():
    got = {}
    for pair in six_pairs():
        for item in reformulate_pair(pair, KEYS, DESCS, "hh-rlhf", seed=0, warmup=False):
            got[item.id] = (item.direction, sorted(item.aspects), item.target)
            mode_text = HH_EQUAL if item.direction == EQUAL else HH_BETTER
            answer = pair.chosen if item.direction == REJECTED_BETTER else pair.rejected
            aspects = "; ".join(DESCS[KEYS.index(k)] for k in item.aspects)
            assert item.prompt == mode_text.format(a=aspects, q=pair.prompt, y=answer)
    assert got == {
        "0-chosen_better": (CHOSEN_BETTER, KEYS, "c1"),
        "1-rejected_better": (REJECTED_BETTER, KEYS, "r2"),
        "2-equal": (EQUAL, KEYS, "c3"),
        "3-chosen_better": (CHOSEN_BETTER, ["harmlessness"], "c4"),
        "3-rejected_better": (REJECTED_BETTER, ["helpfulness"], "r4"),
        "3-equal": (EQUAL, ["humour"], "c4"),
        "4-chosen_better": (CHOSEN_BETTER, ["harmlessness", "helpfulness"], "c5"),
        "4-equal": (EQUAL, ["humour"], "c5"),
        "5-chosen_better": (CHOSEN_BETTER, ["humour"], "c6"),
        "5-rejected_better": (REJECTED_BETTER, ["harmlessness"], "r6"),
        "5-equal": (EQUAL, ["helpfulness"], "c6"),
    }


def test_aspect_shuffle_is_seeded_per_pair_and_independent_of_position():
    pair = six_pairs()[0]
    moved = ScoredPair(100, pair.prompt, pair.chosen, pair.rejected, pair.chosen_scores, pair.rejected_scores)
    orders = {seed: reformulate_pair(pair, KEYS, DESCS, "hh-rlhf", seed=seed)[0].aspects for seed in range(8)}
    assert reformulate_pair(moved, KEYS, DESCS, "hh-rlhf", seed=3)[0].aspects == orders[3]
    assert len(set(orders.values())) > 1          # the order really is shuffled
    assert all(sorted(o) == KEYS for o in orders.values())


def test_paper_template_equal_mode():
    item = reformulate_pair(six_pairs()[2], KEYS, DESCS, "paper", seed=0, warmup=False)[0]
    assert item.prompt.startswith("Edit the following Question-Answer pair to make it equal considering the "
                                  "following objectives ")
    assert item.prompt.endswith(" | Question: Q3 | Answer: r3 | Edit:")


def test_build_dataset_six_pairs_no_empty_aspects_and_counts():
    out = build_dataset(six_pairs(), KEYS, DESCS, "hh-rlhf", seed=0, val_size=0)
    assert len(out.no_equal_train) == 7 and out.no_equal_val == []
    assert sorted(i.id for i in out.all_equal) == ["2-equal", "3-equal", "4-equal", "5-equal"]
    assert len(out.warmup) == 6 and all(i.target == i.prompt.split(" | Answer: ")[1][:-len(" | Edit: ")]
                                        for i in out.warmup)
    assert all(item.aspects for items in (out.no_equal_train, out.all_equal, out.warmup) for item in items)
    assert out.stats["directions"]["no_equal/train"] == {CHOSEN_BETTER: 4, REJECTED_BETTER: 3}
    assert out.stats["objectives_per_item"]["no_equal/train"] == {"1": 4, "2": 1, "3": 2}
    assert out.stats["objectives_per_item"]["all_equal/train"] == {"1": 3, "3": 1}


def test_split_is_grouped_by_prompt():
    # Two pairs share each question: both pairs (and both directions) stay in one split.
    pairs = [ScoredPair(i + 1, f"Q{i // 2}", f"c{i}", f"r{i}", (1.0, 0.0), (0.0, 1.0)) for i in range(40)]
    out = build_dataset(pairs, KEYS[:2], DESCS[:2], "hh-rlhf", seed=1, val_size=0.25)
    train_q = {i.question for i in out.no_equal_train + out.all_equal + out.warmup}
    val_q = {i.question for i in out.no_equal_val}
    assert len(val_q) == 5 and len(train_q) == 15 and not train_q & val_q
    assert len(out.no_equal_val) == 5 * 2 * 2
    assert out.stats["val_items_left_out_of_train_sets"] == {WARMUP: 10}


def test_rows_with_empty_response_or_nan_score_are_dropped_and_counted():
    rows = six_rows()
    rows[0]["chosen_response"] = "  "
    rows[1]["rejected_score2"] = "nan"
    rows[2]["chosen_score1"] = ""
    pairs, dropped = pairs_from_rows(rows, 3)
    assert [p.index for p in pairs] == [3, 4, 5]
    assert dropped == Counter(empty_response=1, missing_score=1, non_finite_score=1)  # issue 16: NaN apart
    rows[3]["chosen_score1"] = "high"
    with pytest.raises(DataError, match="row 4, column 'chosen_score1': expected a number"):
        pairs_from_rows(rows, 3, path="x.csv")
    with pytest.raises(DataError, match="found 3 chosen_score"):
        pairs_from_rows(six_rows(), 4, path="x.csv")


# ---------------------------------------------------------------- the shipped slice, through the script

def _synthetic(text: str, j: int) -> float:
    return float((len(text) * (j + 2)) % 7) / 2


@pytest.fixture(scope="module")
def slice_csv(tmp_path_factory, repo_root) -> Path:
    path = repo_root / "samples" / "hh-rlhf-harmless-base" / "harmless-base-test.jsonl.gz"
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            prompt, chosen = split_transcript(obj["chosen"])
            _, rejected = split_transcript(obj["rejected"])
            row = {"prompt": prompt, "chosen_response": chosen, "rejected_response": rejected}
            for j in range(3):
                row[f"chosen_score{j + 1}"] = _synthetic(chosen, j)
                row[f"rejected_score{j + 1}"] = _synthetic(rejected, j)
            rows.append(row)
    assert len(rows) == 2312
    out = tmp_path_factory.mktemp("slice") / "rewards.csv"
    write_csv(out, rows, list(rows[0]))
    return out


def test_shipped_slice_counts_split_and_determinism(slice_csv, tmp_path):
    rows = [r for r in _read_csv(slice_csv)]
    usable = [r for r in rows if r["chosen_response"].strip() and r["rejected_response"].strip()]
    sets = [compare_scores([float(r[f"chosen_score{j}"]) for j in (1, 2, 3)],
                           [float(r[f"rejected_score{j}"]) for j in (1, 2, 3)]) for r in usable]
    n_contrastive = sum(bool(b) for b, _, _ in sets) + sum(bool(w) for _, w, _ in sets)
    n_equal = sum(bool(e) for _, _, e in sets)

    stats = build_main(BuildConfig(input=str(slice_csv), output_dir=str(tmp_path / "a"), seed=7, val_size=0.1))
    assert stats["dropped_rows"] == {"empty_response": len(rows) - len(usable)} and len(usable) == 2308
    train = read_fastchat(tmp_path / "a" / "no_equal" / "train.json")
    val = read_fastchat(tmp_path / "a" / "no_equal" / "val.json")
    equal = read_fastchat(tmp_path / "a" / "all_equal" / "train.json")
    warm = read_fastchat(tmp_path / "a" / "warmup" / "train.json")
    left_out = stats["val_items_left_out_of_train_sets"]
    assert len(train) + len(val) == n_contrastive
    assert len(equal) + left_out.get(EQUAL, 0) == n_equal
    assert len(warm) + left_out[WARMUP] == len(usable)

    def question(prompt: str) -> str:
        return prompt.split(" | Context: ", 1)[1].rsplit(" | Answer: ", 1)[0]

    val_q = {question(i["prompt"]) for i in val}
    train_q = {question(i["prompt"]) for i in train + equal + warm}
    assert val_q and not val_q & train_q
    assert not {i["prompt"] for i in val} & {i["prompt"] for i in train + equal + warm}
    n_prompts = len({r["prompt"] for r in usable})
    assert stats["prompts"] == {"train": n_prompts - round(0.1 * n_prompts), "val": round(0.1 * n_prompts)}
    assert len(val_q) <= stats["prompts"]["val"]

    # Same seed: byte-identical files. Another seed: a different split.
    build_main(BuildConfig(input=str(slice_csv), output_dir=str(tmp_path / "b"), seed=7, val_size=0.1))
    for name in ("no_equal/train.json", "no_equal/val.json", "all_equal/train.json", "warmup/train.json",
                 "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    questions = [r["prompt"] for r in usable]
    assert split_questions(questions, 0.1, 7) != split_questions(questions, 0.1, 8)
    assert split_questions(questions, 0.1, 7) == split_questions(questions, 0.1, 7)


def _read_csv(path: Path) -> list[dict]:
    from metaaligner.io import read_records

    return read_records(path)


def test_ultrafeedback_config_four_ratings(tmp_path):
    # UltraFeedback fine-grained ratings mapped to instruction_following, honesty, truthfulness, helpfulness.
    rows = [{"prompt": "Name a colour.", "chosen_response": "Blue.", "rejected_response": "A car.",
             "chosen_score1": 5, "rejected_score1": 2, "chosen_score2": 4, "rejected_score2": 4,
             "chosen_score3": 3, "rejected_score3": 5, "chosen_score4": 5, "rejected_score4": 1}]
    write_csv(tmp_path / "uf.csv", rows, list(rows[0]))
    stats = build_main(BuildConfig(input=str(tmp_path / "uf.csv"), output_dir=str(tmp_path / "out"),
                                   dataset="ultrafeedback", val_size=0))
    assert stats["items"] == {"no_equal/train": 2, "no_equal/val": 0, "all_equal/train": 1, "warmup/train": 1}
    equal = read_fastchat(tmp_path / "out" / "all_equal" / "train.json")
    assert equal == [{"id": "0-equal", "completion": "Blue.", "prompt": (
        "You are an assistant to human. You will be provided with a query and an answer. Consider the query, "
        "then edit the answer to make it equal considering these aspects: Honesty: the response should not "
        "tell lies | Query: Name a colour. | Answer: A car. | Edit: ")}]


# ---------------------------------------------------------------- warm-up switch, held-out test split

def test_warmup_none_writes_the_released_layout_and_stats_say_which(tmp_path):
    write_csv(tmp_path / "six.csv", six_rows(), list(six_rows()[0]))
    copy = build_main(BuildConfig(input=str(tmp_path / "six.csv"), output_dir=str(tmp_path / "copy"), val_size=0))
    assert copy["warmup"] == {"mode": "copy", "note": (
        "this project's reading of the paper's warm-up step (copy task: answer y1 -> target y1, all objectives); "
        "the release ships only no_equal/ and all_equal/")}
    assert len(read_fastchat(tmp_path / "copy" / "warmup" / "train.json")) == 6
    none = build_main(BuildConfig(input=str(tmp_path / "six.csv"), output_dir=str(tmp_path / "none"), val_size=0,
                                  warmup="none"))
    assert none["warmup"]["mode"] == "none" and none["items"]["warmup/train"] == 0
    assert sorted(p.relative_to(tmp_path / "none").as_posix() for p in (tmp_path / "none").rglob("*.json")) == [
        "all_equal/train.json", "no_equal/train.json", "no_equal/val.json", "stats.json"]
    for name in ("all_equal/train.json", "no_equal/train.json"):   # the other sets do not move
        assert (tmp_path / "none" / name).read_bytes() == (tmp_path / "copy" / name).read_bytes()
    # re-using a folder of a copy run: its warm-up file does not survive to mix the settings
    build_main(BuildConfig(input=str(tmp_path / "six.csv"), output_dir=str(tmp_path / "copy"), val_size=0,
                           warmup="none"))
    assert not (tmp_path / "copy" / "warmup" / "train.json").exists()
    with pytest.raises(MetaAlignerError, match="--warmup must be one of copy, unbeaten, none, got 'off'"):
        build_main(BuildConfig(input=str(tmp_path / "six.csv"), output_dir=str(tmp_path / "x"), warmup="off"))


def test_test_input_builds_no_equal_test_json_in_input_order(tmp_path):
    write_csv(tmp_path / "six.csv", six_rows(), list(six_rows()[0]))
    test_rows = six_rows()[3:] + [dict(six_rows()[0], chosen_response="")]   # an empty response is dropped
    write_csv(tmp_path / "test.csv", test_rows, list(test_rows[0]))
    stats = build_main(BuildConfig(input=str(tmp_path / "six.csv"), test_input=str(tmp_path / "test.csv"),
                                   output_dir=str(tmp_path / "out"), val_size=0))
    test = read_fastchat(tmp_path / "out" / "no_equal" / "test.json")
    assert [(t["id"], t["completion"]) for t in test] == [
        ("test-0-chosen_better", "c4"), ("test-0-rejected_better", "r4"), ("test-1-chosen_better", "c5"),
        ("test-2-chosen_better", "c6"), ("test-2-rejected_better", "r6")]
    assert test[0]["prompt"] == HH_BETTER.format(a=HARM, q="Q4", y="r4")
    assert test[1]["prompt"] == HH_BETTER.format(a=HELP, q="Q4", y="c4")
    assert stats["items"]["no_equal/test"] == 5
    assert stats["test"] == {"input": str(tmp_path / "test.csv"), "rows_in": 4, "pairs": 3,
                             "dropped_rows": {"empty_response": 1}, "items": 5}
    # the training files are those of a run without --test_input
    build_main(BuildConfig(input=str(tmp_path / "six.csv"), output_dir=str(tmp_path / "plain"), val_size=0))
    assert (tmp_path / "out/no_equal/train.json").read_bytes() == (tmp_path / "plain/no_equal/train.json").read_bytes()
    assert not (tmp_path / "plain/no_equal/test.json").exists()


def _dry_run(argv, capsys):
    from metaaligner.cli import parse, run_main
    from scripts import run_paper

    code = run_main(run_paper.main, *parse(run_paper.make_parser(), argv))
    out, err = capsys.readouterr()
    return code, out, err


def _command(out: str, stage: str) -> str:
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("[") and f"] {stage} (" in line)
    settings = ("note:", "decoding:", "judge decoding:", "training items:", "profile:")
    return next(line.strip() for line in lines[head + 1:] if not line.strip().startswith(settings))


@pytest.mark.parametrize("dataset", ["hh-rlhf", "ultrafeedback", "imhi"])
def test_table3_ablations_are_named_variants_of_the_paper_configs(dataset, capsys):
    """Table 3's "-Equal Pref." and "-Warm Up" rows: the same pipeline with the curriculum steps and the
    warm-up data changed, in a run folder of their own."""
    config = f"configs/paper/{dataset}.yaml"
    runs = {}
    for ablation in (None, "no_equal", "no_warmup"):
        code, out, err = _dry_run(["--config", config, "--variant", "7B", "--dry_run"]
                                  + (["--ablation", ablation] if ablation else []), capsys)
        assert code == 0, err
        runs[ablation] = out
    label = {None: "", "no_equal": ", ablation no_equal (-Equal Pref.)", "no_warmup": ", ablation no_warmup (-Warm Up)"}
    expected = {None: ("warmup,equal,contrastive", "copy"), "no_equal": ("warmup,contrastive", "copy"),
                "no_warmup": ("equal,contrastive", "none")}
    for ablation, out in runs.items():
        folder = f"runs/paper/{dataset}-7B" + (f"-{ablation}" if ablation else "")
        assert out.splitlines()[0].startswith(f"{dataset} (7B{label[ablation]}): ")
        train = _command(out, "train_aligner")
        assert f"--data_dir {folder}/aligner_data --output_dir {folder}/aligner " in train
        assert f" --stages {expected[ablation][0]} " in train
        build = _command(out, "build_aligner_dataset")
        assert f" --warmup {expected[ablation][1]}" in build and f"--output_dir {folder}/aligner_data " in build
        assert f"--aligner_path {folder}/aligner " in _command(out, "align")
    if dataset == "hh-rlhf":   # stage 1 is shared: the ablations do not label the data again elsewhere
        assert {_command(out, "reward_labelling").split(" --output ")[1].split()[0] for out in runs.values()} == {
            "runs/paper/hh-rlhf-7B/rewards.csv"}
    code, _, err = _dry_run(["--config", config, "--ablation", "no_judge", "--dry_run"], capsys)
    names = "no_equal, no_warmup" + ("" if dataset == "imhi" else ", released_data")
    assert (code, err) == (2, f"error: {config}: unknown ablation 'no_judge'; ablations: {names}\n")


def test_hh_rlhf_paper_config_builds_the_released_test_split(capsys):
    code, out, err = _dry_run(["--config", "configs/paper/hh-rlhf.yaml", "--variant", "13B", "--dry_run"], capsys)
    assert code == 0, err
    assert _command(out, "reward_labelling_test").split(" dynamic_multi_objective_dataset/reward_labelling.py ")[1] \
        .startswith("--input data/hh-rlhf/test.jsonl.gz --output runs/paper/hh-rlhf-13B/test_rewards.csv ")
    assert ("build_aligner_dataset.py --input runs/paper/hh-rlhf-13B/rewards.csv "
            "--test_input runs/paper/hh-rlhf-13B/test_rewards.csv ") in _command(out, "build_aligner_dataset")


# ---------------------------------------------------------------- Algorithm 1 as released (--algorithm1 released)

UF_IF = "Instruction following: the response should follow the instructions of the query"
UF_HON = "Honesty: the response should not tell lies"
UF_TRU = "Truthfulness: the response should actively making known all the full truth of a matter"
UF_HELP = "Helpfulness: the response should provide useful resources and suggestions to the user"
UF_BETTER = ("You are an assistant to human. You will be provided with a query and an answer. Consider the query, "
             "then edit the answer to improve it considering these aspects: {a} | Query: {q} | Answer: {y} | Edit: ")
UF_EQUAL = UF_BETTER.replace("improve it", "make it equal")


def _canonical(item: dict, order: list[str]) -> tuple:
    """(id, prompt with every aspects slot in config order, target): the release shuffled the aspects
    unseeded, so a comparison with its files holds up to their order."""
    import re

    def sort(match):
        found = match.group(2).split("; ") if match.group(2) else []
        return match.group(1) + "; ".join(sorted(found, key=order.index)) + match.group(3)

    prompt = re.sub(r"(these aspects: )(.*?)( \| (?:Context|Query): )", sort, item["conversations"][0]["value"])
    assert item["conversations"][0]["from"] == "human" and item["conversations"][1]["from"] == "gpt"
    return item["id"], prompt, item["conversations"][1]["value"]


def _released_rows() -> list[dict]:
    rows = []
    for q, c, r, cs, rs in [
        ("Q1", "c1", "r1", ("1", "1", "1"), ("0", "0", "0")),         # > > >
        ("Q2", "c2", "r2", ("2", "-1", "0.3"), ("1", "1", "0.3")),    # > < =
        ("Q3", "c3", "r3", ("0.5",) * 3, ("0.5",) * 3),               # = = =
        ("Q4", "c4", "", ("1",) * 3, ("0",) * 3),                     # empty rejected cell: pandas NaN, skipped
        ("Q5", "c5", "r5", ("0", "0", "2"), ("1", "1", "1")),         # < < >
        ("NA", "same", "same", ("1", "0", "0"), ("0", "0", "0")),     # prompt NA -> "nan"; identical texts kept
        ("Q7", "c7", "None", ("1",) * 3, ("0",) * 3),                 # "None" is NaN to pandas: skipped
        ("Q8", "c8", "r8", ("1", "", "0"), ("0", "1", "0")),          # a NaN score: in no set
    ]:
        row = {"prompt": q, "chosen_response": c, "rejected_response": r}
        for j, (a, b) in enumerate(zip(cs, rs), start=1):
            row[f"chosen_score{j}"], row[f"rejected_score{j}"] = a, b
        rows.append(row)
    return rows


def test_algorithm1_released_hh_rlhf_item_for_item(tmp_path):
    """HH_RLHF_make_aligner_data.py on a fixed rewards.csv, its items written out by hand: equal items
    carry the O< aspects (empty when O< is), the O< and equal items take the previous item's whole
    prompt as context (the script overwrote `query`), integer ids over both files, val = the first
    --val_items shuffled items, no warm-up folder."""
    write_csv(tmp_path / "rewards.csv", _released_rows(), list(_released_rows()[0]))
    p1 = HH_BETTER.format(a=HARM, q="Q2", y="r2")
    p2 = HH_BETTER.format(a=HELP, q=p1, y="c2")
    p5 = HH_BETTER.format(a=HUMOUR, q="Q5", y="r5")
    p6 = HH_BETTER.format(a=HARM, q="nan", y="same")
    p8 = HH_BETTER.format(a=HARM, q="Q8", y="r8")
    contrastive = [
        (0, HH_BETTER.format(a=f"{HARM}; {HELP}; {HUMOUR}", q="Q1", y="r1"), "c1"),
        (1, p1, "c2"), (2, p2, "r2"),
        (5, p5, "c5"), (6, HH_BETTER.format(a=f"{HARM}; {HELP}", q=p5, y="c5"), "r5"),
        (7, p6, "same"),
        (9, p8, "c8"),
    ]
    equal = [
        (3, HH_EQUAL.format(a=HELP, q=p2, y="r2"), "c2"),
        (4, HH_EQUAL.format(a="", q="Q3", y="r3"), "c3"),
        (8, HH_EQUAL.format(a="", q=p6, y="same"), "same"),
        (10, HH_EQUAL.format(a="", q=p8, y="r8"), "c8"),
    ]
    out = tmp_path / "out"
    stats = build_main(BuildConfig(input=str(tmp_path / "rewards.csv"), output_dir=str(out),
                                   algorithm1="released", val_items=3))
    train, val = (json.loads((out / f"no_equal/{s}.json").read_text()) for s in ("train", "val"))
    assert (len(train), len(val)) == (4, 3)
    assert Counter(_canonical(i, DESCS) for i in train + val) == Counter(contrastive)
    assert [_canonical(i, DESCS) for i in json.loads((out / "all_equal/train.json").read_text())] == equal
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json")) == [
        "all_equal/train.json", "no_equal/train.json", "no_equal/val.json", "stats.json"]
    assert stats["script"] == "HH_RLHF_make_aligner_data.py"
    assert (stats["rows_in"], stats["pairs"], stats["dropped_rows"]) == (8, 6, {"nan_response": 2})
    assert stats["items_without_aspects"] == {"no_equal/train": 0, "no_equal/val": 0, "all_equal/train": 3}
    assert sum(stats["items_with_nested_prompt"].values()) == 2 + 3
    assert stats["warmup"]["mode"] == "none" and stats["algorithm1"]["mode"] == "released"
    # the release's shuffles are random.Random(seed): one seed, one set of files
    again = tmp_path / "again"
    build_main(BuildConfig(input=str(tmp_path / "rewards.csv"), output_dir=str(again), algorithm1="released",
                           val_items=3))
    for name in ("no_equal/train.json", "no_equal/val.json", "all_equal/train.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes()
    # the default split is the release's: the first 15,000 shuffled items are val
    assert BuildConfig(input="x", output_dir="y").val_items == 15000
    default = build_main(BuildConfig(input=str(tmp_path / "rewards.csv"), output_dir=str(tmp_path / "d"),
                                     algorithm1="released"))
    assert default["items"] == {"no_equal/train": 0, "no_equal/val": 7, "all_equal/train": 4}


def test_algorithm1_released_hh_rlhf_test_run(tmp_path):
    """--test_input: the released script's --split test run, every item in no_equal/test.json, the
    equal items in all_equal/val.json, ids from 0 as in a second run of the script."""
    rows = _released_rows()
    write_csv(tmp_path / "rewards.csv", rows, list(rows[0]))
    write_csv(tmp_path / "test.csv", rows[:3], list(rows[0]))
    out = tmp_path / "out"
    stats = build_main(BuildConfig(input=str(tmp_path / "rewards.csv"), test_input=str(tmp_path / "test.csv"),
                                   output_dir=str(out), algorithm1="released"))
    test = json.loads((out / "no_equal/test.json").read_text())
    p1 = HH_BETTER.format(a=HARM, q="Q2", y="r2")
    p2 = HH_BETTER.format(a=HELP, q=p1, y="c2")
    assert Counter(_canonical(i, DESCS) for i in test) == Counter([
        (0, HH_BETTER.format(a=f"{HARM}; {HELP}; {HUMOUR}", q="Q1", y="r1"), "c1"), (1, p1, "c2"), (2, p2, "r2")])
    assert [_canonical(i, DESCS) for i in json.loads((out / "all_equal/val.json").read_text())] == [
        (3, HH_EQUAL.format(a=HELP, q=p2, y="r2"), "c2"), (4, HH_EQUAL.format(a="", q="Q3", y="r3"), "c3")]
    assert stats["test"]["items"] == {"no_equal/test": 3, "all_equal/val": 2}


def test_algorithm1_released_ultrafeedback_item_for_item(tmp_path):
    """UltraFeedback_make_aligner_data.py on a fixed completions.csv: one item per pair i < j, towards
    the side with more objectives (ties of counts: towards i; all ties: no aspects); after each i's
    pair loop one equal item from the pair (i, last); a record with one completion gives nothing."""
    def comp(record, position, prompt, response, scores):
        return {"record": record, "completion": position, "prompt": prompt, "response": response,
                **{f"score{n}": s for n, s in enumerate(scores, start=1)}}

    rows = [comp(1, 0, "Name a colour.", "Red.", "5554"), comp(1, 1, "Name a colour.", "Blue.", "4554"),
            comp(1, 3, "Name a colour.", "Green?", "3453"),
            comp(3, 0, "2+2?", "4", "5555"), comp(3, 1, "2+2?", "Four.", "5555"),
            comp(5, 0, "Say hi.", "Hi!", "5555"),
            comp(7, 0, "Joke?", "X", "1115"), comp(7, 1, "Joke?", "Y", "5551")]
    write_csv(tmp_path / "completions.csv", rows, list(rows[0]))
    order = [UF_IF, UF_HON, UF_TRU, UF_HELP]
    contrastive = [
        (0, UF_BETTER.format(a=UF_IF, q="Name a colour.", y="Blue."), "Red."),
        (1, UF_BETTER.format(a=f"{UF_IF}; {UF_HON}; {UF_HELP}", q="Name a colour.", y="Green?"), "Red."),
        (3, UF_BETTER.format(a=f"{UF_IF}; {UF_HON}; {UF_HELP}", q="Name a colour.", y="Green?"), "Blue."),
        (5, UF_BETTER.format(a="", q="2+2?", y="Four."), "4"),
        (7, UF_BETTER.format(a=f"{UF_IF}; {UF_HON}; {UF_TRU}", q="Joke?", y="X"), "Y"),
    ]
    equal = [
        (2, UF_EQUAL.format(a=UF_TRU, q="Name a colour.", y="Green?"), "Red."),
        (4, UF_EQUAL.format(a=UF_TRU, q="Name a colour.", y="Green?"), "Blue."),
        (6, UF_EQUAL.format(a=f"{UF_IF}; {UF_HON}; {UF_TRU}; {UF_HELP}", q="2+2?", y="Four."), "4"),
    ]
    out = tmp_path / "out"
    stats = build_main(BuildConfig(input=str(tmp_path / "completions.csv"), dataset="ultrafeedback",
                                   output_dir=str(out), algorithm1="released", val_items=2))
    train, val = (json.loads((out / f"no_equal/{s}.json").read_text()) for s in ("train", "val"))
    assert (len(train), len(val)) == (3, 2)
    assert Counter(_canonical(i, order) for i in train + val) == Counter(contrastive)
    assert [_canonical(i, order) for i in json.loads((out / "all_equal/train.json").read_text())] == equal
    assert stats["script"] == "UltraFeedback_make_aligner_data.py"
    assert (stats["records"], stats["records_with_pairs"]) == (4, 3)
    assert stats["items_without_aspects"]["all_equal/train"] == 0
    assert stats["items_without_aspects"]["no_equal/train"] + stats["items_without_aspects"]["no_equal/val"] == 1
    with pytest.raises(MetaAlignerError, match="the released UltraFeedback script writes no test items"):
        build_main(BuildConfig(input=str(tmp_path / "completions.csv"), dataset="ultrafeedback",
                               test_input=str(tmp_path / "completions.csv"), output_dir=str(tmp_path / "x"),
                               algorithm1="released"))


def test_algorithm1_released_refusals(tmp_path):
    write_csv(tmp_path / "rewards.csv", _released_rows(), list(_released_rows()[0]))
    with pytest.raises(MetaAlignerError, match="--algorithm1 must be one of ours, released, got 'paper'"):
        build_main(BuildConfig(input=str(tmp_path / "rewards.csv"), output_dir=str(tmp_path / "o"), algorithm1="paper"))
    with pytest.raises(MetaAlignerError, match="--tie_tolerance: the released scripts compare scores with =="):
        build_main(BuildConfig(input=str(tmp_path / "rewards.csv"), output_dir=str(tmp_path / "o"),
                               algorithm1="released", tie_tolerance=0.1))
    bad = [dict(_released_rows()[0], chosen_score1="high")]
    write_csv(tmp_path / "bad.csv", bad, list(bad[0]))
    with pytest.raises(DataError, match="row 1, column 'chosen_score1': expected a number, got 'high'"):
        build_main(BuildConfig(input=str(tmp_path / "bad.csv"), output_dir=str(tmp_path / "o"), algorithm1="released"))
