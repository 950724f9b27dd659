"""The reliability matrix of issue 9: every stage script against bad input, faults and interruption.

Each stage script runs for real (its ``__main__`` block, via ``runpy``) in a child process; to keep the
matrix inside the CI budget on 2 cores, one child runs all the single-shot cases in a row (one torch
import instead of ~60) and reports, per case, the exit code, stdout, stderr and any traceback that
escaped. Interruption tests start each long stage as its own process, SIGKILL it at a seeded random
point and re-run it with ``--resume``.

What every case asserts (see ``expect_error``): bad input ends with exit code 2 and ONE line
``error: ...`` naming the file (and row/column where there is one), no traceback, and no output file
that looks complete; bad rows inside good files are counted and reported, and every other row is
written exactly once. Models are tiny random LLaMAs; the judge is the scripted OpenAI-compatible
server of ``metaaligner.testing`` (real HTTP, real ``openai`` client).

| stage \\ case          | missing file | columns | empty | non-UTF-8 | NaN/empty | 100k chars | unknown key | template/model |
|-----------------------|--------------|---------|-------|-----------|-----------|------------|-------------|----------------|
| reward_labelling       | error        | error   | error | error     | dropped, counted | dropped (too_long), counted | error | error |
| build_aligner_dataset  | error        | error   | error | error     | dropped, counted | kept verbatim | error | error |
| train_aligner          | error        | error   | error | error     | (n/a: no rows)   | truncated, counted | (n/a) | error |
| policy_generation      | error        | error   | error | error     | generated        | cut in the middle, counted | (n/a) | error |
| aligner_inference      | error        | error   | error | error     | '' aligned, counted; null -> error | answer cut in the middle, counted | error | error |
| judge                  | error        | error   | error | error     | judged           | judged     | error       | error          |
| report                 | error        | error   | error | error     | unknown verdict: error | (n/a)      | (n/a)       | error          |
"""
from __future__ import annotations

import csv
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from metaaligner.io import fastchat_item, read_records, write_fastchat, write_json
from metaaligner.testing import Fault, ScriptedOpenAIServer, fail_first_per_prompt, fail_first_requests, user_text
from metaaligner.testing.waits import DEADLINE_S, wait_for

REPO = Path(__file__).resolve().parent.parent
PLANTED_KEY = "sk-planted-0123456789abcdefSECRET"
RL = "dynamic_multi_objective_dataset/reward_labelling.py"
BD = "dynamic_multi_objective_dataset/build_aligner_dataset.py"
TA = "training/train_aligner.py"
PG = "inference/policy_generation.py"
AI = "inference/aligner_inference.py"
JD = "evaluation/judge.py"
RP = "evaluation/report.py"
HH_PROMPT = "\n\nHuman: How do I bake bread at home?\n\nAssistant:"
LONG = 100_000

# Runs stage scripts' __main__ blocks one after the other in this process, as `python script.py argv`
# would, and records what each did. Root logging handlers are reset per case so each case's log
# lines land in its own captured stderr.
HARNESS = r'''
import contextlib, io, json, logging, runpy, sys, traceback, warnings
cases_path, results_path = sys.argv[1], sys.argv[2]
results = {}
for case in json.load(open(cases_path)):
    out, err = io.StringIO(), io.StringIO()
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)
    sys.argv = [case["script"]] + case["argv"]
    code, exc = 0, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            runpy.run_path(case["script"], run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            code, exc = 1, traceback.format_exc()
    results[case["name"]] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "exception": exc}
    if case.get("snapshot"):  # the files a folder held right after this case (later cases may change them)
        import pathlib
        root = pathlib.Path(case["snapshot"])
        results[case["name"]]["files"] = sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file())
    with open(results_path, "w") as fh:
        json.dump(results, fh)
'''


def write_table(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "OPENAI_API_KEY": PLANTED_KEY, "PYTHONPATH": str(REPO), **extra}


def row_judge(request: dict) -> str:
    """A judge whose verdict depends only on the row: the candidate ``cand-i`` wins for even i and
    loses for odd i, whichever position it sits in. A lost row or a reply reused for another row
    therefore shows up as a wrong verdict."""
    text = user_text(request)
    match = re.search(r"RESPONSE 1: (cand|gold)-(\d+)", text)
    if not match:
        return "I cannot tell."
    kind, i = match.group(1), int(match.group(2))
    candidate_first = kind == "cand"
    candidate_wins = i % 2 == 0
    return "[[1]]" if candidate_first == candidate_wins else "[[2]]"


def first_try_fault(reply, fault: Fault):
    """The first request for each distinct conversation gets ``fault``; retries get ``reply``."""
    seen, lock = set(), threading.Lock()

    def scripted(request: dict):
        key = json.dumps(request.get("messages", []), sort_keys=True)
        with lock:
            first = key not in seen
            seen.add(key)
        return fault if first else reply(request)

    return scripted


def truncated_on_odd(request: dict):
    text = user_text(request)
    match = re.search(r"(?:cand|gold)-(\d+)", text)
    if match and int(match.group(1)) % 2 == 1:
        return {"content": "[[", "finish_reason": "length"}  # cut off mid-answer
    return row_judge(request)


@dataclass
class World:
    d: Path
    tiny: Path
    results: dict
    servers: dict
    harness: Path

    def result(self, name: str) -> dict:
        assert name in self.results, f"case {name} did not run (harness crashed?)"
        return self.results[name]


def judged_rows(output_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(output_dir.rglob("*.csv")):
        if path.name != "summary.csv":
            rows += read_records(path)
    return rows


# ----------------------------------------------------------------------------- the cases

def make_inputs(d: Path, tiny: Path) -> None:
    (d / "empty.csv").write_text("")
    (d / "latin1.csv").write_bytes("query,goldens,generated_text\nQ1?,G1,caf\xe9\n".encode("latin-1"))
    (d / "not_a_model").mkdir()
    # stage 1
    write_table(d / "pairs.csv", ["prompt", "chosen_response", "rejected_response"], [
        [HH_PROMPT, "Mix flour, water, yeast and salt, let it rise, then bake it.", "No idea."],
        [HH_PROMPT, "", "Buy it."],
        [HH_PROMPT, "y" * LONG, "Bake it hot."],
        [HH_PROMPT, "nan", "Knead the dough well and bake at 220 C."]])
    (d / "pairs_null.jsonl").write_text(
        json.dumps({"prompt": HH_PROMPT, "chosen_response": None, "rejected_response": "ok then"}) + "\n"
        + '{"prompt": "q", "chosen_response": NaN, "rejected_response": "fine"}\n')
    write_table(d / "pairs_nocol.csv", ["prompt", "chosen", "rejected_response"], [[HH_PROMPT, "a", "b"]])
    (d / "pairs_latin1.csv").write_bytes(b"prompt,chosen_response,rejected_response\nQ,caf\xe9 ok,b\n")
    write_table(d / "pairs12.csv", ["prompt", "chosen_response", "rejected_response"],
                [[f"\n\nHuman: Question number {i}?\n\nAssistant:", f"A helpful answer {i}.", f"No {i}."]
                 for i in range(12)])
    # stage 2
    scores = [f"{s}_score{i}" for s in ("chosen", "rejected") for i in (1, 2, 3)]
    header = ["prompt", "chosen_response", "rejected_response"] + scores
    write_table(d / "rewards_bad.csv", header, [
        ["Q1", "good", "bad", 1, 0.5, 0, 0, 0.5, 1],
        ["Q2", "z" * LONG, "meh", 1, 1, 1, 0, 0, 0],
        ["Q3", "fine", "", 0.2, 0.2, 0.2, 0.1, 0.1, 0.1],
        ["Q4", "fine", "also fine", "nan", 1, 1, 0, 0, 0]])
    write_table(d / "rewards_missing.csv", header[:-1], [["Q1", "good", "bad", 1, 0.5, 0, 0, 0.5]])
    # training data (FastChat JSON) and broken variants
    good = d / "train_data"
    items = [fastchat_item(f"i{k}", f"You are an assistant ... | Context: q{k} | Answer: a{k} | Edit: ", f"t{k}")
             for k in range(3)]
    for sub in ("warmup/train.json", "all_equal/train.json", "no_equal/train.json", "no_equal/val.json"):
        write_fastchat(good / sub, items)
    write_json(good / "stats.json", {"template": "hh-rlhf", "objectives": ["harmlessness", "helpfulness", "humour"],
                                     "config": "hh-rlhf"})
    for name, content in (("train_empty", b""), ("train_latin1", '[{"id": "1", "conversations": [{"from": "human", '
                          '"value": "caf\xe9"}, {"from": "gpt", "value": "x"}]}]'.encode("latin-1")),
                          ("train_badconv", b'[{"id": "1", "turns": []}]')):
        target = d / name
        for sub in ("warmup/train.json", "all_equal/train.json", "no_equal/train.json", "no_equal/val.json"):
            write_fastchat(target / sub, items)
        (target / "warmup/train.json").write_bytes(content)
        write_json(target / "stats.json", {"template": "hh-rlhf"})
    (d / "train_nofile").mkdir()
    write_json(d / "train_nofile/stats.json", {"template": "hh-rlhf"})
    # policy generation
    write_table(d / "queries.csv", ["query", "goldens"], [["Q1?", "G1"], ["", "G2"], ["q" * LONG, "G3"]])
    write_table(d / "queries_nocol.csv", ["question", "goldens"], [["Q1?", "G1"]])
    write_table(d / "queries12.csv", ["query", "goldens"], [[f"Question {i}?", f"G{i}"] for i in range(12)])
    write_table(d / "imhi_pol/DR.csv", ["goldens", "generated_text"], [["G0", "A0"], ["WRONG", "A1"]])
    write_table(d / "imhi_q/DR.csv", ["query", "gpt-3.5-turbo"], [["Q0", "G0"], ["Q1", "G1"]])
    # aligner inference
    write_table(d / "policy.csv", ["query", "goldens", "generated_text"],
                [["Q1?", "G1", "A1"], ["Q2?", "G2", ""], ["Q3?", "G3", "x" * LONG]])
    write_table(d / "policy_nocol.csv", ["query", "goldens", "answer"], [["Q1?", "G1", "A1"]])
    (d / "policy_null.jsonl").write_text('{"query": "Q", "goldens": "G", "generated_text": null}\n')
    write_table(d / "policy12.csv", ["query", "goldens", "generated_text"],
                [[f"Question {i}?", f"G{i}", f"Answer {i}."] for i in range(12)])
    bad_card = d / "bad_card"
    bad_card.mkdir()
    for f in tiny.iterdir():
        (bad_card / f.name).symlink_to(f)
    (bad_card / "metaaligner.json").write_text('{"template": "no-such-template"}')
    # security: remote code that must never run, and a pickle that must never be unpickled
    evil_code = d / "evil_code"
    evil_code.mkdir()
    for f in tiny.iterdir():
        if f.name != "config.json":
            (evil_code / f.name).symlink_to(f)
    config = json.loads((tiny / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (evil_code / "config.json").write_text(json.dumps(config))
    (evil_code / "evil.py").write_text(f"import pathlib\npathlib.Path({str(d / 'PWNED_CODE')!r}).write_text('x')\n"
                                       "from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilModel\n")
    evil_pickle = d / "evil_pickle"
    evil_pickle.mkdir()
    for f in tiny.iterdir():
        if f.name != "model.safetensors":
            (evil_pickle / f.name).symlink_to(f)

    class Evil:
        def __reduce__(self):
            return (exec, (f"import pathlib; pathlib.Path({str(d / 'PWNED_PICKLE')!r}).write_text('x')",))

    (evil_pickle / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    # judge
    aligned_header = ["query", "goldens", "origin_responses", "aligned_responses", "aligner", "template", "aspects"]
    write_table(d / "aligned.csv", aligned_header, [
        ["Q0?", "gold-0", "orig-0", "cand-0", "t", "hh-rlhf", "harmlessness"],
        ["Q1?", "gold-1", "", "", "t", "hh-rlhf", "harmlessness"],
        ["Q2?", "gold-2", "orig-2", "cand-2 " + "w" * LONG, "t", "hh-rlhf", "harmlessness"]])
    write_table(d / "aligned_nocol.csv", aligned_header[:3], [["Q1?", "G1", "orig1"]])
    write_table(d / "rows8/policy.csv", aligned_header,
                [[f"Q{i}?", f"gold-{i}", f"orig-{i}", f"cand-{i}", "t", "hh-rlhf", "harmlessness"] for i in range(8)])
    write_table(d / "rows40/policy.csv", aligned_header,
                [[f"Q{i}?", f"gold-{i}", f"orig-{i}", f"cand-{i}", "t", "hh-rlhf", "harmlessness"] for i in range(40)])


def make_cases(d: Path, tiny: Path, servers: dict) -> list[dict]:
    cases = []

    def add(name, script, *argv, snapshot=None):
        cases.append({"name": name, "script": script, "argv": [str(a) for a in argv],
                      "snapshot": str(snapshot) if snapshot else None})

    # reward labelling
    rl = ("--model", tiny, "--batch_size", 4)
    add("rl:missing_file", RL, "--input", d / "nope.jsonl", "--output", d / "rl_missing/r.csv", *rl)
    add("rl:missing_columns", RL, "--input", d / "pairs_nocol.csv", "--output", d / "rl_cols/r.csv", *rl)
    add("rl:empty_file", RL, "--input", d / "empty.csv", "--output", d / "rl_empty/r.csv", *rl)
    add("rl:non_utf8", RL, "--input", d / "pairs_latin1.csv", "--output", d / "rl_utf8/r.csv", *rl)
    add("rl:unknown_objective", RL, "--input", d / "pairs.csv", "--output", d / "rl_key/r.csv",
        "--reward_names", "harmless,safety", *rl)
    add("rl:model_mismatch", RL, "--input", d / "pairs.csv", "--output", d / "rl_model/r.csv",
        "--model", d / "not_a_model")
    add("rl:bad_rows", RL, "--input", d / "pairs.csv", "--output", d / "rl_ok/r.csv", *rl)
    add("rl:null_rows", RL, "--input", d / "pairs_null.jsonl", "--output", d / "rl_null/r.csv", *rl)
    add("rl:reference", RL, "--input", d / "pairs12.csv", "--output", d / "rl_ref/r.csv", "--chunk_size", 2, *rl)
    # Algorithm 1
    bd = ("--dataset", "hh-rlhf", "--seed", 0)
    add("bd:missing_file", BD, "--input", d / "nope.csv", "--output_dir", d / "bd_missing", *bd)
    add("bd:missing_columns", BD, "--input", d / "rewards_missing.csv", "--output_dir", d / "bd_cols", *bd)
    add("bd:empty_file", BD, "--input", d / "empty.csv", "--output_dir", d / "bd_empty", *bd)
    add("bd:non_utf8", BD, "--input", d / "latin1.csv", "--output_dir", d / "bd_utf8", *bd)
    add("bd:unknown_objective", BD, "--input", d / "rewards_bad.csv", "--output_dir", d / "bd_key",
        "--objectives", "harmlessness,safety,humour", *bd)
    add("bd:template_mismatch", BD, "--input", d / "rewards_bad.csv", "--output_dir", d / "bd_tpl",
        "--dataset", "ultrafeedback")
    add("bd:unknown_template", BD, "--input", d / "rewards_bad.csv", "--output_dir", d / "bd_tpl2",
        "--template", "no-such-template", *bd)
    add("bd:bad_rows", BD, "--input", d / "rewards_bad.csv", "--output_dir", d / "bd_ok", *bd)
    # training (after bd:bad_rows, whose output holds a 100k-character target)
    ta = ("--model_name_or_path", tiny, "--max_steps", 1, "--no_eval", "--max_length", 128)
    add("ta:missing_file", TA, "--data_dir", d / "no_such_dir", "--output_dir", d / "ta_missing", *ta)
    add("ta:missing_subset", TA, "--data_dir", d / "train_nofile", "--output_dir", d / "ta_nofile", *ta)
    add("ta:missing_columns", TA, "--data_dir", d / "train_badconv", "--output_dir", d / "ta_cols", *ta)
    add("ta:empty_file", TA, "--data_dir", d / "train_empty", "--output_dir", d / "ta_empty", *ta)
    add("ta:non_utf8", TA, "--data_dir", d / "train_latin1", "--output_dir", d / "ta_utf8", *ta)
    add("ta:unknown_template", TA, "--data_dir", d / "train_data", "--output_dir", d / "ta_tpl",
        "--template", "no-such-template", *ta)
    add("ta:model_mismatch", TA, "--data_dir", d / "train_data", "--output_dir", d / "ta_model",
        "--model_name_or_path", d / "not_a_model", "--max_steps", 1, "--no_eval")
    add("ta:long_target", TA, "--data_dir", d / "bd_ok", "--output_dir", d / "ta_ok", "--lora", *ta)
    # policy generation
    pg = ("--model", tiny, "--model_name", "pol", "--max_new_tokens", 3)
    add("pg:missing_file", PG, "--data_dir", d / "nope.csv", "--model_output_path", d / "pg_missing", *pg)
    add("pg:missing_columns", PG, "--data_dir", d / "queries_nocol.csv", "--model_output_path", d / "pg_cols", *pg)
    add("pg:empty_file", PG, "--data_dir", d / "empty.csv", "--model_output_path", d / "pg_empty", *pg)
    add("pg:non_utf8", PG, "--data_dir", d / "latin1.csv", "--model_output_path", d / "pg_utf8", *pg)
    add("pg:model_mismatch", PG, "--data_dir", d / "queries.csv", "--model_output_path", d / "pg_model",
        "--model", d / "not_a_model")
    add("pg:join_mismatch", PG, "--data_dir", d / "imhi_pol", "--queries_dir", d / "imhi_q",
        "--model_output_path", d / "pg_join", *pg)
    add("pg:bad_rows", PG, "--data_dir", d / "queries.csv", "--model_output_path", d / "pg_ok", *pg)
    add("pg:reference", PG, "--data_dir", d / "queries12.csv", "--model_output_path", d / "pg_ref",
        "--batch_size", 1, *pg)
    # aligner inference
    ai = ("--aligner_path", tiny, "--template", "hh-rlhf", "--dataset", "hh-rlhf", "--max_new_tokens", 3)
    add("ai:missing_file", AI, "--data_dir", d / "nope.csv", "--model_output_path", d / "ai_missing", *ai)
    add("ai:missing_columns", AI, "--data_dir", d / "policy_nocol.csv", "--model_output_path", d / "ai_cols", *ai)
    add("ai:empty_file", AI, "--data_dir", d / "empty.csv", "--model_output_path", d / "ai_empty", *ai)
    add("ai:non_utf8", AI, "--data_dir", d / "latin1.csv", "--model_output_path", d / "ai_utf8", *ai)
    add("ai:null_answer", AI, "--data_dir", d / "policy_null.jsonl", "--model_output_path", d / "ai_null", *ai)
    add("ai:unknown_objective", AI, "--data_dir", d / "policy.csv", "--model_output_path", d / "ai_key",
        "--aspects", "harmlessness,safety", *ai)
    add("ai:no_template", AI, "--aligner_path", tiny, "--data_dir", d / "policy.csv",
        "--model_output_path", d / "ai_notpl")
    add("ai:bad_model_card", AI, "--aligner_path", d / "bad_card", "--data_dir", d / "policy.csv",
        "--model_output_path", d / "ai_card")
    add("ai:bad_rows", AI, "--data_dir", d / "policy.csv", "--model_output_path", d / "ai_ok", *ai)
    add("ai:reference", AI, "--data_dir", d / "policy12.csv", "--model_output_path", d / "ai_ref",
        "--batch_size", 1, *ai)
    add("ai:remote_code", AI, "--data_dir", d / "policy12.csv", "--limit", 1, "--model_output_path", d / "ai_evil",
        "--aligner_path", d / "evil_code", "--template", "hh-rlhf", "--dataset", "hh-rlhf", "--max_new_tokens", 2)
    add("ai:pickle_weights", AI, "--data_dir", d / "policy12.csv", "--limit", 1, "--model_output_path",
        d / "ai_pickle", "--aligner_path", d / "evil_pickle", "--template", "hh-rlhf", "--dataset", "hh-rlhf",
        "--max_new_tokens", 2)
    # judge (scripted servers run in the test process)
    def jd(server):
        return ("--base_url", servers[server].base_url, "--judge_model", "scripted-judge", "--dataset", "hh-rlhf",
                "--aspects", "harmlessness", "--target", "aligned_responses", "--concurrency", 2, "--seed", 0)

    add("jd:missing_file", JD, "--input", d / "nope.csv", "--output_dir", d / "jd_missing", *jd("good"))
    add("jd:missing_columns", JD, "--input", d / "aligned_nocol.csv", "--output_dir", d / "jd_cols", *jd("good"))
    add("jd:empty_file", JD, "--input", d / "empty.csv", "--output_dir", d / "jd_empty", *jd("good"))
    add("jd:non_utf8", JD, "--input", d / "latin1.csv", "--output_dir", d / "jd_utf8", *jd("good"))
    add("jd:unknown_objective", JD, "--input", d / "aligned.csv", "--output_dir", d / "jd_key", *jd("good"),
        "--aspects", "safety")
    add("jd:unknown_dataset", JD, "--input", d / "aligned.csv", "--output_dir", d / "jd_tpl", *jd("good"),
        "--dataset", "no-such-dataset")
    add("jd:unknown_prompt", JD, "--input", d / "aligned.csv", "--output_dir", d / "jd_prompt", *jd("good"),
        "--judge_prompt", "no-such-prompt")
    add("jd:bad_rows", JD, "--input", d / "aligned.csv", "--output_dir", d / "jd_ok", *jd("good"),
        "--target", "aligned_responses,origin_responses")
    add("jd:storm_429", JD, "--input", d / "rows8", "--output_dir", d / "jd_429", *jd("storm"))
    add("jd:errors_500", JD, "--input", d / "rows8", "--output_dir", d / "jd_500", *jd("err500"))
    add("jd:timeouts", JD, "--input", d / "rows8", "--output_dir", d / "jd_timeout", *jd("slow_first"),
        "--timeout", 1)
    add("jd:malformed", JD, "--input", d / "rows8", "--output_dir", d / "jd_malformed", *jd("malformed"))
    add("jd:truncated", JD, "--input", d / "rows8", "--output_dir", d / "jd_truncated", *jd("truncated"))
    add("jd:max_cost", JD, "--input", d / "rows8", "--output_dir", d / "jd_cost", *jd("good"),
        "--concurrency", 1, "--price_per_1k_input", 1, "--price_per_1k_output", 0, "--max_cost", 0.35,
        snapshot=d / "jd_cost")
    add("jd:max_cost_resume", JD, "--input", d / "rows8", "--output_dir", d / "jd_cost", *jd("good"),
        "--concurrency", 1, "--price_per_1k_input", 1, "--price_per_1k_output", 0, "--max_cost", 100, "--resume")
    add("jd:other_seed", JD, "--input", d / "rows8", "--output_dir", d / "jd_seed1", *jd("good"),
        "--target", "origin_responses", "--seed", 1)
    add("jd:reference", JD, "--input", d / "rows40", "--output_dir", d / "jd_ref", *jd("good"), "--concurrency", 1)
    # report (after the judge runs it reads)
    add("rp:missing_file", RP, "--inputs", d / "nope", "--output_dir", d / "rp_missing")
    add("rp:missing_columns", RP, "--inputs", d / "policy.csv", "--output_dir", d / "rp_cols")
    add("rp:empty_file", RP, "--inputs", d / "empty.csv", "--output_dir", d / "rp_empty")
    add("rp:non_utf8", RP, "--inputs", d / "latin1.csv", "--output_dir", d / "rp_utf8")
    add("rp:judge_mismatch", RP, "--inputs", f"{d / 'jd_429'},{d / 'jd_seed1'}", "--output_dir", d / "rp_mismatch")
    add("rp:ok", RP, "--inputs", d / "jd_ok", "--output_dir", d / "rp_ok", "--bootstrap", 50)
    return cases


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llama_dir) -> World:
    d = tmp_path_factory.mktemp("reliability")
    make_inputs(d, tiny_llama_dir)
    servers = {
        "good": ScriptedOpenAIServer(row_judge),
        "storm": ScriptedOpenAIServer(fail_first_requests(row_judge, n=12, status=429, retry_after_ms=5)),
        "err500": ScriptedOpenAIServer(fail_first_per_prompt(row_judge, n=1, status=500, retry_after_ms=5)),
        "slow_first": ScriptedOpenAIServer(first_try_fault(row_judge, Fault(delay=2.5, content="[[1]]"))),
        "malformed": ScriptedOpenAIServer(first_try_fault(row_judge, Fault(body='{"choices": [{"mess'))),
        "truncated": ScriptedOpenAIServer(truncated_on_odd),
    }
    for server in servers.values():
        server.start()
    try:
        cases = make_cases(d, tiny_llama_dir, servers)
        harness = d / "harness.py"
        harness.write_text(HARNESS)
        (d / "cases.json").write_text(json.dumps(cases))
        proc = subprocess.run([sys.executable, str(harness), str(d / "cases.json"), str(d / "results.json")],
                              cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=DEADLINE_S)
        results = json.loads((d / "results.json").read_text()) if (d / "results.json").exists() else {}
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield World(d, tiny_llama_dir, results, servers, harness)
    finally:
        for server in servers.values():
            server.stop()


def expect_error(world: World, name: str, *needles: str, no_output: Path | None = None) -> str:
    """Exit code 2, one ``error: ...`` line as the last line of stderr, no traceback, each needle in
    it, and (when given) no output file at ``no_output``."""
    r = world.result(name)
    assert r["exception"] is None, f"{name}: traceback\n{r['exception']}"
    assert r["code"] == 2, f"{name}: exit code {r['code']}\n{r['stderr'][-2000:]}"
    lines = [line for line in r["stderr"].replace("\r", "\n").splitlines() if line.strip()]
    last = lines[-1]
    assert last.startswith("error: "), f"{name}: last stderr line is {last!r}"
    assert "Traceback" not in r["stderr"]
    for needle in needles:
        assert needle in last, f"{name}: {needle!r} not in {last!r}"
    if no_output is not None:
        assert not no_output.exists(), f"{name}: {no_output} exists after a failed run"
    return last


def expect_ok(world: World, name: str) -> dict:
    r = world.result(name)
    assert r["exception"] is None, f"{name}: traceback\n{r['exception']}"
    assert r["code"] == 0, f"{name}: exit code {r['code']}\n{r['stderr'][-2000:]}"
    return r


# ----------------------------------------------------------------------------- bad input, per stage

ERRORS = [
    # (case, needles in the one-line error, output that must not exist (relative to the world dir))
    ("rl:missing_file", ["nope.jsonl", "file not found"], "rl_missing/r.csv"),
    ("rl:missing_columns", ["pairs_nocol.csv", "needs columns", "chosen_response"], "rl_cols/r.csv"),
    ("rl:empty_file", ["empty.csv", "file is empty"], "rl_empty/r.csv"),
    ("rl:non_utf8", ["pairs_latin1.csv", "line 2", "not UTF-8"], "rl_utf8/r.csv"),
    ("rl:unknown_objective", ["unknown objective 'safety'", "hh-rlhf:harmlessness"], "rl_key/r.csv"),
    ("rl:model_mismatch", ["cannot load model", "not_a_model"], "rl_model/r.csv"),
    ("bd:missing_file", ["nope.csv", "file not found"], "bd_missing/stats.json"),
    ("bd:missing_columns", ["rewards_missing.csv", "2 chosen_score{i}/rejected_score{i} column pairs", "3 objectives"],
     "bd_cols/stats.json"),
    ("bd:empty_file", ["empty.csv", "file is empty"], "bd_empty/stats.json"),
    ("bd:non_utf8", ["latin1.csv", "not UTF-8"], "bd_utf8/stats.json"),
    ("bd:unknown_objective", ["unknown objective 'safety'"], "bd_key/stats.json"),
    ("bd:template_mismatch", ["rewards_bad.csv", "config names 4 objectives"], "bd_tpl/stats.json"),
    ("bd:unknown_template", ["unknown template 'no-such-template'"], "bd_tpl2/stats.json"),
    ("ta:missing_file", ["no_such_dir", "is not a folder"], "ta_missing/metaaligner.json"),
    ("ta:missing_subset", ["train_nofile/warmup/train.json", "build_aligner_dataset.py"], "ta_nofile/metaaligner.json"),
    ("ta:missing_columns", ["train_badconv/warmup/train.json", "row 1", "column 'conversations'"],
     "ta_cols/metaaligner.json"),
    ("ta:empty_file", ["train_empty/warmup/train.json", "file is empty"], "ta_empty/metaaligner.json"),
    ("ta:non_utf8", ["train_latin1/warmup/train.json", "not UTF-8"], "ta_utf8/metaaligner.json"),
    ("ta:unknown_template", ["unknown template 'no-such-template'"], "ta_tpl/metaaligner.json"),
    ("ta:model_mismatch", ["cannot load model", "not_a_model"], "ta_model/metaaligner.json"),
    ("pg:missing_file", ["nope.csv", "no such file"], "pg_missing"),
    ("pg:missing_columns", ["queries_nocol.csv", "column 'query'", "missing column"], "pg_cols"),
    ("pg:empty_file", ["empty.csv", "file is empty"], "pg_empty"),
    ("pg:non_utf8", ["latin1.csv", "not UTF-8"], "pg_utf8"),
    ("pg:model_mismatch", ["cannot load model", "not_a_model"], "pg_model/pol.csv"),
    ("pg:join_mismatch", ["imhi_pol/DR.csv", "row 2", "column 'goldens'", "refusing to join"], "pg_join"),
    ("ai:missing_file", ["nope.csv", "no such file"], "ai_missing"),
    ("ai:missing_columns", ["policy_nocol.csv", "column 'generated_text'", "missing column"], "ai_cols"),
    ("ai:empty_file", ["empty.csv", "file is empty"], "ai_empty"),
    ("ai:non_utf8", ["latin1.csv", "not UTF-8"], "ai_utf8"),
    ("ai:null_answer", ["policy_null.jsonl", "row 1", "column 'generated_text'", "expected text"], "ai_null"),
    ("ai:unknown_objective", ["unknown objective 'safety'"], "ai_key"),
    ("ai:no_template", ["cannot tell which prompt template", "--template"], "ai_notpl"),
    ("ai:bad_model_card", ["unknown template 'no-such-template'"], "ai_card"),
    ("ai:pickle_weights", ["cannot load model", "evil_pickle", "pickle"], "ai_pickle/policy12.csv"),
    ("jd:missing_file", ["nope.csv"], "jd_missing/summary.json"),
    ("jd:missing_columns", ["aligned_nocol.csv", "column 'aligned_responses'", "missing column"], "jd_cols/summary.json"),
    ("jd:empty_file", ["empty.csv", "file is empty"], "jd_empty/summary.json"),
    ("jd:non_utf8", ["latin1.csv", "not UTF-8"], "jd_utf8/summary.json"),
    ("jd:unknown_objective", ["unknown objective 'safety'"], "jd_key/summary.json"),
    ("jd:unknown_dataset", ["unknown dataset config 'no-such-dataset'"], "jd_tpl/summary.json"),
    ("jd:unknown_prompt", ["unknown judge prompt 'no-such-prompt'"], "jd_prompt/summary.json"),
    ("rp:missing_file", ["nope", "not found"], "rp_missing"),
    ("rp:missing_columns", ["policy.csv", "not a judge per-row file"], "rp_cols"),
    ("rp:empty_file", ["empty.csv", "not a judge per-row file"], "rp_empty"),
    ("rp:non_utf8", ["latin1.csv", "not UTF-8"], "rp_utf8"),
    ("rp:judge_mismatch", ["different candidate positions"], "rp_mismatch/table2.md"),
]


@pytest.mark.parametrize("name,needles,output", ERRORS,
                         ids=[(e.values[0] if hasattr(e, "values") else e[0]) for e in ERRORS])
def test_bad_input_is_one_line_error_and_no_output(world, name, needles, output):
    expect_error(world, name, *needles, no_output=world.d / output)


def test_error_lines_name_the_file_row_and_column_where_there_is_one(world):
    """The cases whose fault sits in one cell say which (file, row, column), 1-based data rows."""
    assert expect_error(world, "ai:null_answer").endswith(
        "policy_null.jsonl: row 1, column 'generated_text': expected text, got NoneType")
    assert "DR.csv: row 2, column 'goldens'" in expect_error(world, "pg:join_mismatch")
    assert "row 1, column 'conversations'" in expect_error(world, "ta:missing_columns")


# ----------------------------------------------------------------------------- bad rows inside good files

def test_reward_labelling_counts_empty_and_overlong_rows(world):
    r = expect_ok(world, "rl:bad_rows")
    assert "4 rows in, 2 out, dropped 2 (empty_response=1, too_long=1)" in r["stdout"]
    rows = read_records(world.d / "rl_ok/r.csv")
    # the literal text "nan" is an answer like any other; the empty and the 100k-character answers are not scored
    assert [r["chosen_response"] for r in rows] == ["Mix flour, water, yeast and salt, let it rise, then bake it.", "nan"]
    stats = json.loads((world.d / "rl_ok/r.reward_stats.json").read_text())
    assert stats["dropped"] == {"empty_response": 1, "too_long": 1}
    assert stats["dropped_row_ids"]["empty_response"] == [1]


def test_reward_labelling_counts_null_and_nan_responses(world):
    r = expect_ok(world, "rl:null_rows")
    assert "2 rows in, 0 out, dropped 2 (empty_response=2)" in r["stdout"]


def test_algorithm1_counts_bad_rows_and_keeps_long_text_verbatim(world):
    r = expect_ok(world, "bd:bad_rows")
    stats = json.loads((world.d / "bd_ok/stats.json").read_text())
    assert stats["dropped_rows"] == {"empty_response": 1, "non_finite_score": 1}  # issue 16: NaN apart
    items = json.loads((world.d / "bd_ok/warmup/train.json").read_text())
    targets = [i["conversations"][1]["value"] for i in items]
    assert "z" * LONG in targets  # kept whole; training decides how to truncate
    assert "4 rows in, 2 pairs used, dropped 2" in r["stdout"]


def test_training_truncates_long_items_counts_them_and_saves_safetensors(world):
    r = expect_ok(world, "ta:long_target")
    assert re.search(r"\[warmup\] \d+ items \(1 truncated\)", r["stdout"]), r["stdout"][-800:]
    out = world.d / "ta_ok"
    assert json.loads((out / "metaaligner.json").read_text())["template"] == "hh-rlhf"
    assert (out / "adapter_model.safetensors").is_file()
    pickled_weights = [p for p in out.rglob("*") if p.name in ("adapter_model.bin", "pytorch_model.bin", "model.bin")]
    assert pickled_weights == []


def test_policy_generation_answers_every_query_and_counts_shortened_prompts(world):
    r = expect_ok(world, "pg:bad_rows")
    rows = read_records(world.d / "pg_ok/pol.csv")
    assert [x["query"] for x in rows] == ["Q1?", "", "q" * LONG]
    assert [x["goldens"] for x in rows] == ["G1", "G2", "G3"]
    assert "1 prompts shortened to fit the context" in r["stdout"]
    assert "prompts were longer than" not in r["stderr"]  # fitted before the backend saw them


def test_aligner_inference_aligns_empty_answers_as_empty_and_counts_shortened_prompts(world):
    r = expect_ok(world, "ai:bad_rows")
    assert re.search(r"3 rows in, 3 aligned, 0 resumed, 1 empty answers \(aligned as ''\), \d+ empty outputs, "
                     r"1 prompts shortened to fit the context", r["stdout"]), r["stdout"]
    assert "prompts were longer than" not in r["stderr"]  # fitted before the backend saw them
    rows = read_records(world.d / "ai_ok/policy.csv")
    assert [x["origin_responses"] for x in rows] == ["A1", "", "x" * LONG]
    assert all(x["aspects"] == "harmlessness,helpfulness,humour" and x["template"] == "hh-rlhf" for x in rows)


def test_judge_judges_empty_and_long_answers_without_crashing(world):
    r = expect_ok(world, "jd:bad_rows")
    rows = judged_rows(world.d / "jd_ok/pairwise")
    assert sorted((x["target"], int(x["row"])) for x in rows) == sorted(
        (t, i) for t in ("aligned_responses", "origin_responses") for i in range(3))
    by = {(x["target"], int(x["row"])): x["verdict"] for x in rows}
    # candidates cand-0 / cand-2 (even) win; the empty answer and the originals have no cand- marker
    assert by[("aligned_responses", 0)] == "win" and by[("aligned_responses", 2)] == "win"
    assert "2/2 output files complete" in r["stdout"]


def test_report_rejects_or_counts_unknown_verdicts(world, tmp_path):
    import shutil

    from metaaligner.reports import write_reports

    judged = tmp_path / "judged"
    shutil.copytree(world.d / "jd_ok", judged)
    path = next(p for p in judged.rglob("harmlessness.csv") if "aligned_responses" in str(p))
    rows = read_records(path)
    rows[0]["verdict"] = "nan"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    try:
        written = write_reports(tmp_path / "rp", [str(judged)], n_boot=10)
    except Exception as exc:  # a one-line error naming the file and row would pass
        assert "nan" in str(exc) and "row" in str(exc)
        return
    assert "invalid" in (tmp_path / "rp/table2.md").read_text() or written["table2"][0].n == 2


def test_report_regenerates_tables_from_good_verdicts(world):
    r = expect_ok(world, "rp:ok")
    table = (world.d / "rp_ok/table2.md").read_text()
    assert "| aligned |" in table and "Harmlessness" in table
    assert "table2.csv" in r["stdout"]


# ----------------------------------------------------------------------------- judge faults

def _assert_every_row_correct(rows: list[dict], n: int) -> None:
    """Each row exactly once, with the verdict that its own prompt implies (no reused reply)."""
    assert sorted(int(x["row"]) for x in rows) == list(range(n))
    for x in rows:
        assert x["verdict"] == ("win" if int(x["row"]) % 2 == 0 else "loss"), x


@pytest.mark.parametrize("case,folder", [("jd:storm_429", "jd_429"), ("jd:errors_500", "jd_500"),
                                         ("jd:timeouts", "jd_timeout"), ("jd:malformed", "jd_malformed")])
def test_judge_faults_lose_no_row_and_reuse_no_reply(world, case, folder):
    r = expect_ok(world, case)
    _assert_every_row_correct(judged_rows(world.d / folder / "pairwise"), 8)
    assert "judged 8/8 rows" in r["stdout"], r["stdout"][-600:]


def test_judge_fault_servers_really_failed(world):
    s = world.servers
    assert s["storm"].fault_count == 12
    assert s["err500"].fault_count == 8 and s["malformed"].fault_count == 8
    assert s["slow_first"].request_count >= 16  # every row timed out once, then was retried


def test_judge_counts_truncated_replies_as_invalid_never_as_wins(world):
    r = expect_ok(world, "jd:truncated")
    rows = judged_rows(world.d / "jd_truncated/pairwise")
    assert sorted(int(x["row"]) for x in rows) == list(range(8))
    for x in rows:
        if int(x["row"]) % 2:
            assert x["verdict"] == "invalid" and x["reply"] == "[[" and x["reminder_reply"] == "[[", x
        else:
            assert x["verdict"] == "win"
    assert "W/T/L/invalid=4/0/0/4" in r["stdout"]


def test_judge_stops_cleanly_at_max_cost_and_resumes(world):
    last = expect_error(world, "jd:max_cost", "--max_cost")
    assert "re-run with --resume" in last
    out = world.d / "jd_cost/pairwise/policy/aligned_responses"
    # stopped mid-file: the judged rows sit in the partial file; nothing looks complete
    files = world.result("jd:max_cost")["files"]
    rows_file = "pairwise/policy/aligned_responses/harmlessness"
    assert f"{rows_file}.csv.partial.jsonl" in files
    assert f"{rows_file}.csv" not in files and f"{rows_file}.summary.json" not in files
    r = expect_ok(world, "jd:max_cost_resume")
    _assert_every_row_correct(read_records(out / "harmlessness.csv"), 8)
    done, resumed = map(int, re.search(r"judged (\d)/8 rows \((\d) resumed\)", r["stdout"]).groups())
    assert resumed >= 1 and done + resumed == 8


# ----------------------------------------------------------------------------- security

def test_planted_api_key_never_reaches_outputs_or_logs(world):
    """Every stage ran with OPENAI_API_KEY planted in its environment (and the judge really sent it):
    no output file, cache, log or console line contains it."""
    assert world.servers["good"].ok_count > 40  # the judge cases really called the server
    leaks = [name for name, r in world.results.items()
             if PLANTED_KEY in r["stdout"] or PLANTED_KEY in r["stderr"] or PLANTED_KEY in (r["exception"] or "")]
    assert leaks == []
    key = PLANTED_KEY.encode()
    files = [p for p in world.d.rglob("*") if p.is_file() and p.name not in ("cases.json", "harness.py")]
    assert len(files) > 50
    assert [str(p) for p in files if key in p.read_bytes()] == []


def test_remote_code_is_never_run_and_pickles_are_never_unpickled(world):
    expect_ok(world, "ai:remote_code")  # auto_map ignored: the native LLaMA class loads the weights
    assert not (world.d / "PWNED_CODE").exists()
    assert not (world.d / "PWNED_PICKLE").exists()


def test_no_unsafe_loading_in_the_code():
    """trust_remote_code only when asked (default False everywhere); no pickle/torch.load without
    weights_only in our code."""
    offenders = []
    for path in [*REPO.glob("metaaligner/**/*.py"), *REPO.glob("*/*.py"), *REPO.glob("baseline_models/**/*.py")]:
        if "tests" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"trust_remote_code\s*=\s*True", text):
            offenders.append(f"{path}: trust_remote_code=True")
        if re.search(r"\bpickle\.loads?\(|\bjoblib\.load\(|\bdill\.load", text):
            offenders.append(f"{path}: pickle load")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            if "weights_only=True" not in call:
                offenders.append(f"{path}: {call}")
    assert offenders == []
    import inspect

    from metaaligner.models import load_causal_lm, load_tokenizer

    for fn in (load_causal_lm, load_tokenizer):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False


# ----------------------------------------------------------------------------- SIGKILL + --resume

KILLS = [
    # (reference case, script, argv after the shared ones, partial file, final output, key columns)
    ("ai:reference", AI, "ai", "policy12.csv.partial.jsonl", "policy12.csv"),
    ("pg:reference", PG, "pg", "pol.csv.partial.jsonl", "pol.csv"),
    ("rl:reference", RL, "rl", "r.csv.rows0-12of12.jsonl.partial.jsonl", "r.csv"),
    ("jd:reference", JD, "jd", "pairwise/policy/aligned_responses/harmlessness.csv.partial.jsonl",
     "pairwise/policy/aligned_responses/harmlessness.csv"),
]


def _kill_argv(world: World, kind: str, out: Path) -> list[str]:
    d, tiny = world.d, world.tiny
    if kind == "ai":
        return [AI, "--aligner_path", tiny, "--template", "hh-rlhf", "--dataset", "hh-rlhf", "--max_new_tokens", 3,
                "--data_dir", d / "policy12.csv", "--model_output_path", out, "--batch_size", 1]
    if kind == "pg":
        return [PG, "--model", tiny, "--model_name", "pol", "--max_new_tokens", 3, "--data_dir", d / "queries12.csv",
                "--model_output_path", out, "--batch_size", 1]
    if kind == "rl":
        return [RL, "--input", d / "pairs12.csv", "--output", out / "r.csv", "--chunk_size", 2, "--model", tiny,
                "--batch_size", 4]
    return [JD, "--input", d / "rows40", "--output_dir", out, "--base_url", world.servers["slow"].base_url,
            "--judge_model", "scripted-judge", "--dataset", "hh-rlhf", "--aspects", "harmlessness",
            "--target", "aligned_responses", "--concurrency", 1, "--seed", 0]


def _comparable(rows: list[dict]) -> list[dict]:
    # per-call bookkeeping (calls made vs served from cache, time) legitimately differs after a resume
    # judge_config: since issue 16 it names the endpoint, and the reference ran against another server
    drop = {"calls", "cached_calls", "cost_usd", "judge_config"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("ref,script,kind,partial,final", KILLS, ids=[k[2] for k in KILLS])
def test_sigkill_then_resume_yields_every_row_exactly_once(world, tmp_path, ref, script, kind, partial, final):
    expect_ok(world, ref)
    reference = read_records(world.d / {"ai": "ai_ref", "pg": "pg_ref", "rl": "rl_ref", "jd": "jd_ref"}[kind] / final)
    if kind == "jd":
        world.servers["slow"] = ScriptedOpenAIServer(row_judge, delay=0.1).start()
    out = tmp_path / "out"
    argv = [sys.executable] + [str(a) for a in _kill_argv(world, kind, out)]
    rng = random.Random(f"kill|{kind}|0")
    lines_before_kill = rng.randint(1, 3 if kind != "jd" else 20)  # a seeded random point mid-run
    try:
        with open(tmp_path / "child.err", "wb") as err:
            proc = subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=err)
        # a run that finishes before the kill point fails the wait, with its stderr (metaaligner.testing.waits)
        wait_for(lambda: (out / partial).exists() and (out / partial).read_bytes().count(b"\n") >= lines_before_kill,
                 f"{kind}: {lines_before_kill} rows in {partial} (to kill the run mid-way)", process=proc,
                 interval=0.01, log=tmp_path / "child.err")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert not (out / final).exists(), "a killed run left an output that looks complete"
        assert (out / partial).exists()
        resumed = subprocess.run(argv + ["--resume"], cwd=REPO, env=child_env(), capture_output=True, text=True,
                                 timeout=DEADLINE_S)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    finally:
        if kind == "jd":
            world.servers.pop("slow").stop()
    again = read_records(out / final)
    assert not (out / partial).exists()
    assert _comparable(again) == _comparable(reference)
    if kind in ("ai", "pg"):
        assert re.search(r"12 rows in, \d+ aligned, [1-9]\d* resumed|12 queries, \d+ generated, [1-9]\d* resumed",
                         resumed.stdout), resumed.stdout[-500:]
