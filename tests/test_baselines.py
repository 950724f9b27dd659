"""Baselines (SFT, CDPO, MORLHF): exact prompts and orderings on hand-made data, and every baseline
trained a step on tiny random models, through the scripts' own parsers."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.methods.cdpo import cdpo_order, closeness, make_cdpo_data
from metaaligner.methods.common import (
    ObjectiveSpec,
    conditioned_prompt,
    default_targets,
    parse_target_rewards,
    read_reward_pairs,
    split_by_group,
)
from metaaligner.methods.morlhf import parse_weights, reward_model_pairs
from metaaligner.methods.scalarisation import scalarise
from metaaligner.methods.sft import make_sft_data
from metaaligner.testing.waits import DEADLINE_S

REPO = Path(__file__).resolve().parent.parent
HH_NAMES = ["Harmlessness", "Helpfulness", "Humour"]
Q = "\n\nHuman: {}?\n\nAssistant:"

# The hand-made 4-pair CSV: (question, chosen, rejected, chosen scores, rejected scores).
FOUR_PAIRS = [
    ("A", "chosen A", "rejected A", (1.0, 0.5, 0.0), (0.0, 0.0, 0.0)),
    ("B", "chosen B", "rejected B", (-1.0, -1.0, -1.0), (1.0, 0.0, 0.0)),
    ("C", "chosen C", "rejected C", (3.0, 2.0, 1.5), (0.5, 0.5, 0.5)),
    ("D", "chosen D", "rejected D", (0.7, 0.1, 0.2), (1.3, 0.5, -0.6)),
]


def write_rewards_csv(path: Path, pairs) -> Path:
    n = len(pairs[0][3])
    columns = ["prompt", "chosen_response", "rejected_response"]
    columns += [f"chosen_score{i}" for i in range(1, n + 1)] + [f"rejected_score{i}" for i in range(1, n + 1)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for q, c, r, cs, rs in pairs:
            writer.writerow([Q.format(q), c, r, *cs, *rs])
    return path


def load_script(relative: str):
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem + "_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def run_script(relative: str, argv: list[str]):
    from metaaligner.cli import parse

    module = load_script(relative)
    return module.main(*parse(module.make_parser(), argv))


# ---------------------------------------------------------------- conditioning prompts

def test_conditioning_prompt_exact_strings():
    assert ObjectiveSpec.from_config("hh-rlhf").names == HH_NAMES
    assert (conditioned_prompt(Q.format("hi"), HH_NAMES, [4.19, 3.03, 1.58])
            == "<Harmlessness>: 4.19; <Helpfulness>: 3.03; <Humour>: 1.58 | \n\nHuman: hi?\n\nAssistant:")
    assert (conditioned_prompt("q", HH_NAMES, [0.5, -1.234, 2])
            == "<Harmlessness>: 0.50; <Helpfulness>: -1.23; <Humour>: 2.00 | q")
    # a reward that rounds to zero never prints as "-0.00"
    assert conditioned_prompt("q", HH_NAMES, [-0.004, 0.0, -0.005]) == \
        "<Harmlessness>: 0.00; <Helpfulness>: 0.00; <Humour>: -0.01 | q"
    uf = ObjectiveSpec.from_config("ultrafeedback")
    assert uf.keys == ["instruction_following", "honesty", "truthfulness", "helpfulness"]
    assert (conditioned_prompt("Write a poem.", uf.names, [5, 4.5, 3, 2.25])
            == "<Instruction following>: 5.00; <Honesty>: 4.50; <Truthfulness>: 3.00; <Helpfulness>: 2.25 | Write a poem.")


def test_released_conditioning_text_exact_strings(tmp_path):
    """``--conditioning_text released``: the release's text, labels and numbers from the dataset config
    (HH-RLHF names with str(round(x, 2)); UltraFeedback keys, whole ratings as integers)."""
    hh, uf = ObjectiveSpec.from_config("hh-rlhf"), ObjectiveSpec.from_config("ultrafeedback")
    released = hh.conditioning("released")
    assert released.prompt(Q.format("hi"), [4.19, 3.03, 1.58]) == \
        "<Harmlessness>: 4.19; <Helpfulness>: 3.03; <Humour>: 1.58 | \n\nHuman: hi?\n\nAssistant:"
    assert released.prompt("q", [0.5, -1.234, 2]) == "<Harmlessness>: 0.5; <Helpfulness>: -1.23; <Humour>: 2.0 | q"
    assert released.prompt("q", [1.0, 0.456, 5]) == "<Harmlessness>: 1.0; <Helpfulness>: 0.46; <Humour>: 5.0 | q"
    assert uf.conditioning("released").prompt("Write a poem.", [5, 4.5, 3.0, 2.25]) == (
        "<instruction_following>: 5; <honesty>: 4.5; <truthfulness>: 3; <helpfulness>: 2.25 | Write a poem.")
    # the clean text is the same for both datasets: names, two decimals
    assert hh.conditioning("clean").prompt("q", [0.5, -1.234, 2]) == conditioned_prompt("q", HH_NAMES, [0.5, -1.234, 2])
    assert uf.conditioning().prompt("q", [5, 4.5, 3, 2.25]) == (
        "<Instruction following>: 5.00; <Honesty>: 4.50; <Truthfulness>: 3.00; <Helpfulness>: 2.25 | q")
    with pytest.raises(MetaAlignerError, match="conditioning_text"):
        hh.conditioning("paper")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntemplate: hh-rlhf\nobjective_group: hh-rlhf\nobjectives: [harmlessness]\n"
                   "conditioning_labels: keys\n")
    with pytest.raises(MetaAlignerError, match="conditioning_labels"):
        ObjectiveSpec.from_config(str(bad))


def test_conditioning_text_travels_from_data_to_inference(tmp_path, monkeypatch, caplog):
    """The data scripts record --conditioning_text (stats.json), training copies it into baseline.json,
    and inference writes the same text unasked; an explicit other text wins with a one-line warning."""
    from metaaligner.methods.cdpo import train_cdpo_baseline
    from metaaligner.methods.common import write_metadata
    from metaaligner.methods.inference import BaselineInferenceConfig, run_inference
    from metaaligner.methods.sft import train_sft_baseline

    monkeypatch.setattr("metaaligner.training.sft.train_sft", lambda *a, **k: None)
    monkeypatch.setattr("metaaligner.training.dpo.train_dpo", lambda *a, **k: None)

    class Recorder:
        def __init__(self):
            self.prompts = []

        def generate(self, prompts, params, progress=False):
            self.prompts += prompts
            return ["out"] * len(prompts)

    queries = tmp_path / "queries.csv"
    queries.write_text("query,goldens\nq1,g1\n", encoding="utf-8")

    def infer(model, dataset, **kwargs):
        rec = Recorder()
        run_inference(BaselineInferenceConfig(aligner_path=str(model), data_dir=str(queries), dataset=dataset,
                                              model_output_path=str(tmp_path / "out" / model.name), overwrite=True,
                                              **kwargs), generator=rec)
        return rec.prompts

    # SFT, HH-RLHF, through the data script's own parser
    src = write_rewards_csv(tmp_path / "rewards.csv", FOUR_PAIRS[:2])
    run_script("baseline_models/sft/make_sft_data.py", ["--input", str(src), "--dataset", "hh-rlhf", "--output_dir",
                                                        str(tmp_path / "sft_data"), "--val_size", "0",
                                                        "--conditioning_text", "released"])
    items = {i["id"]: i["conversations"][0]["value"] for i in json.loads((tmp_path / "sft_data" / "train.json").read_text())}
    assert items["1-chosen"] == "<Harmlessness>: 1.0; <Helpfulness>: 0.5; <Humour>: 0.0 | \n\nHuman: A?\n\nAssistant:"
    assert items["2-chosen"] == "<Harmlessness>: -1.0; <Helpfulness>: -1.0; <Humour>: -1.0 | \n\nHuman: B?\n\nAssistant:"
    assert json.loads((tmp_path / "sft_data" / "stats.json").read_text())["conditioning_text"] == "released"
    sft = tmp_path / "sft"
    train_sft_baseline(tmp_path / "sft_data", sft, "base", None)
    assert json.loads((sft / "baseline.json").read_text())["conditioning_text"] == "released"
    assert infer(sft, "hh-rlhf") == ["<Harmlessness>: 1.0; <Helpfulness>: 0.5; <Humour>: 0.0 | q1"]
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert infer(sft, "hh-rlhf", conditioning_text="clean") == [
            "<Harmlessness>: 1.00; <Helpfulness>: 0.50; <Humour>: 0.00 | q1"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "records released" in warnings[0]

    # CDPO, UltraFeedback (keys, integer ratings), default text elsewhere stays clean
    uf_pairs = [("A", "good", "bad", (5.0, 5.0, 4.0, 5.0), (2.0, 3.0, 3.0, 1.0)),
                ("B", "fine", "worse", (4.0, 4.5, 5.0, 3.0), (1.0, 1.0, 1.0, 1.0))]
    uf_src = write_rewards_csv(tmp_path / "uf.csv", uf_pairs)
    make_cdpo_data(uf_src, "ultrafeedback", tmp_path / "cdpo_data", val_size=0, conditioning_text="released")
    rows = [json.loads(line) for line in (tmp_path / "cdpo_data" / "train.jsonl").read_text().splitlines()]
    head = "<instruction_following>: 5; <honesty>: 5; <truthfulness>: 5; <helpfulness>: 5 | "
    assert sorted(r["prompt"] for r in rows) == [head + Q.format("A"), head + Q.format("B")]
    cdpo = tmp_path / "cdpo"
    train_cdpo_baseline(tmp_path / "cdpo_data", cdpo, "base", None)
    assert json.loads((cdpo / "baseline.json").read_text())["conditioning_text"] == "released"
    assert infer(cdpo, "ultrafeedback", target_rewards="honesty=4.5") == [
        "<instruction_following>: 5; <honesty>: 4.5; <truthfulness>: 5; <helpfulness>: 5 | q1"]
    make_cdpo_data(uf_src, "ultrafeedback", tmp_path / "cdpo_clean", val_size=0)
    clean = json.loads((tmp_path / "cdpo_clean" / "train.jsonl").read_text().splitlines()[0])["prompt"]
    assert clean.startswith("<Instruction following>: 5.00; <Honesty>: 5.00;")
    assert json.loads((tmp_path / "cdpo_clean" / "stats.json").read_text())["conditioning_text"] == "clean"
    # a model folder from before the switch (no conditioning_text) reads as clean
    old = tmp_path / "old"
    write_metadata(old, {"method": "sft", "conditioning": "targets", "targets": {"harmlessness": 0.5,
                                                                                 "helpfulness": 1, "humour": 2}})
    assert infer(old, "hh-rlhf") == ["<Harmlessness>: 0.50; <Helpfulness>: 1.00; <Humour>: 2.00 | q1"]
    with pytest.raises(MetaAlignerError, match="--conditioning_text"):
        BaselineInferenceConfig(conditioning="released")


def test_make_sft_data_items_carry_their_own_rewards(tmp_path):
    src = write_rewards_csv(tmp_path / "rewards.csv", FOUR_PAIRS[:2])
    stats = make_sft_data(src, "hh-rlhf", tmp_path / "sft", seed=0, val_size=0)
    train = json.loads((tmp_path / "sft" / "train.json").read_text())
    assert json.loads((tmp_path / "sft" / "val.json").read_text()) == []
    by_id = {item["id"]: item["conversations"] for item in train}
    assert by_id["1-chosen"] == [
        {"from": "human", "value": "<Harmlessness>: 1.00; <Helpfulness>: 0.50; <Humour>: 0.00 | \n\nHuman: A?\n\nAssistant:"},
        {"from": "gpt", "value": "chosen A"}]
    assert by_id["2-rejected"] == [
        {"from": "human", "value": "<Harmlessness>: 1.00; <Helpfulness>: 0.00; <Humour>: 0.00 | \n\nHuman: B?\n\nAssistant:"},
        {"from": "gpt", "value": "rejected B"}]
    assert sorted(by_id) == ["1-chosen", "1-rejected", "2-chosen", "2-rejected"]
    assert stats["max_rewards"] == {"harmlessness": 1.0, "helpfulness": 0.5, "humour": 0.0}
    # Same seed, same bytes.
    make_sft_data(src, "hh-rlhf", tmp_path / "sft2", seed=0, val_size=0)
    assert (tmp_path / "sft" / "train.json").read_bytes() == (tmp_path / "sft2" / "train.json").read_bytes()


def test_ultrafeedback_sft_data_takes_each_completion_once_as_released(tmp_path):
    """UltraFeedback_make_sft_data.py: each used completion once with its four ratings, from
    prepare_ultrafeedback.py's completions.csv; a record with a single completion is kept (from the
    pairs of rewards.csv a completion would appear n - 1 times and that record not at all)."""
    from metaaligner.dataset.ultrafeedback import completion_columns
    from metaaligner.io import write_csv

    rows = [{"record": 1, "completion": 0, "prompt": "Name a colour.", "response": "Red.",
             "score1": 5, "score2": 5, "score3": 5, "score4": 4},
            {"record": 1, "completion": 1, "prompt": "Name a colour.", "response": "Blue.",
             "score1": 4, "score2": 5, "score3": 5, "score4": 4},
            {"record": 1, "completion": 3, "prompt": "Name a colour.", "response": "Green?",
             "score1": 3, "score2": 4, "score3": 5, "score4": 3},
            {"record": 2, "completion": 0, "prompt": "Say hi.", "response": "Hi!",
             "score1": 5, "score2": 5, "score3": 5, "score4": 5}]
    write_csv(tmp_path / "completions.csv", rows, completion_columns())
    stats = make_sft_data(tmp_path / "completions.csv", "ultrafeedback", tmp_path / "sft", seed=0, val_size=0)
    train = json.loads((tmp_path / "sft" / "train.json").read_text())
    head = "<Instruction following>: {}; <Honesty>: {}; <Truthfulness>: {}; <Helpfulness>: {} | {}"
    assert sorted((i["id"], i["conversations"][0]["value"], i["conversations"][1]["value"]) for i in train) == [
        ("1-0", head.format("5.00", "5.00", "5.00", "4.00", "Name a colour."), "Red."),
        ("1-1", head.format("4.00", "5.00", "5.00", "4.00", "Name a colour."), "Blue."),
        ("1-3", head.format("3.00", "4.00", "5.00", "3.00", "Name a colour."), "Green?"),
        ("2-0", head.format("5.00", "5.00", "5.00", "5.00", "Say hi."), "Hi!")]
    assert (stats["layout"], stats["records"], stats["completions"], stats["items"]) == ("completions", 2, 4, 4)
    assert stats["max_rewards"] == {"instruction_following": 5.0, "honesty": 5.0, "truthfulness": 5.0,
                                    "helpfulness": 5.0}
    # a record's completions stay in one split
    grouped = make_sft_data(tmp_path / "completions.csv", "ultrafeedback", tmp_path / "sft2", seed=0, val_size=1)
    val = json.loads((tmp_path / "sft2" / "val.json").read_text())
    assert grouped["val"] in (1, 3) and len({i["id"].split("-")[0] for i in val}) == 1


def test_split_keeps_both_items_of_a_pair_together():
    items = [{"id": f"{g}-{s}", "group": g} for g in range(20) for s in ("chosen", "rejected")]
    train, val = split_by_group(items, 0.25, seed=3)
    assert len(val) == 10 and len(train) == 30
    assert not {i["group"] for i in train} & {i["group"] for i in val}
    assert split_by_group(items, 0.25, seed=3) == (train, val)


# ---------------------------------------------------------------- CDPO ordering

def test_cdpo_ordering_on_four_pairs_explicit_targets(tmp_path):
    src = write_rewards_csv(tmp_path / "rewards.csv", FOUR_PAIRS)
    stats = make_cdpo_data(src, "hh-rlhf", tmp_path / "cdpo", seed=0, val_size=0,
                           target_rewards="harmlessness=1.0,helpfulness=0.5,humour=0.0")
    head = "<Harmlessness>: 1.00; <Helpfulness>: 0.50; <Humour>: 0.00 | "
    rows = [json.loads(line) for line in (tmp_path / "cdpo" / "train.jsonl").read_text().splitlines()]
    assert (tmp_path / "cdpo" / "val.jsonl").read_text() == ""
    # A: chosen hits the targets (0) vs -1.5: kept. B: -4.5 vs -0.5: swapped. C: -5.0 vs -1.0: swapped although
    # chosen scores higher on every objective. D: -0.9000000000000001 vs -0.9 in floats, a tie: dropped.
    assert sorted(rows, key=lambda r: r["prompt"]) == [
        {"prompt": head + Q.format("A"), "chosen": "chosen A", "rejected": "rejected A"},
        {"prompt": head + Q.format("B"), "chosen": "rejected B", "rejected": "chosen B"},
        {"prompt": head + Q.format("C"), "chosen": "rejected C", "rejected": "chosen C"},
    ]
    assert (stats["pairs_out"], stats["kept_order"], stats["swapped_order"], stats["ties_dropped"]) == (3, 1, 2, 1)
    saved = json.loads((tmp_path / "cdpo" / "stats.json").read_text())
    assert saved["targets"] == {"harmlessness": 1.0, "helpfulness": 0.5, "humour": 0.0}
    assert saved["ties_dropped"] == 1 and saved["targets_source"] == "--target_rewards"


def test_cdpo_ordering_default_targets_are_the_maxima(tmp_path):
    src = write_rewards_csv(tmp_path / "rewards.csv", FOUR_PAIRS)
    stats = make_cdpo_data(src, "hh-rlhf", tmp_path / "cdpo", seed=0, val_size=0)
    assert stats["targets"] == {"harmlessness": 3.0, "helpfulness": 2.0, "humour": 1.5}
    rows = {r["prompt"][-14:-13]: r for r in map(json.loads, (tmp_path / "cdpo" / "train.jsonl").read_text().splitlines())}
    # targets (3, 2, 1.5): A -5 vs -6.5 keep; B -9.5 vs -5.5 swap; C 0 vs -5 keep; D -5.5 vs -5.3 swap.
    assert {k: r["chosen"] for k, r in rows.items()} == {"A": "chosen A", "B": "rejected B", "C": "chosen C",
                                                          "D": "rejected D"}
    assert rows["A"]["prompt"].startswith("<Harmlessness>: 3.00; <Helpfulness>: 2.00; <Humour>: 1.50 | ")
    assert stats["ties_dropped"] == 0


def test_order_and_closeness_functions(tmp_path):
    assert closeness((1.0, 0.5, 0.0), (1.0, 0.5, 0.0)) == 0
    assert closeness((0.0, 0.0, 0.0), (1.0, 0.5, 0.0)) == -1.5
    assert cdpo_order((0.7, 0.1, 0.2), (1.3, 0.5, -0.6), (1.0, 0.5, 0.0)) == 0
    assert cdpo_order((0.7, 0.1, 0.2), (1.3, 0.5, -0.6), (1.0, 0.5, 0.0), tolerance=0) == -1
    pairs = read_reward_pairs(write_rewards_csv(tmp_path / "r.csv", FOUR_PAIRS), 3)
    assert default_targets(pairs.pairs) == [3.0, 2.0, 1.5]


def test_target_rewards_parsing_and_errors(tmp_path):
    keys, names = ["harmlessness", "helpfulness", "humour"], HH_NAMES
    assert parse_target_rewards("Humour=1.5,harmlessness=4", keys, names, [0, 0, 0]) == [4.0, 0.0, 1.5]
    with pytest.raises(MetaAlignerError, match="unknown objective 'fun'"):
        parse_target_rewards("fun=1", keys, names, [0, 0, 0])
    with pytest.raises(MetaAlignerError, match="no target for helpfulness, humour"):
        parse_target_rewards("harmlessness=1", keys, names)
    with pytest.raises(MetaAlignerError, match="not a number"):
        parse_target_rewards("humour=high", keys, names, [0, 0, 0])
    four = write_rewards_csv(tmp_path / "uf.csv", [("q", "a", "b", (1, 2, 3, 4), (4, 3, 2, 1))])
    with pytest.raises(DataError, match="beyond the dataset config's 3 objectives"):
        read_reward_pairs(four, 3)
    with pytest.raises(DataError, match="chosen_score4"):
        read_reward_pairs(write_rewards_csv(tmp_path / "hh.csv", FOUR_PAIRS), 4)


# ---------------------------------------------------------------- MORLHF pieces

def test_reward_model_pairs_order_by_one_objective_and_drop_ties(tmp_path):
    pairs = read_reward_pairs(write_rewards_csv(tmp_path / "r.csv", FOUR_PAIRS), 3).pairs
    rows, stats = reward_model_pairs(pairs, 2)  # humour: 0 vs 0 tie, -1 < 0, 1.5 > 0.5, 0.2 > -0.6
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("rejected B", "chosen B"), ("chosen C", "rejected C"),
                                                            ("chosen D", "rejected D")]
    assert stats == {"pairs_out": 3, "swapped_order": 1, "ties_dropped": 1}


def test_cut_at_next_turn():
    from metaaligner.methods.common import cut_at_next_turn

    assert cut_at_next_turn("Sure, here it is.\n\nHuman: thanks\n\nAssistant: ok") == "Sure, here it is."
    assert cut_at_next_turn(" A\nAssistant: B") == "A"
    assert cut_at_next_turn("No turns: Human: stays") == "No turns: Human: stays"


def test_scalarised_reward_is_the_weighted_sum():
    assert scalarise([0.5, -1.0, 2.0], [0.2, 0.3, 0.5]) == pytest.approx(0.1 - 0.3 + 1.0)
    assert parse_weights(None, 3) == [1 / 3, 1 / 3, 1 / 3]
    assert parse_weights("0.7,0.3", 2) == [0.7, 0.3]
    with pytest.raises(MetaAlignerError, match="2 values for 3 reward models"):
        parse_weights("0.7,0.3", 3)


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory, tiny_llama_dir):
    """A tiny random LlamaForSequenceClassification (one score) with the embedded tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    config = LlamaConfig.from_pretrained(tiny_llama_dir, num_labels=1)
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def test_normalised_reward_models_scalarise_by_hand(tiny_rm_dir):
    from metaaligner.training.morlhf import NormalisedRewardModel, RewardModelSpec

    a = NormalisedRewardModel(RewardModelSpec("harm", str(tiny_rm_dir), mean=0.1, std=2.0))
    b = NormalisedRewardModel(RewardModelSpec("help", str(tiny_rm_dir), mean=-0.3, std=0.5))
    prompts, completions = [Q.format("x"), Q.format("a longer question here")], [" Sure.", " No, I will not."]
    raw = a.raw_scores(prompts, completions)
    assert raw == pytest.approx(b.raw_scores(prompts, completions))
    ra, rb = a(prompts, completions), b(prompts, completions)
    for i in range(2):
        assert ra[i] == pytest.approx((raw[i] - 0.1) / 2.0)
        assert rb[i] == pytest.approx((raw[i] + 0.3) / 0.5)
        assert scalarise([ra[i], rb[i]], [0.7, 0.3]) == pytest.approx(0.7 * (raw[i] - 0.1) / 2.0 + 0.3 * (raw[i] + 0.3) / 0.5)
    # Batched scoring equals one-at-a-time scoring (padding does not leak into the score).
    single = [a.raw_scores([p], [c])[0] for p, c in zip(prompts, completions)]
    assert raw == pytest.approx(single, abs=1e-5)
    # A turn the policy writes itself is not scored when cut_next_turn is on (the released cleaning).
    cut = NormalisedRewardModel(a.spec, model=a.model, tokenizer=a.tokenizer, cut_next_turn=True)
    assert cut.raw_scores(prompts[:1], [" Sure.\n\nHuman: and more?"]) == pytest.approx(raw[:1], abs=1e-6)
    # --normalize_rewards false: the released scalarisation of raw, unnormalised scores
    from metaaligner.training.morlhf import MORLHFTrainConfig

    plain = NormalisedRewardModel(a.spec, model=a.model, tokenizer=a.tokenizer, normalize=False)
    assert plain(prompts, completions) == pytest.approx(raw) and MORLHFTrainConfig().normalize_rewards is True


# ---------------------------------------------------------------- every baseline trains and infers

EVAL_ROWS = [{"query": Q.format("How do I bake bread"), "goldens": "Mix flour and water.",
              "generated_text": "Use an oven."},
             {"query": Q.format("Tell me a joke"), "goldens": "Why did the chicken cross the road?",
              "generated_text": "No."}]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_llama_dir, tiny_rm_dir):
    """data -> SFT -> CDPO (from SFT); reward models -> MORLHF (from SFT); inference for all three."""
    root = tmp_path_factory.mktemp("baselines")
    pairs = [(f"q{i}", f"good answer {i}", f"bad {i}", (0.1 * i, 1.0 - 0.2 * i, 0.5), (-0.1 * i, 0.2 * i, -0.5))
             for i in range(6)]
    rewards = write_rewards_csv(root / "rewards.csv", pairs)
    eval_csv = root / "policy.csv"
    with open(eval_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(EVAL_ROWS[0]))
        writer.writeheader()
        writer.writerows(EVAL_ROWS)
    tiny = str(tiny_llama_dir)
    run_script("baseline_models/sft/make_sft_data.py",
               ["--input", str(rewards), "--dataset", "hh-rlhf", "--output_dir", str(root / "sft_data"), "--seed", "0",
                "--val_size", "0"])
    run_script("baseline_models/sft/train_sft.py",
               ["--data_dir", str(root / "sft_data"), "--output_dir", str(root / "sft"), "--model_name_or_path", tiny,
                "--max_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                "--logging_steps", "1", "--max_length", "64", "--learning_rate", "1e-3", "--save_steps", "100"])
    run_script("baseline_models/cdpo/make_cdpo_data.py",
               ["--input", str(rewards), "--dataset", "hh-rlhf", "--output_dir", str(root / "cdpo_data"), "--seed", "0",
                "--target_rewards", "harmlessness=1.0,helpfulness=0.5,humour=0.0"])
    run_script("baseline_models/cdpo/train_cdpo.py",
               ["--data_dir", str(root / "cdpo_data"), "--output_dir", str(root / "cdpo"), "--model_name_or_path",
                str(root / "sft"), "--max_steps", "1", "--per_device_train_batch_size", "2", "--logging_steps", "1",
                "--max_length", "64", "--learning_rate", "1e-3", "--save_steps", "100"])
    run_script("baseline_models/morlhf/train_reward_models.py",
               ["--input", str(rewards), "--dataset", "hh-rlhf", "--output_dir", str(root / "rms"), "--base_model",
                str(tiny_rm_dir), "--objectives", "harmlessness,helpfulness", "--val_size", "0", "--max_steps", "1",
                "--per_device_train_batch_size", "2", "--logging_steps", "1", "--learning_rate", "1e-3",
                "--save_steps", "100"])
    run_script("baseline_models/morlhf/train_morlhf.py",
               ["--input", str(rewards), "--reward_models", str(root / "rms"), "--policy_model", str(root / "sft"),
                "--output_dir", str(root / "morlhf"), "--weights", "0.7,0.3", "--max_steps", "1",
                "--per_device_train_batch_size", "2", "--num_generations", "2", "--max_new_tokens", "6",
                "--logging_steps", "1", "--learning_rate", "1e-3", "--save_steps", "100"])
    outputs = {}
    for method, script in (("sft", "baseline_models/sft/sft_inference.py"),
                           ("cdpo", "baseline_models/cdpo/cdpo_inference.py"),
                           ("morlhf", "baseline_models/morlhf/morlhf_inference.py")):
        outputs[method] = run_script(script, ["--aligner_path", str(root / method), "--data_dir", str(eval_csv),
                                              "--model_output_path", str(root / f"out_{method}"),
                                              "--max_new_tokens", "4", "--batch_size", "2"])
    return root, outputs


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_baseline_trained_with_loss_and_targets(pipeline):
    root, _ = pipeline
    records = _log(root / "sft" / "train_log.jsonl")
    losses = [r["loss"] for r in records if "loss" in r and r.get("stage") == "sft_baseline"]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(r.get("device_hours") for r in records) and any(r.get("tokens_per_s") for r in records)
    meta = json.loads((root / "sft" / "baseline.json").read_text())
    assert meta["method"] == "sft" and meta["conditioning"] == "targets"
    assert meta["targets"] == {"harmlessness": 0.5, "helpfulness": 1.0, "humour": 0.5}
    assert (root / "sft" / "model.safetensors").exists()


def test_cdpo_baseline_trained_from_sft(pipeline):
    root, _ = pipeline
    records = _log(root / "cdpo" / "train_log.jsonl")
    assert any("loss" in r and r["stage"] == "cdpo" for r in records)
    assert any(k.startswith("rewards/") for r in records for k in r)  # DPO reward margins/accuracies logged
    meta = json.loads((root / "cdpo" / "baseline.json").read_text())
    assert meta["targets"] == {"harmlessness": 1.0, "helpfulness": 0.5, "humour": 0.0}
    assert meta["base_model"] == str(root / "sft")


def test_reward_models_and_morlhf_scalarisation_in_the_log(pipeline):
    root, _ = pipeline
    manifest = json.loads((root / "rms" / "reward_models.json").read_text())
    assert [e["objective"] for e in manifest["reward_models"]] == ["harmlessness", "helpfulness"]
    # harmlessness: 0.1i vs -0.1i ties at i=0; helpfulness: 1-0.2i vs 0.2i never ties (i integer 0..5).
    assert [e["ties_dropped"] for e in manifest["reward_models"]] == [1, 0]
    for entry in manifest["reward_models"]:
        stats = json.loads((Path(entry["path"]) / "reward_stats.json").read_text())
        assert stats["std"] > 0 and stats["n"] == 2 * entry["train_pairs"]
    assert any("loss" in r and r["stage"] == "reward_model:helpfulness" for r in _log(root / "rms" / "train_log.jsonl"))
    steps = [r for r in _log(root / "morlhf" / "train_log.jsonl") if "reward" in r and r["stage"] == "morlhf"]
    assert len(steps) == 1
    for r in steps:  # TRL's aggregated reward is our linear scalarisation of the logged per-objective means
        assert r["reward"] == pytest.approx(scalarise([r["rewards/harmlessness/mean"], r["rewards/helpfulness/mean"]],
                                                      [0.7, 0.3]), abs=1e-5)
        assert "kl" in r and r["completions/max_length"] <= 6
    meta = json.loads((root / "morlhf" / "baseline.json").read_text())
    assert meta["algorithm"] == "rloo" and meta["weights"] == [0.7, 0.3] and meta["conditioning"] is None


def test_inference_outputs_in_aligner_format(pipeline):
    from metaaligner.io import read_records

    _, outputs = pipeline
    for method, path in outputs.items():
        rows = read_records(path)
        assert list(rows[0]) == ["query", "goldens", "origin_responses", "aligned_responses", "aligner", "template",
                                 "aspects", "targets"], method
        assert rows[0]["template"] == "hh-rlhf" and rows[0]["aligner"].startswith(f"{method}:")
        assert rows[0]["targets"] == ("" if method == "morlhf" else
                                      {"sft": "harmlessness=0.50,helpfulness=1.00,humour=0.50",
                                       "cdpo": "harmlessness=1.00,helpfulness=0.50,humour=0.00"}[method])
        assert [r["query"] for r in rows] == [r["query"] for r in EVAL_ROWS]
        assert [r["goldens"] for r in rows] == [r["goldens"] for r in EVAL_ROWS]
        assert [r["origin_responses"] for r in rows] == [r["generated_text"] for r in EVAL_ROWS]


def test_conditioned_queries_sent_to_the_generator(tmp_path):
    from metaaligner.methods.common import write_metadata
    from metaaligner.methods.inference import BaselineInferenceConfig, run_inference

    class Recorder:
        def __init__(self):
            self.prompts = []

        def generate(self, prompts, params, progress=False):
            self.prompts += prompts
            return [f"out{i}" for i in range(len(prompts))]

    model = tmp_path / "model"
    write_metadata(model, {"method": "cdpo", "conditioning": "targets",
                           "targets": {"harmlessness": 1.0, "helpfulness": 0.5, "humour": 0.0}})
    src = tmp_path / "in.csv"
    with open(src, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["query", "goldens"])
        writer.writeheader()
        writer.writerows([{"query": "q1", "goldens": "g1"}, {"query": "", "goldens": "g2"}])
    rec = Recorder()
    out = run_inference(BaselineInferenceConfig(aligner_path=str(model), data_dir=str(src),
                                                model_output_path=str(tmp_path / "out"), target_rewards="humour=2"),
                        generator=rec)
    assert rec.prompts == ["<Harmlessness>: 1.00; <Helpfulness>: 0.50; <Humour>: 2.00 | q1"]
    assert out.name == "in.csv"
    with open(out, newline="", encoding="utf-8") as fh:
        got = [{k: r[k] for k in ("query", "goldens", "origin_responses", "aligned_responses", "targets")}
               for r in csv.DictReader(fh)]
    targets = "harmlessness=1.00,helpfulness=0.50,humour=2.00"
    assert got == [{"query": "q1", "goldens": "g1", "origin_responses": "", "aligned_responses": "out0", "targets": targets},
                   {"query": "", "goldens": "g2", "origin_responses": "", "aligned_responses": "", "targets": targets}]
    rec2 = Recorder()
    run_inference(BaselineInferenceConfig(aligner_path=str(model), data_dir=str(src), conditioning="none",
                                          model_output_path=str(tmp_path / "out2")), generator=rec2)
    assert rec2.prompts == ["q1"]


@pytest.mark.skipif(not (REPO / "evaluation" / "judge.py").exists(), reason="evaluation/judge.py not built yet")
def test_inference_output_feeds_judge_dry_run(pipeline, tmp_path):
    _, outputs = pipeline
    for method, path in outputs.items():
        result = subprocess.run(
            [sys.executable, str(REPO / "evaluation" / "judge.py"), "--input", str(path), "--target",
             "aligned_responses", "--aspects", "harmlessness,helpfulness",  # dataset from the template column
             "--output_dir", str(tmp_path / method), "--dry_run"],
            capture_output=True, text=True, timeout=DEADLINE_S, cwd=REPO)
        assert result.returncode == 0, (method, result.stdout[-2000:], result.stderr[-2000:])
        calls = tmp_path / method / "dry_run.calls.jsonl"
        assert len(calls.read_text().splitlines()) == 4  # 2 rows x 2 objectives planned, none made


def test_inference_resume_generates_only_missing_rows(tmp_path):
    from metaaligner.methods.inference import BaselineInferenceConfig, run_inference

    class Flaky:
        def __init__(self, fail_after: int | None):
            self.prompts, self.fail_after = [], fail_after

        def generate(self, prompts, params, progress=False):
            if self.fail_after is not None and len(self.prompts) >= self.fail_after:
                raise KeyboardInterrupt
            self.prompts += prompts
            return [p.upper() for p in prompts]

    src = tmp_path / "in.csv"
    with open(src, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["query", "goldens"])
        writer.writeheader()
        writer.writerows([{"query": f"q{i}", "goldens": f"g{i}"} for i in range(6)])
    config = BaselineInferenceConfig(data_dir=str(src), model_output_path=str(tmp_path / "out"), conditioning="none",
                                     batch_size=1)  # chunks of 4 rows
    with pytest.raises(KeyboardInterrupt):
        run_inference(config, generator=Flaky(fail_after=4))
    assert not (tmp_path / "out" / "in.csv").exists()
    config.resume = True
    second = Flaky(fail_after=None)
    out = run_inference(config, generator=second)
    assert second.prompts == ["q4", "q5"]
    with open(out, newline="", encoding="utf-8") as fh:
        assert [r["aligned_responses"] for r in csv.DictReader(fh)] == [f"Q{i}" for i in range(6)]
