"""The offline judge (metaaligner/judge/probe.py): interval, split, probe fit, features, round trip."""
from __future__ import annotations

import sys

import pytest

from metaaligner.errors import MetaAlignerError
from metaaligner.judge.probe import (
    ProbeJudge,
    agreement,
    encode_pair,
    extract_features,
    fit_logistic,
    split_by_prompt,
    wilson_interval,
)


def test_wilson_interval_matches_hand_computed_values():
    # 8/10: centre (0.8 + 1.96^2/20) / (1 + 1.96^2/10) = 0.71674, half 0.22657
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and high == pytest.approx(0.4345, abs=1e-4)


def test_agreement_counts_ties_half():
    out = agreement([1.0, 2.0, 0.5, 3.0], [0.0, 2.0, 1.0, 1.0])
    assert out["pairs"] == 4 and out["agreement"] == pytest.approx(2.5 / 4)
    assert out["ci95"] == list(wilson_interval(2.5, 4))


def test_split_by_prompt_keeps_prompts_together_and_is_seeded():
    prompts = [f"p{i % 10}" for i in range(40)]
    train, test = split_by_prompt(prompts, 0.2, seed=3)
    assert sorted(train + test) == list(range(40))
    assert len({prompts[i] for i in test}) == 2 and not {prompts[i] for i in test} & {prompts[i] for i in train}
    assert split_by_prompt(prompts, 0.2, seed=3) == (train, test)
    assert split_by_prompt(prompts, 0.2, seed=4) != (train, test)


def test_fit_logistic_recovers_the_preference_direction():
    import torch

    torch.manual_seed(0)
    diffs = torch.randn(200, 5)
    diffs[:, 2] = diffs[:, 2].abs() + 0.1  # chosen - rejected is positive along feature 2 only
    w, scale = fit_logistic(diffs, l2=1e-3)
    assert int(w.abs().argmax()) == 2 and w[2] > 0
    held = torch.randn(50, 5)
    held[:, 2] = held[:, 2].abs() + 0.1
    assert float(((held / scale) @ w > 0).float().mean()) > 0.9


def test_encode_pair_keeps_the_response_and_the_prompt_tail(tiny_llama_dir):
    from metaaligner.models import load_tokenizer

    tok = load_tokenizer(str(tiny_llama_dir), padding_side="right")
    ids, n_resp = encode_pair(tok, "one two three four five six seven eight", "yes indeed", 6, 4)
    resp = tok(" yes indeed", add_special_tokens=False)["input_ids"]
    assert len(ids) == 6 and n_resp == len(resp) and ids[-n_resp:] == resp
    ctx = tok("one two three four five six seven eight", add_special_tokens=False)["input_ids"]
    assert ids[:-n_resp] == ctx[len(ctx) - (6 - n_resp):]


def test_features_are_response_means_and_do_not_depend_on_batching(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from metaaligner.models import load_tokenizer

    tok = load_tokenizer(str(tiny_llama_dir), padding_side="right")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    prompts = ["\n\nHuman: hi\n\nAssistant:", "\n\nHuman: how do I boil an egg?\n\nAssistant:"]
    responses = ["Hello there, how can I help?", "Put it in boiling water for nine minutes."]
    batched = extract_features(model, tok, prompts, responses, [1], 64, 32, batch_size=2)
    for i in range(2):
        ids, n = encode_pair(tok, prompts[i], responses[i], 64, 32)
        with torch.no_grad():
            hidden = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1]
        assert torch.allclose(batched[i, 0], hidden[0, -n:].mean(0), atol=1e-5)


def test_probe_round_trip_scores_and_compare(tiny_llama_dir, tmp_path):
    import torch

    info = {"model": str(tiny_llama_dir), "layer": 1, "max_tokens": 64, "max_response_tokens": 32,
            "heldout": {"pairs": 10, "agreement": 0.7, "ci95": [0.4, 0.9]}, "heldout_rows": [1, 2]}
    torch.manual_seed(1)
    judge = ProbeJudge(torch.randn(16), torch.rand(16) + 0.5, info)
    judge.save(tmp_path / "judge")
    loaded = ProbeJudge.load(tmp_path / "judge")
    assert loaded.info == info and torch.equal(loaded.weights, judge.weights)
    prompts = ["\n\nHuman: hi\n\nAssistant:"] * 2
    a, b = ["Hello!", "Go away."], ["Hello!", "Hello, how can I help you today?"]
    s = loaded.score(prompts + prompts, a + b)
    assert s[0] == pytest.approx(s[2])
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    feats = extract_features(full, loaded.tokenizer, prompts, b, [1], 64, 32)  # same layer, untruncated model
    assert s[2:] == pytest.approx(((feats[:, 0] / loaded.scale) @ loaded.weights).tolist(), abs=1e-4)
    verdicts = loaded.compare(prompts, a, b)
    assert verdicts[0] == 0 and verdicts[1] == (1 if s[1] > s[3] else 2)
    assert "70.0% (95% CI 40.0%-90.0%) on 10 held-out" in loaded.caption


def test_missing_probe_is_a_clear_error(tmp_path):
    with pytest.raises(MetaAlignerError, match="no offline judge"):
        ProbeJudge.load(tmp_path)


def test_shipped_probe_is_small_and_measured(repo_root):
    from metaaligner.judge.probe import PROBE_DIR

    if not (PROBE_DIR / "probe.json").exists():
        pytest.skip("no shipped offline judge")
    judge = ProbeJudge.load()
    assert (PROBE_DIR / "probe.safetensors").stat().st_size < 100_000
    held = judge.info["heldout"]
    assert held["pairs"] >= 400 and held["ci95"][0] < held["agreement"] < held["ci95"][1]
    assert len(judge.info["heldout_rows"]) == held["pairs"]


def _tiny_probe(tiny_llama_dir, folder):
    import torch

    info = {"model": str(tiny_llama_dir), "layer": 1, "max_tokens": 64, "max_response_tokens": 32,
            "heldout": {"pairs": 10, "agreement": 0.7, "ci95": [0.4, 0.9]}, "heldout_rows": []}
    torch.manual_seed(2)
    return ProbeJudge(torch.randn(16), torch.ones(16), info).save(folder)


def test_probe_prompt_set_round_trips_its_fields():
    from metaaligner.judge.probe import PROMPTS_FILE, read_fields
    from metaaligner.judge.registry import get_prompt

    prompt = get_prompt(str(PROMPTS_FILE), "pairwise")
    text = prompt.render(query="Q: a, b {x}", output1="one\n\ntwo", output2="", aspects="Harmlessness: h")
    assert read_fields(text) == {"query": "Q: a, b {x}", "output1": "one\n\ntwo", "output2": "", "aspects": "Harmlessness: h"}
    assert prompt.parser.parse("[[2]]") == 2 and prompt.parser.parse("2") is None
    with pytest.raises(MetaAlignerError, match="needs its own prompt set"):
        read_fields("Which response is better?")


def test_probe_engine_replies_what_the_probe_says(tiny_llama_dir, tmp_path):
    from metaaligner.judge.probe import PROMPTS_FILE, ProbeEngine
    from metaaligner.judge.registry import get_prompt

    engine = ProbeEngine(_tiny_probe(tiny_llama_dir, tmp_path / "p"))
    pair = get_prompt(str(PROMPTS_FILE), "pairwise")
    q, a, b = "\n\nHuman: hi\n\nAssistant:", "Hello!", "Go away, I will not help."
    expected = engine.judge.compare([q], [a], [b])[0]
    assert expected in (1, 2)
    reply = engine.complete(pair.messages(query=q, output1=a, output2=b, aspects="x")).text
    assert reply == f"[[{expected}]]"
    assert engine.complete(pair.messages(query=q, output1=a, output2=a + " ", aspects="x")).text == "[[0]]"
    rating = get_prompt(str(PROMPTS_FILE), "rating")
    score = engine.judge.score([q], [a])[0]
    import math
    assert engine.complete(rating.messages(query=q, output=a, aspects="x")).text == f"[[{round(10 / (1 + math.exp(-score)))}]]"


def test_judge_outputs_with_the_probe_engine(tiny_llama_dir, tmp_path):
    from metaaligner.io import write_csv
    from metaaligner.judge import judge_outputs
    from metaaligner.judge.probe import PROMPTS_FILE, ProbeEngine

    rows = [{"query": "\n\nHuman: hi\n\nAssistant:", "goldens": "Hello! How can I help?", "origin_responses": "Hi.",
             "aligned_responses": "Hello! How can I help?", "aligner": "x", "template": "hh-rlhf", "aspects": "harmlessness"}]
    write_csv(tmp_path / "in" / "P.csv", rows, list(rows[0]))
    engine = ProbeEngine(_tiny_probe(tiny_llama_dir, tmp_path / "p"))
    result = judge_outputs(tmp_path / "in", tmp_path / "out", targets=["aligned_responses"], aspects=["harmlessness"],
                           dataset="hh-rlhf", judge_prompt=str(PROMPTS_FILE), judge_model="probe:test",
                           engine=engine, progress=False)
    summary = result.summaries[0]
    assert (summary["n"], summary["ties"], summary["invalid"]) == (1, 1, 0)  # same text as the golden: a tie
    run = (tmp_path / "out" / "run.json").read_text()
    assert "70.0% (95% CI 40.0%-90.0%)" in run


# ----------------------------------------------------------------------------- reproducing the probe

def _train_script():
    import importlib.util

    from metaaligner.judge.probe import REPO_ROOT

    spec = importlib.util.spec_from_file_location("train_offline_judge", REPO_ROOT / "training/train_offline_judge.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _shipped_probe():
    from metaaligner.judge.probe import PROBE_DIR

    if not (PROBE_DIR / "probe.json").exists():
        pytest.skip("no shipped offline judge")
    return ProbeJudge.load()


def test_shipped_probe_split_is_the_scripts_split():
    from metaaligner.judge.probe import resolve_input

    judge, script = _shipped_probe(), _train_script()
    info = judge.info
    rows = script.load_pairs(resolve_input(info["input"]))
    train, held = script.split_rows(rows, info["test_fraction"], info["max_train_pairs"], info["seed"])
    assert train == info["train_rows"] and held == info["heldout_rows"]
    assert len(train) == info["train_pairs"] == 900 and len(held) == info["heldout"]["pairs"] == 460
    prompts = {r.row_id: r.prompt for r in rows}
    assert not {prompts[i] for i in train} & {prompts[i] for i in held}  # no prompt on both sides


def test_shipped_probe_weights_refit_from_its_stored_features():
    """The final fit and the held-out agreement, from the features the script stored beside the probe."""
    import torch
    from safetensors.torch import load_file

    from metaaligner.judge.probe import PROBE_DIR, resolve_input

    judge, script = _shipped_probe(), _train_script()
    fit = load_file(str(PROBE_DIR / script.FIT_FILE))
    assert fit["train_diffs"].shape == (900, 576) and fit["heldout_diffs"].shape == (460, 576)
    w, scale = fit_logistic(fit["train_diffs"], judge.info["l2"])
    assert torch.allclose(w, judge.weights, rtol=1e-4, atol=1e-6) and torch.allclose(scale, judge.scale)
    margin = (fit["heldout_diffs"] / scale) @ w
    assert float((margin > 0).float().mean()) == pytest.approx(judge.info["heldout"]["agreement"], abs=1e-6)
    rows = {r.row_id: r.prompt for r in script.load_pairs(resolve_input(judge.info["input"]))}
    prompts = [rows[i] for i in judge.info["train_rows"]]
    chosen = f"layer{judge.info['layer']}_l2{judge.info['l2']:g}"
    cv = script.cross_validate(fit["train_diffs"], prompts, judge.info["l2"], 5, judge.info["seed"])
    assert cv == pytest.approx(judge.info["cv_agreement"][chosen]) and max(judge.info["cv_agreement"].values()) == cv


@pytest.mark.slow
def test_shipped_probe_stored_features_are_the_models_on_a_slice():
    """Recompute the features of a few train and held-out rows with the embedded SmolLM2."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from metaaligner.judge.probe import PROBE_DIR, resolve_input
    from metaaligner.models import load_tokenizer, resolve_model_path

    judge, script = _shipped_probe(), _train_script()
    info = judge.info
    fit = load_file(str(PROBE_DIR / script.FIT_FILE))
    rows = {r.row_id: r for r in script.load_pairs(resolve_input(info["input"]))}
    path = resolve_model_path(None)
    tok = load_tokenizer(path, padding_side="right")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.model.layers = model.model.layers[: info["layer"] + 1]
    for name, ids, picks in (("train_diffs", info["train_rows"], [0, 450, 899]), ("heldout_diffs", info["heldout_rows"], [7])):
        pairs = [rows[ids[k]] for k in picks]
        feats = extract_features(model, tok, [p.prompt for p in pairs] * 2,
                                 [p.chosen_response for p in pairs] + [p.rejected_response for p in pairs],
                                 [info["layer"]], info["max_tokens"], info["max_response_tokens"])[:, 0]
        assert torch.allclose(feats[: len(pairs)] - feats[len(pairs):], fit[name][picks], atol=1e-4), name


def _tiny_pairs(path, n=24):
    """``n`` HH-RLHF transcripts: 8 prompts, 3 pairs each (chosen and rejected differ)."""
    from metaaligner.io import write_jsonl

    rows = []
    for i in range(n):
        prompt = f"\n\nHuman: question number {i % 8}, please?\n\nAssistant:"
        rows.append({"chosen": f"{prompt} A kind helpful answer {i}.", "rejected": f"{prompt} Go away {i}!"})
    write_jsonl(path, rows)
    return path


def test_training_script_reproduces_its_probe_from_scratch(tiny_llama_dir, tmp_path):
    """Two runs (no shared cache) give the same weights, and probe.json names the rows each side used."""
    import torch

    script = _train_script()
    data = _tiny_pairs(tmp_path / "pairs.jsonl")
    infos, judges = [], []
    for run in ("a", "b"):
        cfg = script.JudgeConfig(output_dir=str(tmp_path / run), input=str(data), cache=str(tmp_path / f"{run}.pt"),
                                 layers="1,2", l2="0.01,0.1", max_train_pairs=12, test_fraction=0.25,
                                 max_tokens=32, max_response_tokens=16, model=str(tiny_llama_dir), seed=3)
        infos.append(script.main(cfg))
        judges.append(ProbeJudge.load(tmp_path / run))
    assert torch.allclose(judges[0].weights, judges[1].weights) and infos[0] == infos[1]
    info = infos[0]
    assert len(info["train_rows"]) == 12 and len(info["heldout_rows"]) == 6  # 2 of 8 prompts x 3 pairs
    assert not set(info["train_rows"]) & set(info["heldout_rows"])
    held_prompts = {i % 8 for i in info["heldout_rows"]}
    assert len(held_prompts) == 2 and not {i % 8 for i in info["train_rows"]} & held_prompts
    from safetensors.torch import load_file

    fit = load_file(str(tmp_path / "a" / script.FIT_FILE))
    w, _ = fit_logistic(fit["train_diffs"], info["l2"])
    assert torch.allclose(w, judges[0].weights)


def test_training_prompts_are_the_train_rows_prompts(tmp_path):
    import torch

    data = _tiny_pairs(tmp_path / "pairs.jsonl")
    info = {"input": str(data), "train_rows": [0, 9], "heldout_rows": [2, 10, 18], "layer": 1}
    judge = ProbeJudge(torch.ones(4), torch.ones(4), info)
    assert judge.is_training_prompt("\n\nHuman: question number 0, please?\n\nAssistant:")
    assert judge.is_training_prompt("  Human: question number 1,   please? Assistant: ")  # whitespace-blind
    assert not judge.is_training_prompt("\n\nHuman: question number 2, please?\n\nAssistant:")  # held out
    assert not judge.is_training_prompt("\n\nHuman: question number 3, please?\n\nAssistant:")  # never used
    assert len(judge.training_prompts()) == 2
    older = ProbeJudge(torch.ones(4), torch.ones(4), {"input": str(data), "heldout_rows": [2, 10, 18]})
    assert len(older.training_prompts()) == 7  # no train_rows: every prompt not held out counts
    assert ProbeJudge(torch.ones(4), torch.ones(4), {"heldout_rows": []}).training_prompts() == set()


def test_shipped_probe_knows_which_claude3_queries_it_was_trained_on(repo_root):
    from metaaligner.io import read_records

    judge = _shipped_probe()
    queries = [r["query"] for r in read_records(repo_root / "samples/HH-RLHF_model_output/Claude-3.csv.gz")]
    assert sum(map(judge.is_training_prompt, queries)) == 491 and len(queries) == 1200
