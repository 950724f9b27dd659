"""Every row-wise stage shards the same way (metaaligner/sharding.py): under torchrun each rank its
slice and rank 0 merges; ``--shard I/N`` jobs each write one shard and never wait, ``--merge`` joins
them; the merged output is byte-identical to one process; a merge refuses a missing or mismatched
shard, naming it; ``--resume`` reuses the shards' rows at any process count."""
from __future__ import annotations

import gzip
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from metaaligner import cli
from metaaligner.io import write_csv, write_jsonl
from metaaligner.testing import ScriptedOpenAIServer
from metaaligner.testing.scripts import load_script
from metaaligner.testing.waits import DEADLINE_S

REPO = Path(__file__).resolve().parent.parent
HH_SAMPLE = REPO / "samples" / "hh-rlhf-harmless-base" / "harmless-base-test.jsonl.gz"


def run(script: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """``python SCRIPT ARGV`` in this process: (exit code, stdout, stderr)."""
    module = load_script(script)
    code = cli.run_main(module.main, *cli.parse(module.make_parser(), [str(a) for a in argv]))
    out = capsys.readouterr()
    return code, out.out, out.err


def three_ways(script: str, base: list, out_flag: str, one: Path, two: Path, capsys, shards=("1/2", "0/2")):
    """One process into ``one``; the ``--shard`` jobs (in that order) then ``--merge`` into ``two``."""
    code, _, err = run(script, [*base, out_flag, one], capsys)
    assert code == 0, err
    for shard in shards:
        code, out, err = run(script, [*base, out_flag, two, "--shard", shard], capsys)
        assert code == 0, err
    code, out, err = run(script, [*base, out_flag, two, "--merge"], capsys)
    assert code == 0, err
    return out


def same_bytes(a: Path, b: Path) -> None:
    assert a.read_bytes() == b.read_bytes(), f"{a} and {b} differ"


def no_shards(folder: Path) -> None:
    assert [p.name for p in folder.rglob("*") if ".rows" in p.name] == []


def policy_outputs(path: Path, n: int = 5) -> Path:
    rows = [{"query": f"Question {i}: how do I keep {i} plants alive?", "goldens": f"golden {i}",
             "generated_text": f"Water them {i} times a week and keep them in the sun."} for i in range(n)]
    write_csv(path, rows, ["query", "goldens", "generated_text"])
    return path


def aligner_args(tiny, data) -> list:
    return ["--aligner_path", tiny, "--template", "hh-rlhf", "--aspects", "harmlessness,helpfulness",
            "--data_dir", data, "--max_new_tokens", "6", "--batch_size", "2", "--device", "cpu"]


# ---------------------------------------------------------------- --shard I/N + --merge = one process

def test_aligner_inference_two_shards_and_merge_equal_one_process(tiny_llama_dir, tmp_path, capsys):
    data = policy_outputs(tmp_path / "pol.csv")
    base = aligner_args(tiny_llama_dir, data)
    script = "inference/aligner_inference.py"
    assert run(script, [*base, "--model_output_path", tmp_path / "one"], capsys)[0] == 0
    code, out, _ = run(script, [*base, "--model_output_path", tmp_path / "two", "--shard", "1/2"], capsys)
    assert code == 0 and f"-> {tmp_path / 'two' / 'pol.csv.rows2-5of5.jsonl'}" in out
    assert not (tmp_path / "two" / "pol.csv").exists()          # a shard job writes its shard only
    run(script, [*base, "--model_output_path", tmp_path / "two", "--shard", "0/2"], capsys)
    code, out, _ = run(script, [*base, "--model_output_path", tmp_path / "two", "--merge"], capsys)
    assert code == 0 and "pol: 5 rows in, 0 aligned, 5 resumed" in out
    same_bytes(tmp_path / "one" / "pol.csv", tmp_path / "two" / "pol.csv")
    no_shards(tmp_path / "two")
    assert run(script, [*base, "--model_output_path", tmp_path / "two", "--merge"], capsys)[0] == 0   # merged: a no-op
    same_bytes(tmp_path / "one" / "pol.csv", tmp_path / "two" / "pol.csv")


def test_merge_refuses_a_missing_or_mismatched_shard_naming_it(tiny_llama_dir, tmp_path, capsys):
    data = policy_outputs(tmp_path / "pol.csv")
    base = [*aligner_args(tiny_llama_dir, data), "--model_output_path", tmp_path / "out"]
    script = "inference/aligner_inference.py"
    assert run(script, [*base, "--shard", "0/2"], capsys)[0] == 0
    code, _, err = run(script, [*base, "--merge"], capsys)
    assert (code, err) == (2, f"error: {tmp_path / 'out' / 'pol.csv'}: cannot merge: input rows 3-5 of 5 are in no "
                              "finished shard: shard 1/2 (pol.csv.rows2-5of5.jsonl) is missing; run the missing "
                              "--shard jobs (--resume keeps their finished rows), then --merge again\n")
    # the other slice made with another setting: refused, naming the shard and the difference
    assert run(script, [*base, "--shard", "1/2", "--max_new_tokens", "5"], capsys)[0] == 0
    code, _, err = run(script, [*base, "--merge"], capsys)
    assert code == 2 and err.startswith(f"error: {tmp_path / 'out' / 'pol.csv.rows2-5of5.jsonl'}: a shard made with "
                                        "other settings (--max_new_tokens: 5 -> 6; ")
    # shards of another number of input rows (--limit)
    (tmp_path / "out" / "pol.csv.rows2-5of5.jsonl").unlink()
    assert run(script, [*base, "--shard", "1/2", "--limit", "4"], capsys)[0] == 0
    code, _, err = run(script, [*base, "--merge"], capsys)
    assert (code, err) == (2, f"error: {tmp_path / 'out' / 'pol.csv.rows2-4of4.jsonl'}: a shard of 4 input rows, but "
                              "the input has 5 (another input or --limit); delete it, or merge with that input\n")
    # --shard and --merge are for jobs started on their own
    code, _, err = run(script, [*base, "--shard", "2/2"], capsys)
    assert (code, err) == (2, "error: --shard must be I/N with 0 <= I < N (slice I of N, e.g. --shard 0/4), got "
                              "'2/2'\n")


def test_resume_from_two_shards_at_one_process_redoes_nothing(tiny_llama_dir, tmp_path, capsys):
    data = policy_outputs(tmp_path / "pol.csv")
    base = aligner_args(tiny_llama_dir, data)
    script = "inference/aligner_inference.py"
    assert run(script, [*base, "--model_output_path", tmp_path / "one"], capsys)[0] == 0
    for shard in ("0/2", "1/2"):
        assert run(script, [*base, "--model_output_path", tmp_path / "two", "--shard", shard], capsys)[0] == 0
    # a third count reuses the rows of its slice too (shards are named by rows, not by process count)
    code, out, _ = run(script, [*base, "--model_output_path", tmp_path / "two", "--shard", "2/3", "--resume"], capsys)
    assert code == 0 and "0 aligned, 2 resumed" in out
    code, out, _ = run(script, [*base, "--model_output_path", tmp_path / "two", "--resume"], capsys)
    assert code == 0 and "pol: 5 rows in, 0 aligned, 5 resumed" in out
    same_bytes(tmp_path / "one" / "pol.csv", tmp_path / "two" / "pol.csv")
    no_shards(tmp_path / "two")                                # covered by the output now: removed, locks too


def test_policy_generation_shards(tiny_llama_dir, tmp_path, capsys):
    data = policy_outputs(tmp_path / "queries.csv")
    base = ["--model", tiny_llama_dir, "--model_name", "pol", "--data_dir", data, "--max_new_tokens", "6",
            "--batch_size", "2", "--device", "cpu", "--chat_template", "false"]
    three_ways("inference/policy_generation.py", base, "--model_output_path", tmp_path / "one", tmp_path / "two",
               capsys)
    same_bytes(tmp_path / "one" / "pol.csv", tmp_path / "two" / "pol.csv")
    no_shards(tmp_path / "two")


def test_reward_labelling_shards(tiny_llama_dir, tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    with gzip.open(HH_SAMPLE, "rt", encoding="utf-8") as fh:
        src.write_text("".join(next(fh) for _ in range(7)))
    base = ["--input", src, "--model", tiny_llama_dir, "--batch_size", "3", "--device", "cpu",
            "--reward_names", "harmless,helpful"]
    script = "dynamic_multi_objective_dataset/reward_labelling.py"
    assert run(script, [*base, "--output", tmp_path / "one.csv"], capsys)[0] == 0
    for shard in ("1/2", "0/2"):
        code, out, _ = run(script, [*base, "--output", tmp_path / "two.csv", "--shard", shard], capsys)
        assert code == 0 and "merge with --merge once every shard is there" in out   # it never waits
    assert run(script, [*base, "--output", tmp_path / "two.csv", "--merge"], capsys)[0] == 0
    same_bytes(tmp_path / "one.csv", tmp_path / "two.csv")
    no_shards(tmp_path)


def test_baseline_inference_shards(tiny_llama_dir, tmp_path, capsys):
    data = policy_outputs(tmp_path / "pol.csv")
    base = ["--aligner_path", tiny_llama_dir, "--data_dir", data, "--dataset", "hh-rlhf", "--conditioning", "none",
            "--max_new_tokens", "6", "--batch_size", "2", "--device", "cpu"]
    out = three_ways("baseline_models/sft/sft_inference.py", base, "--model_output_path", tmp_path / "one",
                     tmp_path / "two", capsys)
    assert "5 rows in, 0 generated (5 resumed)" in out
    same_bytes(tmp_path / "one" / "pol.csv", tmp_path / "two" / "pol.csv")
    no_shards(tmp_path / "two")


def judge_input(path: Path, n: int = 5) -> Path:
    rows = [{"query": f"Q{i}: how do I do thing {i}?", "goldens": f"golden answer {i}",
             "origin_responses": f"original answer {i}", "aligned_responses": f"aligned answer {i}",
             "template": "hh-rlhf"} for i in range(n)]
    write_csv(path, rows, list(rows[0]))
    return path


def scripted_reply(request: dict) -> str:
    """A verdict that depends on the row (its query number) and on the candidate's position."""
    i = int(re.search(r"Q(\d+): how do I", request["messages"][-1]["content"]).group(1))
    return "[[1]]" if i % 2 else "[[2]]" if i % 3 else "[[0]]"


def judge_args(inp: Path, server) -> list:
    return ["--input", inp, "--dataset", "hh-rlhf", "--aspects", "harmlessness,helpfulness", "--base_url",
            server.base_url, "--judge_model", "scripted-judge", "--concurrency", "2"]


def verdict_files(out: Path) -> list[Path]:
    return sorted(p.relative_to(out) for p in out.rglob("*.csv"))


def test_judge_shards(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    inp = judge_input(tmp_path / "in" / "pol.csv")
    with ScriptedOpenAIServer(scripted_reply) as server:
        out = three_ways("evaluation/judge.py", judge_args(inp, server), "--output_dir", tmp_path / "one",
                         tmp_path / "two", capsys)
    assert "merged the shards: " in out and "pol aligned_responses harmlessness: n=5" in out
    files = verdict_files(tmp_path / "one")
    assert files == verdict_files(tmp_path / "two") and len(files) == 5   # 2 targets x 2 objectives + summary.csv
    for name in files:
        same_bytes(tmp_path / "one" / name, tmp_path / "two" / name)
    no_shards(tmp_path / "two")


def test_sepo_scoring_shards(tiny_llama_dir, tmp_path, capsys):
    pairs = [{"prompt": f"Human: tell me about thing {i}\n\nAssistant:", "chosen": f" Thing {i} is a useful "
              "tool that many people like to use every day.", "rejected": f" No idea about {i}."} for i in range(5)]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    base = ["--input", tmp_path / "pairs.jsonl", "--oracle", tiny_llama_dir, "--reference", tiny_llama_dir,
            "--batch_size", "2", "--ratio", "0.5"]
    three_ways("baseline_models/sepo/select_tokens.py", base, "--output", tmp_path / "one.jsonl",
               tmp_path / "two.jsonl", capsys)
    same_bytes(tmp_path / "one.jsonl", tmp_path / "two.jsonl")
    same_bytes(tmp_path / "one.skipped.jsonl", tmp_path / "two.skipped.jsonl")
    no_shards(tmp_path)


# ---------------------------------------------------------------- torchrun: each rank its slice, rank 0 merges

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str, args: list) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO), OPENAI_API_KEY="sk-test")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), script, *[str(a) for a in args]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DEADLINE_S, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_aligner_inference_under_torchrun_equals_one_process(tiny_llama_dir, tmp_path, capsys):
    data = policy_outputs(tmp_path / "pol.csv")
    base = aligner_args(tiny_llama_dir, data)
    assert run("inference/aligner_inference.py", [*base, "--model_output_path", tmp_path / "one"], capsys)[0] == 0
    proc = torchrun("inference/aligner_inference.py", [*base, "--model_output_path", tmp_path / "two"])
    assert "pol: 5 rows in, 3 aligned" in proc.stdout           # rank 1: rows 3-5 of its shard, then rank 0 merges
    assert "pol: 5 rows in, 2 aligned" in proc.stdout
    same_bytes(tmp_path / "one" / "pol.csv", tmp_path / "two" / "pol.csv")
    no_shards(tmp_path / "two")


@pytest.mark.slow
def test_judge_under_torchrun_equals_one_process(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    inp = judge_input(tmp_path / "in" / "pol.csv")
    with ScriptedOpenAIServer(scripted_reply) as server:
        assert run("evaluation/judge.py", [*judge_args(inp, server), "--output_dir", tmp_path / "one"], capsys)[0] == 0
        torchrun("evaluation/judge.py", [*judge_args(inp, server), "--output_dir", tmp_path / "two"])
        assert server.request_count == 2 * 20                      # each row once per run: 5 rows x 2 x 2
    files = verdict_files(tmp_path / "one")
    assert files == verdict_files(tmp_path / "two") and len(files) == 5
    for name in files:
        same_bytes(tmp_path / "one" / name, tmp_path / "two" / name)
    no_shards(tmp_path / "two")


def test_ranks_started_by_hand_are_told_to_use_shard(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    """RANK/WORLD_SIZE set by hand (no launcher): rank 0 waits for a rank that never comes, then says how
    to start such jobs; with --shard I/N no job waits, and --shard under a launcher is refused."""
    src = tmp_path / "pairs.jsonl"
    with gzip.open(HH_SAMPLE, "rt", encoding="utf-8") as fh:
        src.write_text("".join(next(fh) for _ in range(4)))
    base = ["--input", src, "--model", tiny_llama_dir, "--device", "cpu", "--reward_names", "harmless",
            "--output", tmp_path / "r.csv"]
    script = "dynamic_multi_objective_dataset/reward_labelling.py"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run(script, [*base, "--shard_timeout_s", "0.5"], capsys)
    assert (code, err.splitlines()[-1]) == (
        2, f"error: {tmp_path / 'r.csv'}: timed out after 0.5 s waiting for the other ranks' shards "
           "(r.csv.rows2-4of4.jsonl); ranks started by hand, not by torchrun, never come: start such jobs with "
           "--shard I/N and merge with --merge")
    code, _, err = run(script, [*base, "--shard", "0/2"], capsys)
    assert (code, err) == (2, "error: --shard/--merge are for jobs started on their own; under torchrun/accelerate "
                              "launch (WORLD_SIZE=2) every rank takes its slice and rank 0 merges\n")
