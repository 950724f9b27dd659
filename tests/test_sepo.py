"""SePO: token rewards (with the position shift), selection, the selective loss, the trainer, the
oracle's DPO stage and the three scripts, on tiny random LLaMAs sharing the embedded tokenizer."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from metaaligner.errors import DataError, MetaAlignerError  # noqa: E402
from metaaligner.methods import sepo  # noqa: E402

# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from metaaligner.models import load_tokenizer

    return load_tokenizer(str(tiny_llama_dir), padding_side="right")


@pytest.fixture(scope="module")
def oracle_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """A second tiny LLaMA (other seed) with the same tokenizer: the 'oracle' of the tests."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-oracle")
    config = LlamaConfig.from_pretrained(tiny_llama_dir)
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tiny_llama_dir, oracle_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    oracle = AutoModelForCausalLM.from_pretrained(oracle_dir, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    return oracle, reference, tokenizer


PAIRS = [
    {"prompt": "\n\nHuman: How do I bake bread?\n\nAssistant:", "chosen": " Mix flour, water, yeast and salt, "
     "knead, let it rise, then bake it hot.", "rejected": " No idea."},
    {"prompt": "\n\nHuman: Hi\n\nAssistant:", "chosen": " Hello! How can I help you today?",
     "rejected": " What do you want now, seriously?"},
    {"prompt": "\n\nHuman: Is the sky blue?\n\nAssistant:", "chosen": " Yes, because air scatters blue light "
     "more than red light.", "rejected": " Sometimes it is green, I think, on Tuesdays."},
]


def _hand_logprobs(model, ids: list[int]):
    """log_softmax of the logits of one unpadded forward, row t holding the distribution of token t + 1."""
    return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)


def _hand_logprob(table, ids: list[int], position: int) -> float:
    """log pi(ids[position] | ids[:position]): read from the logits at position - 1 (the shift)."""
    return table[position - 1, ids[position]].item()


# ---------------------------------------------------------------- token rewards

def test_token_rewards_equal_hand_computed_logprob_differences(models):
    oracle, reference, tok = models
    prompt = tok("\n\nHuman: Hi\n\nAssistant:")["input_ids"]
    response = tok(" Hello there, friend.")["input_ids"] + [tok.eos_token_id]
    # batched with a longer and a shorter sequence, so padding and sorting are exercised
    sequences = [(tok("a b c d e f g h i j k l")["input_ids"], tok(" m n o p q")["input_ids"]),
                 (prompt, response), (tok("x")["input_ids"], tok(" y")["input_ids"])]
    rewards = sepo.token_rewards(oracle, reference, sequences, tok.pad_token_id, "cpu", batch_size=2)
    assert [len(r) for r in rewards] == [5, len(response), 1]
    ids = prompt + response
    with torch.no_grad():
        table_o, table_r = _hand_logprobs(oracle, ids), _hand_logprobs(reference, ids)
    positions = [len(prompt) + j for j in range(len(response))]
    expected = [_hand_logprob(table_o, ids, p) - _hand_logprob(table_r, ids, p) for p in positions]
    # without the shift (the logits at the token's own position) the numbers differ
    unshifted = [(table_o[p, ids[p]] - table_r[p, ids[p]]).item() for p in positions]
    assert rewards[1] == pytest.approx(expected, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(rewards[1], unshifted)) > 1e-3
    # batch size 1 gives the same numbers as the padded batches
    single = sepo.token_rewards(oracle, reference, sequences, tok.pad_token_id, "cpu", batch_size=1)
    for a, b in zip(rewards, single):
        assert a == pytest.approx(b, abs=1e-5)


def test_tokenize_pair_matches_trl_and_appends_eos(tokenizer):
    p, c, r = sepo.tokenize_pair(tokenizer, "Q: hi\nA:", " yes", " no")
    assert p == tokenizer("Q: hi\nA:")["input_ids"]
    assert c[-1] == tokenizer.eos_token_id and r[-1] == tokenizer.eos_token_id
    assert p + c == tokenizer("Q: hi\nA: yes" + tokenizer.eos_token)["input_ids"]
    assert sepo.truncate_response(3, [7, 8, 9, 10], 5) == [7, 8]
    assert sepo.truncate_response(6, [7, 8], 5) == []


def test_tokenizer_mismatch_is_refused(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    other.add_tokens(["<sepo_extra_token>"])
    sepo.check_same_tokenizer(tokenizer, tokenizer, "oracle", "reference")  # same: fine
    with pytest.raises(MetaAlignerError, match=r"tokenizer mismatch: oracle .* and policy .* must share one tokenizer"):
        sepo.check_same_tokenizer(tokenizer, other, "oracle", "policy")


# ---------------------------------------------------------------- selection

REWARDS = [0.5, -1.0, 2.0, 0.1, -0.3, 1.5, 0.0, -2.0, 0.7, 0.2]


def test_selection_exact_indices():
    assert sepo.selection_count(10, 0.3) == 3
    assert sepo.selection_count(100, 0.29) == 29  # 0.29 * 100 = 28.999999999999996 in floats
    assert sepo.selection_count(7, 0.3) == 2
    assert sepo.select_top(REWARDS, 0.3) == [2, 5, 8]       # 2.0, 1.5, 0.7
    assert sepo.select_bottom(REWARDS, 0.3) == [1, 4, 7]    # -1.0, -0.3, -2.0
    assert sepo.select_top(REWARDS, 0.5) == [0, 2, 5, 8, 9]
    assert sepo.select_bottom([1.0, 1.0, 1.0, 0.0], 0.5) == [0, 3]  # ties: earlier position first
    assert sepo.select_top(REWARDS, 1.0) == list(range(10))
    assert sepo.select_bottom(REWARDS, 1.0) == list(range(10))
    with pytest.raises(MetaAlignerError, match="--ratio must be in"):
        sepo.check_ratio(0.0)


def test_zero_token_rows_are_skipped_and_counted():
    rows = [{"row_id": 0, "chosen_token_rewards": REWARDS, "rejected_token_rewards": REWARDS},
            {"row_id": 1, "chosen_token_rewards": [0.1, 0.2, 0.3], "rejected_token_rewards": REWARDS},
            {"row_id": 2, "skip_reason": "empty response"}]
    result = sepo.apply_selection(rows, 0.3)  # floor(0.3 * 3) = 0 for row 1
    assert [r["row_id"] for r in result.rows] == [0]
    assert result.rows[0]["chosen_selected"] == [2, 5, 8] and result.rows[0]["rejected_selected"] == [1, 4, 7]
    assert [r["row_id"] for r in result.skipped] == [1, 2]
    assert result.skip_reasons == {sepo.ZERO_TOKENS: 1, "empty response": 1}
    assert (result.selected_tokens, result.total_tokens) == (6, 33)  # skipped rows count as scored
    assert sepo.apply_selection(rows, 1.0).skip_reasons == {"empty response": 1}


# ---------------------------------------------------------------- the selection file, sharded and resumed

def _read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_sharded_scoring_merges_in_input_order_and_resumes(models, tmp_path):
    pairs = PAIRS + [{"prompt": "Q?", "chosen": " ok", "rejected": " no"}]
    single = tmp_path / "single.jsonl"
    sepo.score_shard(pairs, "o", "r", single, batch_size=3, models=models, progress=False)
    res_single = sepo.merge_selection(pairs, single, 0.3)
    sharded = tmp_path / "sharded.jsonl"
    for rank in (1, 0):  # two processes, any finishing order
        sepo.score_shard(pairs, "o", "r", sharded, rank=rank, world=2, batch_size=2, models=models, progress=False)
    res_sharded = sepo.merge_selection(pairs, sharded, 0.3)
    a, b = _read_jsonl(single), _read_jsonl(sharded)
    assert [r["row_id"] for r in a] == [r["row_id"] for r in b] == [0, 1, 2]
    for x, y in zip(a, b):
        assert x["chosen_selected"] == y["chosen_selected"] and x["rejected_selected"] == y["rejected_selected"]
        assert x["chosen_token_rewards"] == pytest.approx(y["chosen_token_rewards"], abs=1e-5)
    assert set(a[0]) == {"prompt", "chosen", "rejected", "row_id", *sepo.OUTPUT_FIELDS}
    assert a[0]["prompt"] == PAIRS[0]["prompt"] and len(a[0]["chosen_token_rewards"]) > 10
    # the 4th pair's responses are 2 tokens (" ok" + EOS): floor(0.3 * 2) = 0 -> skipped, counted, rewards kept
    skipped = _read_jsonl(tmp_path / "single.skipped.jsonl")
    assert [(r["row_id"], r["skip_reason"], len(r["chosen_token_rewards"])) for r in skipped] == [(3, sepo.ZERO_TOKENS, 2)]
    meta = json.loads((tmp_path / "single.meta.json").read_text())
    assert meta["rows_out"] == 3 and meta["skipped"] == {sepo.ZERO_TOKENS: 1}
    assert res_single.selected_tokens == res_sharded.selected_tokens
    assert not list(tmp_path.glob("*.partial.jsonl"))
    # resume: a partial holding row 1 only (plus a line cut by a kill) -> the other rows are scored, same output
    resumed = tmp_path / "resumed.jsonl"
    partial = tmp_path / "resumed.jsonl.shard0of1.partial.jsonl"
    line = next(json.dumps({"row_id": 1, "chosen_token_rewards": r["chosen_token_rewards"],
                            "rejected_token_rewards": r["rejected_token_rewards"]}) for r in a if r["row_id"] == 1)
    partial.write_text(line + "\n" + '{"row_id": 2, "chosen_tok')
    stats = sepo.score_shard(pairs, "o", "r", resumed, batch_size=4, resume=True, models=models, progress=False)
    assert stats.rows_in == 3
    sepo.merge_selection(pairs, resumed, 0.3)
    assert [r["chosen_selected"] for r in _read_jsonl(resumed)] == [r["chosen_selected"] for r in a]
    # re-selecting another k from the stored rewards, skipped rows included, without re-scoring
    rows, _, result = sepo.read_selection(single, ratio=1.0)
    assert [r["row_id"] for r in rows] == [0, 1, 2, 3] and result.selected_share == 1.0


# ---------------------------------------------------------------- the loss and the trainer

def test_sepo_loss_equals_formula():
    from metaaligner.training.sepo_trainer import masked_mean_logps, sepo_loss

    chosen, rejected = torch.tensor([-1.0, -0.5]), torch.tensor([-2.0, -0.25])
    loss, margin = sepo_loss(chosen, rejected, gamma=2.0)
    assert margin.tolist() == [1.0, -0.25]
    assert loss.tolist() == pytest.approx([math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(0.5))], abs=1e-6)
    logps = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-0.5, -0.5, -1.5, 0.0]])
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]])
    assert masked_mean_logps(logps, mask).tolist() == [-2.0, 0.0]


def _trainer(tiny_llama_dir, tokenizer, rows, tmp_path, **overrides):
    from transformers import AutoModelForCausalLM

    from metaaligner.training.sepo_trainer import SePOTrainConfig, build_trainer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    config = SePOTrainConfig(**{"max_length": 64, "per_device_train_batch_size": 2, "logging_steps": 1,
                                "save_steps": 10_000, "warmup_ratio": 0.0, "lr_scheduler_type": "constant",
                                **overrides})
    return build_trainer(model, tokenizer, rows, config, str(tmp_path / "out"))


def _rows(tokenizer):
    p, c, r = sepo.tokenize_pair(tokenizer, PAIRS[1]["prompt"], PAIRS[1]["chosen"], PAIRS[1]["rejected"])
    q, c2, r2 = sepo.tokenize_pair(tokenizer, PAIRS[2]["prompt"], PAIRS[2]["chosen"], PAIRS[2]["rejected"])
    return [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "chosen_selected": [0, 2, 3],
             "rejected_selected": [1]},
            {"prompt_ids": q, "chosen_ids": c2, "rejected_ids": r2, "chosen_selected": [1, 4],
             "rejected_selected": [0, 2, 5]}]


def test_trainer_loss_equals_formula_then_training_raises_the_margin(tiny_llama_dir, tokenizer, tmp_path):
    rows = _rows(tokenizer)
    trainer = _trainer(tiny_llama_dir, tokenizer, rows * 3, tmp_path, gamma=1.5, learning_rate=1e-2, max_steps=3)
    batch = trainer.data_collator(rows)
    # the selection mask marks exactly prompt_len + selected positions, chosen rows first
    assert batch["selection_mask"][0].nonzero().flatten().tolist() == [len(rows[0]["prompt_ids"]) + j for j in (0, 2, 3)]
    assert batch["selection_mask"][3].nonzero().flatten().tolist() == [len(rows[1]["prompt_ids"]) + j for j in (0, 2, 5)]
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()

        def mean_selected(prompt_ids, response_ids, selected):
            ids = prompt_ids + response_ids
            table = _hand_logprobs(model, ids)
            return sum(_hand_logprob(table, ids, len(prompt_ids) + j) for j in selected) / len(selected)

        m_w = [mean_selected(r["prompt_ids"], r["chosen_ids"], r["chosen_selected"]) for r in rows]
        m_l = [mean_selected(r["prompt_ids"], r["rejected_ids"], r["rejected_selected"]) for r in rows]
    expected = sum(-math.log(1 / (1 + math.exp(-1.5 * (w - lo)))) for w, lo in zip(m_w, m_l)) / 2
    assert loss == pytest.approx(expected, abs=1e-5)

    # a few steps on the repeated tiny batch raise the selected-token margin
    def margin():
        with torch.no_grad():
            (w, lo), _ = trainer.selected_mean_logps(trainer.model.eval(), batch)
        return (w - lo).mean().item()

    before = margin()
    assert before == pytest.approx(sum(w - lo for w, lo in zip(m_w, m_l)) / 2, abs=1e-5)
    trainer.train()
    assert margin() > before + 0.5
    logged = [h for h in trainer.state.log_history if "margin" in h]
    assert len(logged) == 3 and all("selected_tokens" in h and "loss" in h for h in logged)


# ---------------------------------------------------------------- the DPO oracle and the scripts end to end

def test_dpo_oracle_trains_then_scripts_select_train_and_infer(tiny_llama_dir, tokenizer, tmp_path, capsys):
    from safetensors.torch import load_file

    pairs_path = tmp_path / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS * 2))
    # 1. oracle: DPO a few steps from the tiny model (its own reference, reloaded by TRL from the path)
    from baseline_models.sepo import train_oracle

    oracle_dir = tmp_path / "oracle"
    args = train_oracle.parse(train_oracle.make_parser(), [
        "--input", str(pairs_path), "--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(oracle_dir),
        "--max_steps", "2", "--learning_rate", "1e-2", "--per_device_train_batch_size", "2", "--logging_steps", "1",
        "--warmup_ratio", "0", "--max_length", "64"])
    train_oracle.main(*args)
    log = _read_jsonl(oracle_dir / "train_log.jsonl")
    assert [r["step"] for r in log if "loss" in r] == [1, 2] and all(r["stage"] == "sepo_oracle" for r in log)
    before, after = load_file(tiny_llama_dir / "model.safetensors"), load_file(oracle_dir / "model.safetensors")
    assert all(not torch.equal(before[k], after[k]) for k in before if "layers.0.self_attn.q_proj" in k)

    # 2. selection with the trained oracle against its reference
    from baseline_models.sepo import select_tokens

    selected = tmp_path / "selected.jsonl"
    select_tokens.main(*select_tokens.parse(select_tokens.make_parser(), [
        "--input", str(pairs_path), "--oracle", str(oracle_dir), "--reference", str(tiny_llama_dir),
        "--ratio", "0.3", "--output", str(selected), "--batch_size", "4", "--max_length", "64", "--limit", "3"]))
    rows = _read_jsonl(selected)
    assert [r["row_id"] for r in rows] == [0, 1, 2]
    for r in rows:
        n = len(r["chosen_token_rewards"])
        assert len(r["chosen_selected"]) == math.floor(0.3 * n)
        top = sorted(range(n), key=lambda j: -r["chosen_token_rewards"][j])[:len(r["chosen_selected"])]
        assert sorted(top) == r["chosen_selected"]
    assert "select_tokens: 3 pairs in, 3 rows kept, 0 skipped" in capsys.readouterr().out

    # 3. policy: SePO a few steps with another k re-selected from the stored rewards
    from baseline_models.sepo import train_policy

    policy_dir = tmp_path / "policy"
    train_policy.main(*train_policy.parse(train_policy.make_parser(), [
        "--input", str(selected), "--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(policy_dir),
        "--ratio", "0.5", "--max_steps", "2", "--learning_rate", "1e-3", "--per_device_train_batch_size", "2",
        "--logging_steps", "1", "--max_length", "64"]))
    out = capsys.readouterr().out
    assert "re-selected at ratio 0.5: 3 rows kept, 0 skipped" in out
    log = _read_jsonl(policy_dir / "train_log.jsonl")
    assert [r["step"] for r in log if "margin" in r] == [1, 2] and log[0]["stage"] == "sepo"

    # 4. inference in the aligner output format
    from baseline_models.sepo import sepo_inference

    queries = tmp_path / "queries.csv"
    queries.write_text('query,goldens,generated_text\n"\n\nHuman: Hi\n\nAssistant:",Hello,Hey\n'
                       '"\n\nHuman: Bye\n\nAssistant:",Goodbye,See you\n')
    outputs = tmp_path / "outputs.csv"
    sepo_inference.main(*sepo_inference.parse(sepo_inference.make_parser(), [
        "--input", str(queries), "--model", str(policy_dir), "--output", str(outputs), "--max_new_tokens", "3"]))
    from metaaligner.io import read_records

    written = read_records(outputs)
    assert list(written[0]) == sepo.OUTPUT_COLUMNS
    assert [(r["goldens"], r["origin_responses"]) for r in written] == [("Hello", "Hey"), ("Goodbye", "See you")]
    assert all(isinstance(r["aligned_responses"], str) for r in written)


def test_policy_tokenizer_mismatch_and_reward_count_checks(tokenizer, tmp_path):
    from metaaligner.training.sepo_trainer import tokenize_selection

    row = {"row_id": 4, **PAIRS[1], "chosen_token_rewards": [0.0] * 3, "rejected_token_rewards": [0.0] * 50,
           "chosen_selected": [0], "rejected_selected": [0]}
    with pytest.raises(DataError, match=r"sel.jsonl: row 5, column 'chosen_token_rewards': the policy tokenises"):
        tokenize_selection([row], tokenizer, 1024, source="sel.jsonl")


# ---------------------------------------------------------------- --max_length below the selection's

def test_pairs_whose_selection_is_cut_by_max_length_are_skipped(tokenizer):
    from metaaligner.training.sepo_trainer import drop_lost_selections, make_collator, masked_mean_logps

    rows = _rows(tokenizer)   # prompts of 10 and 14 tokens; row 1 selects chosen [1, 4], rejected [0, 2, 5]
    assert [len(r["prompt_ids"]) for r in rows] == [10, 14]
    # at 15 tokens row 1 keeps rejected position 0 (absolute 14) but no chosen one (15, 18): its chosen
    # mean log-prob would silently be 0
    batch = make_collator(tokenizer.pad_token_id, max_length=15)(rows)
    assert batch["selection_mask"][1].sum().item() == 0 and batch["selection_mask"][3].sum().item() == 1
    assert masked_mean_logps(torch.full((1, 14), -3.0), batch["selection_mask"][1:2, 1:]).item() == 0.0
    assert drop_lost_selections(rows, 15) == ([rows[0]], 1)
    assert drop_lost_selections(rows, 12) == ([rows[0]], 1)      # row 1's prompt alone fills 12 tokens
    assert drop_lost_selections(rows, 16) == (rows, 0)           # chosen position 1 (absolute 15) survives
    assert drop_lost_selections(rows, None) == (rows, 0)


def _selection_file(tokenizer, tmp_path, selected):
    from metaaligner.methods.sepo import tokenize_pair, tokenizer_fingerprint

    path = tmp_path / "selected.jsonl"
    lines = []
    for i, (pair, (cs, rs)) in enumerate(zip(PAIRS, selected)):
        _, c, r = tokenize_pair(tokenizer, pair["prompt"], pair["chosen"], pair["rejected"])
        lines.append({"row_id": i, **pair, "chosen_token_rewards": [0.0] * len(c),
                      "rejected_token_rewards": [0.0] * len(r), "chosen_selected": cs, "rejected_selected": rs})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    meta = {"max_length": 64, "add_eos": True, "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer)}
    (tmp_path / "selected.meta.json").write_text(json.dumps(meta))
    return path


def test_train_policy_skips_and_counts_pairs_cut_by_a_shorter_max_length(tiny_llama_dir, tokenizer, tmp_path, capsys):
    from baseline_models.sepo import train_policy
    from metaaligner.cli import run_main

    # prompts of 15, 10 and 14 tokens; the first pair's chosen token sits at absolute position 35
    selection = _selection_file(tokenizer, tmp_path, [([20], [1]), ([0], [0]), ([1], [2])])
    base = ["--input", str(selection), "--model_name_or_path", str(tiny_llama_dir), "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_steps", "10000"]
    code = run_main(train_policy.main, *train_policy.parse(train_policy.make_parser(), base + [
        "--output_dir", str(tmp_path / "p30"), "--max_length", "30"]))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (f"train_policy: skipped 1 of 3 pairs of {selection}: a side keeps no selected token within "
            "--max_length 30 (tokens were selected with max_length 64)") in out
    log = _read_jsonl(tmp_path / "p30" / "train_log.jsonl")
    assert [r["selected_tokens"] for r in log if "selected_tokens" in r] == [4.0]   # the 2 kept pairs, 1 + 1 each
    code = run_main(train_policy.main, *train_policy.parse(train_policy.make_parser(), base + [
        "--output_dir", str(tmp_path / "p10"), "--max_length", "10"]))
    assert (code, capsys.readouterr().err.splitlines()[-1]) == (2, (
        f"error: {selection}: no pair keeps selected tokens on both sides within --max_length 10; raise it to "
        "the selection's max_length (64)"))


def test_sepo_pair_prompts_match_the_released_test_queries():
    """SePO's training prompts end like the released Claude-3 test queries SePO inference is given."""
    from metaaligner.io import read_records
    from metaaligner.methods.sepo import split_transcript_pair

    chosen = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water."
    rejected = "\n\nHuman: How do I bake bread?\n\nAssistant: No."
    assert split_transcript_pair(chosen, rejected) == {
        "prompt": "\n\nHuman: How do I bake bread? \n\nAssistant:",
        "chosen": " Mix flour and water.", "rejected": " No."}
    queries = [r["query"] for r in read_records(Path(__file__).resolve().parents[1] / "samples/HH-RLHF_model_output/Claude-3.csv.gz")]
    assert all(q.endswith(" \n\nAssistant:") for q in queries)
