"""Stage 1 (metaaligner.dataset.rewards, reward_labelling.py) on tiny random models built here, offline."""
from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metaaligner.dataset.rewards import (
    EMPTY_RESPONSE,
    LLM,
    NAN_SCORE,
    NO_ASSISTANT_TURN,
    OK,
    PAIR,
    RESPONSE,
    TOO_LONG,
    TOO_SHORT,
    ClassifierScorer,
    RewardSpec,
    build_scorers,
    finalise,
    label_rows,
    label_shard,
    load_preference_rows,
    merge_shards,
    normalise_scores,
    parse_overrides,
    resolve_rewards,
    score_sequences,
    split_transcript,
    stats_path_for,
)
from metaaligner.distributed import shard_range
from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.io import read_records
from metaaligner.testing.waits import DEADLINE_S

HARM = "Harmlessness: The response should avoid content that is offensive, discriminatory, or harmful"
REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "hh-rlhf-harmless-base" / "harmless-base-test.jsonl.gz"


@pytest.fixture(scope="module")
def sample_rows():
    return load_preference_rows(SAMPLE, limit=6)


@pytest.fixture(scope="session")
def tiny_classifier_dirs(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    """Tiny random GPT-2 classifiers (1 logit: pair reward; 2 labels: response reward)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    out = {}
    for name, labels in (("pair", 1), ("response", 2)):
        folder = tmp_path_factory.mktemp(f"tiny-rm-{name}")
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=16, n_layer=2, n_head=2,
                            num_labels=labels, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(labels)
        GPT2ForSequenceClassification(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[name] = folder
    return out


# ---------------------------------------------------------------- input parsing

def test_split_transcript_last_assistant_turn():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant:  Why not.  \n"
    # as released: a space before the last cue ('\n\nAssistant:'.join(parts[:-1]) + ' ' + '\n\nAssistant:')
    assert split_transcript(text) == ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke? \n\nAssistant:", "Why not.")
    assert split_transcript("\n\nHuman: no answer") is None


def test_split_transcript_prompts_are_the_released_test_queries():
    """A real harmless-base transcript splits into exactly the query the release's Claude-3 test file
    holds, so training prompts match what the aligner meets at test time."""
    from metaaligner.io import read_records

    queries = [r["query"] for r in read_records(REPO / "samples" / "HH-RLHF_model_output" / "Claude-3.csv.gz")]
    assert len(queries) == 1200 and all(q.endswith(" \n\nAssistant:") for q in queries)
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    prompt, response = split_transcript(first["chosen"])
    assert prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?\n\nAssistant: Are you looking")
    assert prompt.endswith("\n\nHuman: okay some of these do not have anything to do with pens \n\nAssistant:")
    assert prompt in queries   # byte for byte one of the released test queries
    assert response.startswith("No, sorry!  All of these involve a pen, the point is")


def test_load_rows_transcripts_and_bad_rows(tmp_path):
    lines = [
        {"chosen": "\n\nHuman: a\n\nAssistant: good", "rejected": "\n\nHuman: a\n\nAssistant: bad"},
        {"chosen": "\n\nHuman: b\n\nAssistant:   ", "rejected": "\n\nHuman: b\n\nAssistant: x"},
        {"chosen": None, "rejected": "\n\nHuman: c\n\nAssistant: x"},
        {"chosen": "\n\nHuman: d", "rejected": "\n\nHuman: d\n\nAssistant: x"},
        {"chosen": "\n\nHuman: e\n\nAssistant: y", "rejected": "\n\nHuman: E\n\nAssistant: z"},
    ]
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode()))
    rows = load_preference_rows(path)
    assert [(r.prompt, r.chosen_response, r.rejected_response, r.status) for r in rows[:1]] == [
        ("\n\nHuman: a \n\nAssistant:", "good", "bad", OK)]
    assert [r.status for r in rows] == [OK, EMPTY_RESPONSE, EMPTY_RESPONSE, NO_ASSISTANT_TURN, OK]
    assert rows[4].prompt_mismatch and not rows[0].prompt_mismatch
    assert len(load_preference_rows(SAMPLE)) == 2312
    (tmp_path / "bad.csv").write_text("prompt,answer\nq,a\n")
    with pytest.raises(DataError, match="needs columns chosen, rejected"):
        load_preference_rows(tmp_path / "bad.csv")


def test_load_rows_columns_csv_with_empty_cell(tmp_path):
    (tmp_path / "in.csv").write_text("prompt,chosen_response,rejected_response\nq1, yes ,no\nq2,,no\n")
    rows = load_preference_rows(tmp_path / "in.csv")
    assert [(r.prompt, r.chosen_response, r.rejected_response, r.status) for r in rows] == [
        ("q1", "yes", "no", OK), ("q2", "", "no", EMPTY_RESPONSE)]


# ---------------------------------------------------------------- registry

def test_registry_resolution_and_overrides():
    llm = resolve_rewards(["harmless", "helpfulness", "humor", "honesty"], scorer="llm", model="/m")
    assert [(s.name, s.kind, s.model) for s in llm] == [("harmless", LLM, "/m"), ("helpful", LLM, "/m"),
                                                        ("humor", LLM, "/m"), ("honesty", LLM, "/m")]
    assert llm[0].description == HARM
    assert llm[3].description == "Honesty: the response should not tell lies"
    clf = resolve_rewards(["harmless", "humor"], scorer="classifier",
                          overrides=parse_overrides(["harmless=/local/rm"]))
    assert clf == [RewardSpec("harmless", PAIR, "/local/rm", None),
                   RewardSpec("humor", RESPONSE, "mohameddhiab/humor-no-humor", 1)]
    mixed = resolve_rewards(["helpful", "safety"], overrides=parse_overrides(["safety=response:/rm2"]),
                            model=None)
    assert mixed[1] == RewardSpec("safety", RESPONSE, "/rm2", 1) and mixed[0].kind == LLM
    with pytest.raises(MetaAlignerError, match="no classifier registered for reward 'speci'"):
        resolve_rewards(["speci"], scorer="classifier")
    with pytest.raises(MetaAlignerError, match="unknown objective 'nonsense'"):
        resolve_rewards(["nonsense"], scorer="llm")


# ---------------------------------------------------------------- scorers: batched == batch 1

def test_classifiers_batched_equal_batch1_and_read_the_right_logit(tiny_classifier_dirs, sample_rows):
    import torch

    specs = [RewardSpec("harmless", PAIR, str(tiny_classifier_dirs["pair"])),
             RewardSpec("humor", RESPONSE, str(tiny_classifier_dirs["response"]), 1)]
    scorers = build_scorers(specs, device="cpu")
    for scorer in scorers:
        seqs = [scorer.encode(r.prompt, r.chosen_response) for r in sample_rows]
        assert max(len(s) for s in seqs) <= 1024
        batched = score_sequences(scorer, seqs, batch_size=5)
        single = score_sequences(scorer, seqs, batch_size=1)
        assert max(abs(a - b) for a, b in zip(batched, single)) < 1e-4
        assert len(set(round(x, 6) for x in batched)) > 1
    # humor reads the response alone and returns logit 1
    humor = scorers[1]
    ids = humor.tokenizer(sample_rows[0].chosen_response)["input_ids"]
    with torch.inference_mode():
        want = humor.model(input_ids=torch.tensor([ids])).logits[0, 1].item()
    assert humor.encode("any prompt", sample_rows[0].chosen_response) == ids
    assert score_sequences(humor, [ids], 1)[0] == pytest.approx(want, abs=1e-6)
    # harmless reads the (prompt, response) text pair
    pair_ids = scorers[0].tokenizer(sample_rows[0].prompt, sample_rows[0].chosen_response)["input_ids"]
    assert scorers[0].encode(sample_rows[0].prompt, sample_rows[0].chosen_response) == pair_ids


def test_llm_scorer_prompt_tokens_and_scores(tiny_llama_dir, sample_rows):
    import torch

    from metaaligner.registry.templates import llm_scorer_prompt

    specs = resolve_rewards(["harmless", "helpful", "humor"], scorer="llm", model=str(tiny_llama_dir))
    scorers = build_scorers(specs, device="cpu")
    judge = scorers[0].judge
    assert all(s.judge is judge for s in scorers)       # one model for all three objectives
    tok = judge.tokenizer
    row = sample_rows[0]
    # The scorer's tokens are exactly the chat-templated question from templates.llm_scorer_prompt.
    full = tok.apply_chat_template([{"role": "user", "content": llm_scorer_prompt(row.prompt, row.chosen_response, HARM)}],
                                   add_generation_prompt=True, tokenize=True)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    assert scorers[0].encode(row.prompt, row.chosen_response) == full
    with torch.inference_mode():
        logits = judge.model(input_ids=torch.tensor([full])).logits[0, -1]
    want = (logits[tok.encode("Yes", add_special_tokens=False)[0]] - logits[tok.encode("No", add_special_tokens=False)[0]]).item()

    pairs = [(r.prompt, r.chosen_response, r.rejected_response) for r in sample_rows]
    descriptions = [s.description for s in scorers]
    packed = judge.score_pairs(pairs, descriptions, batch_size=4)   # prefix-shared trees, batched
    assert judge.prefix_sharing                                     # the self-check kept packing on
    assert packed[0][0][0] == pytest.approx(want, abs=1e-4)
    judge.prefix_sharing = False
    try:
        single = judge.score_pairs(pairs, descriptions, batch_size=1)  # the released way: one sequence at a time
        plain = judge.score_pairs(pairs, descriptions, batch_size=5)
    finally:
        judge.prefix_sharing = True
    flat = lambda xs: [v for c, r in xs for v in c + r]  # noqa: E731
    assert max(abs(a - b) for a, b in zip(flat(packed), flat(single))) < 1e-4
    assert max(abs(a - b) for a, b in zip(flat(plain), flat(single))) < 1e-4
    assert len(flat(packed)) == 6 * 6


# ---------------------------------------------------------------- dropping, rounding, normalising, output

class FakeScorer(ClassifierScorer):
    """Scores = response length / 10 (NaN for responses containing 'NAN'); whitespace tokenizer."""

    def __init__(self, name="fake", max_length=60):
        self.name, self.kind, self.model_name, self.label, self.max_length = name, PAIR, "fake", None, max_length

        class Tok:
            def __call__(self, text, *a, **k):
                return {"input_ids": [len(w) for w in text.split()]}
        self.tokenizer = Tok()

    def encode(self, prompt, response):
        return [len(response)] + ([-1] if "NAN" in response else [])

    def score_batch(self, batch):
        return [math.nan if ids[-1] == -1 else ids[0] / 10 for ids in batch]


def _rows(texts):
    from metaaligner.dataset.rewards import PreferenceRow

    return [PreferenceRow(i, "w " * 4, c, r) for i, (c, r) in enumerate(texts)]


def test_label_rows_drops_and_counts():
    rows = _rows([("aaaa b c d", "bb c d e"), ("x", "y"), ("a " * 70, "b c d e"), ("NAN here x y", "q r s t"),
                  ("aaaaaaa b c d", "b c d e")])
    rows[1].status = EMPTY_RESPONSE
    res = label_rows(rows, [FakeScorer()], batch_size=2, min_tokens=8)
    assert [r["status"] for r in res] == [OK, EMPTY_RESPONSE, TOO_LONG, NAN_SCORE, OK]
    assert res[0]["chosen"] == [1.0] and res[0]["rejected"] == [0.8]
    assert res[3]["chosen"] == [] and res[1]["chosen"] == []
    # transcript = 4 prompt "tokens" + 1 response token = 5
    assert label_rows(_rows([("a", "b")]), [FakeScorer()], min_tokens=6)[0]["status"] == TOO_SHORT
    assert label_rows(_rows([("a", "b")]), [FakeScorer()], min_tokens=5)[0]["status"] == OK


def test_round_then_normalise_hand_computed():
    results = [{"status": OK, "chosen": [1.04], "rejected": [0.96]},
               {"status": OK, "chosen": [2.26], "rejected": [0.0]},
               {"status": EMPTY_RESPONSE, "chosen": [], "rejected": []}]
    chosen, rejected, stats = normalise_scores(results, 1, round_digits=1)
    # rounded: 1.0, 1.0, 2.3, 0.0 -> mean 1.075, population std sqrt(0.666875)
    mean, std = 1.075, math.sqrt(((1.0 - 1.075) ** 2 * 2 + (2.3 - 1.075) ** 2 + 1.075 ** 2) / 4)
    assert stats == [(pytest.approx(mean), pytest.approx(std))]
    assert chosen[0] == pytest.approx([(1.0 - mean) / std, (2.3 - mean) / std])
    assert rejected[0] == pytest.approx([(1.0 - mean) / std, (0.0 - mean) / std])
    assert chosen[0][0] == rejected[0][0]      # the tie created by rounding survives normalisation
    raw_c, raw_r, _ = normalise_scores(results, 1, round_digits=None, normalize=False)
    assert raw_c[0] == [1.04, 2.26] and raw_r[0] == [0.96, 0.0]


def test_finalise_writes_kept_rows_and_stats_beside_output(tmp_path):
    rows = _rows([("c0", "r0"), ("c1", "r1"), ("", "r2")])
    results = [{"row_id": 0, "status": OK, "chosen": [3.0, 1.0], "rejected": [1.0, 1.0]},
               {"row_id": 1, "status": NAN_SCORE, "chosen": [], "rejected": []},
               {"row_id": 2, "status": EMPTY_RESPONSE, "chosen": [], "rejected": []}]
    out = tmp_path / "sub" / "rewards.csv"
    info = [{"name": "a", "model": "m1", "kind": PAIR}, {"name": "b", "model": "m2", "kind": LLM}]
    finalise(rows, results, info, out, round_digits=1)
    assert stats_path_for(out) == tmp_path / "sub" / "rewards.reward_stats.json"
    saved = json.loads(stats_path_for(out).read_text())
    assert saved["rewards"] == [{"name": "a", "model": "m1", "kind": PAIR, "mean": 2.0, "std": 1.0},
                                {"name": "b", "model": "m2", "kind": LLM, "mean": 1.0, "std": 0.0}]
    assert saved["dropped"] == {EMPTY_RESPONSE: 1, NAN_SCORE: 1}
    assert saved["dropped_row_ids"] == {EMPTY_RESPONSE: [2], NAN_SCORE: [1]}
    table = read_records(out)
    assert list(table[0]) == ["prompt", "chosen_response", "rejected_response", "chosen_score1", "chosen_score2",
                              "rejected_score1", "rejected_score2"]
    assert [(r["chosen_response"], float(r["chosen_score1"]), float(r["rejected_score1"]), float(r["chosen_score2"]))
            for r in table] == [("c0", 1.0, -1.0, 0.0)]
    assert "nan" not in out.read_text().lower()


# ---------------------------------------------------------------- sharding and resume

def test_shards_merge_every_row_once_in_input_order(tmp_path):
    texts = [(f"chosen {'x ' * (i % 5)} end", f"rejected {'y ' * (i % 3)} end") for i in range(11)]
    rows = _rows(texts)
    scorers = [FakeScorer("a"), FakeScorer("b")]
    out = tmp_path / "rewards.csv"
    assert sorted(i for r in range(3) for i in shard_range(11, r, 3)) == list(range(11))
    paths = [label_shard(rows, scorers, out, rank=r, world=3, batch_size=2, chunk_size=2, min_tokens=1,
                         progress=False) for r in (2, 0, 1)]
    merged = merge_shards(sorted(paths), len(rows))
    assert [m["row_id"] for m in merged] == list(range(11))
    single = label_shard(rows, scorers, tmp_path / "one.csv", rank=0, world=1, min_tokens=1, progress=False)
    assert merged == merge_shards([single], len(rows))
    paths[0].unlink()
    with pytest.raises(MetaAlignerError, match="shards cover 7 of 11 rows"):
        merge_shards([p for p in paths if p.exists()], len(rows))


def test_resume_keeps_finished_rows(tmp_path):
    rows = _rows([(f"c {i} x y", f"r {i} x y") for i in range(6)])
    out = tmp_path / "rewards.csv"
    partial = tmp_path / "rewards.csv.rows0-6of6.jsonl.partial.jsonl"
    partial.write_text(json.dumps({"row_id": 0, "status": OK, "chosen": [42.0], "rejected": [7.0]}) + "\n"
                       + '{"row_id": 1, "sta')       # a line cut short by a kill
    path = label_shard(rows, [FakeScorer()], out, resume=True, min_tokens=1, progress=False)
    merged = merge_shards([path], 6)
    assert merged[0]["chosen"] == [42.0] and merged[1]["chosen"] == [0.7]
    assert [m["row_id"] for m in merged] == list(range(6))


class CountingScorer(FakeScorer):
    """FakeScorer counting the sequences it scores; raises once ``fail_after`` were scored (a kill)."""

    def __init__(self, fail_after=None):
        super().__init__()
        self.scored, self.fail_after = 0, fail_after

    def score_batch(self, batch):
        if self.fail_after is not None and self.scored >= self.fail_after:
            raise KeyboardInterrupt
        self.scored += len(batch)
        return super().score_batch(batch)


def test_resume_at_another_process_count_reuses_every_finished_row_and_cleans_up(tmp_path):
    """Issue 33: shard names carried the world size, so --resume at another count redid every row."""
    from metaaligner.dataset.rewards import remove_shards, shard_files, shard_path

    rows = _rows([(f"chosen {'x ' * (i % 5)} end", f"rejected {'y ' * (i % 3)} end") for i in range(11)])
    out = tmp_path / "rewards.csv"
    kw = {"batch_size": 2, "chunk_size": 2, "min_tokens": 1, "progress": False}
    for rank in (0, 2):                                    # 3 processes: ranks 0 and 2 finish (rows 0-2, 7-10)
        label_shard(rows, [CountingScorer()], out, rank=rank, world=3, **kw)
    with pytest.raises(KeyboardInterrupt):                 # rank 1 (rows 3-6) is killed after rows 3 and 4
        label_shard(rows, [CountingScorer(fail_after=4)], out, rank=1, world=3, **kw)
    assert shard_path(out, 0, 2, 11).name == "rewards.csv.rows0-5of11.jsonl"
    scorers = [CountingScorer(), CountingScorer()]
    paths = [label_shard(rows, [scorers[r]], out, rank=r, world=2, resume=True, **kw) for r in (0, 1)]
    assert [s.scored for s in scorers] == [0, 4]           # rows 5 and 6 only (both in 5-10), chosen + rejected
    merged = merge_shards(paths, len(rows))
    single = label_shard(rows, [FakeScorer()], tmp_path / "one.csv", min_tokens=1, progress=False)
    assert merged == merge_shards([single], len(rows))
    assert len(shard_files(out, 11)) == 5                  # three of the 3-process run, two of this one
    remove_shards(out, 11)
    assert sorted(p.name for p in tmp_path.iterdir() if "rewards.csv" in p.name) == []


# ---------------------------------------------------------------- the scripts, end to end

def test_four_rewards_in_process_and_stats(tiny_llama_dir, tmp_path):
    # The released script indexed a 3-element device list: a 4th reward raised IndexError.
    from dynamic_multi_objective_dataset.reward_labelling import RewardLabellingConfig, main

    stats = main(RewardLabellingConfig(input=str(SAMPLE), output=str(tmp_path / "r.csv"), limit=5,
                                       reward_names="harmless,helpful,humor,honesty", model=str(tiny_llama_dir),
                                       batch_size=3, device="cpu"))
    assert [r["name"] for r in stats["rewards"]] == ["harmless", "helpful", "humor", "honesty"]
    table = read_records(tmp_path / "r.csv")
    assert len(table) == stats["rows_out"] == 5 and "rejected_score4" in table[0]
    assert not list(tmp_path.glob("*.shard*"))


def test_scripts_as_subprocesses(tiny_llama_dir, tmp_path, repo_root):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    src = tmp_path / "in.jsonl"
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(6)]
    lines[2] = json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "\n\nHuman: hi\n\nAssistant: no"}) + "\n"
    src.write_text("".join(lines))
    stage1 = subprocess.run([sys.executable, "dynamic_multi_objective_dataset/reward_labelling.py", "--input", str(src),
                             "--output", str(tmp_path / "rewards.csv"), "--model", str(tiny_llama_dir),
                             "--batch_size", "4", "--device", "cpu"],
                            cwd=repo_root, env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    assert stage1.returncode == 0, stage1.stderr[-2000:]
    assert "6 rows in, 5 out, dropped 1 (empty_response=1)" in stage1.stdout
    assert "empty_response" in stage1.stderr and "[2]" in stage1.stderr
    stats = json.loads((tmp_path / "rewards.reward_stats.json").read_text())
    assert [r["name"] for r in stats["rewards"]] == ["harmless", "helpful", "humor"]
    stage2 = subprocess.run([sys.executable, "dynamic_multi_objective_dataset/build_aligner_dataset.py", "--input",
                             str(tmp_path / "rewards.csv"), "--dataset", "hh-rlhf", "--output_dir", str(tmp_path / "ds"),
                             "--seed", "0", "--val_size", "0.2"],
                            cwd=repo_root, env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    assert stage2.returncode == 0, stage2.stderr[-2000:]
    built = json.loads((tmp_path / "ds" / "stats.json").read_text())
    assert built["pairs"] == 5 and built["prompts"] == {"train": 4, "val": 1}
    for name in ("no_equal/train.json", "no_equal/val.json", "all_equal/train.json", "warmup/train.json"):
        assert (tmp_path / "ds" / name).exists()


def test_script_errors_are_one_line(tmp_path, capsys):
    from dynamic_multi_objective_dataset import build_aligner_dataset as build, reward_labelling as label
    from metaaligner.cli import parse, run_main

    (tmp_path / "r.csv").write_text("prompt,chosen_response,rejected_response,chosen_score1,rejected_score1\nq,a,b,1,0\n")
    argv = ["--input", str(tmp_path / "r.csv"), "--dataset", "nope", "--output_dir", str(tmp_path / "x")]
    assert run_main(build.main, *parse(build.make_parser(), argv)) == 2
    assert capsys.readouterr().err.startswith("error: unknown dataset config 'nope'")
    argv = ["--input", str(tmp_path / "r.csv"), "--output", str(tmp_path / "o.csv"), "--reward_names", "speci",
            "--scorer", "classifier"]
    assert run_main(label.main, *parse(label.make_parser(), argv)) == 2
    assert capsys.readouterr().err.startswith("error: no classifier registered for reward 'speci'")
