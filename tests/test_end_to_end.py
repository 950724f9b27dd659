"""End to end: the demo pipeline at tiny scale, the paper-scale configs, and the Python API.

- ``scripts/reproduce_demo.sh`` with ``SCALE=tiny`` and a tiny random LLaMA: every stage script runs as
  a subprocess (reward labelling -> Algorithm 1 -> 3-step LoRA training -> policy generation -> aligner
  inference on HH-RLHF, UltraFeedback (seen + unseen objectives) and IMHI -> judging through
  ``transformers serve`` -> Table 2, Table 3, Figure 3); then a second run does no work, and deleting
  one artefact re-runs only the stages from it on.
- ``configs/paper/*.yaml``: every flag is a real flag of its stage script; the runner prints the
  commands; a missing input file stops it with a one-line error.
- ``from metaaligner import Aligner``: lazy import, the three-line model-card example, batching,
  registry keys and free-text objectives.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from metaaligner.io import read_records
from metaaligner.testing.waits import DEADLINE_S

REPO = Path(__file__).resolve().parent.parent
PLANTED_KEY = "sk-planted-e2e-0123456789SECRET"


def _env(**extra) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO),
            "OPENAI_API_KEY": PLANTED_KEY, **extra}


# ----------------------------------------------------------------------------- the Python API

def test_import_metaaligner_is_cheap_and_aligner_is_lazy():
    code = ("import sys, metaaligner; assert 'torch' not in sys.modules and 'metaaligner.aligner' not in sys.modules; "
            "from metaaligner import Aligner; assert Aligner.__module__ == 'metaaligner.aligner.inference'; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "assert 'Aligner' in dir(metaaligner); print(metaaligner.__version__)")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=DEADLINE_S)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.1.0"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import metaaligner

        metaaligner.nope  # noqa: B018


def test_python_api_three_lines(tiny_llama_dir):
    """The model-card example: load, ``align(question, answer, objectives)``; batched over lists with the
    same result as one by one (greedy); keys and free-text descriptions both work."""
    from metaaligner import Aligner, GenerationParams

    aligner = Aligner(str(tiny_llama_dir), template="hh-rlhf", params=GenerationParams(max_new_tokens=4))
    one = aligner.align("How do I boil an egg?", "Put it in water.", "harmlessness,helpfulness")
    assert isinstance(one, str)
    questions = ["How do I boil an egg?", "What is 2+2?", "Tell me a joke."]
    answers = ["Put it in water.", "", "No."]
    batch = aligner.align(questions, answers, "harmlessness,helpfulness")
    assert isinstance(batch, list) and len(batch) == 3
    assert batch[0] == one
    assert batch == [aligner.align(q, a, "harmlessness,helpfulness") for q, a in zip(questions, answers)]
    # registry keys and free text: the prompt carries the descriptions, joined with '; ', in order
    prompt = aligner.prompts("Q?", "A.", ["helpfulness", "Brevity: the response should be short"])
    assert prompt == ("You are an assistant to human. You will be provided with a context and an answer. Consider "
                      "the context, then edit the answer to improve it considering these aspects: Helpfulness: The "
                      "response should provide useful resources and suggestions to the user; Brevity: the response "
                      "should be short | Context: Q? | Answer: A. | Edit: ")
    assert isinstance(aligner.align("Q?", "A.", ["helpfulness", "Brevity: the response should be short"]), str)
    from metaaligner.errors import MetaAlignerError

    with pytest.raises(MetaAlignerError, match="unknown objective 'brevity'"):
        aligner.align("Q?", "A.", "brevity")


def test_python_api_default_needs_no_flag_and_loads_nothing_for_prompts():
    from metaaligner import Aligner

    aligner = Aligner()  # the built-in default: demo aligner when shipped, else embedded SmolLM2
    assert aligner.source.template == "hh-rlhf"
    assert aligner._generator is None
    assert aligner.prompts(["q1", "q2"], ["a1", "a2"], "humour")[1].endswith("| Context: q2 | Answer: a2 | Edit: ")
    assert aligner._generator is None


# ----------------------------------------------------------------------------- configs/paper

@pytest.mark.parametrize("name", ["hh-rlhf", "ultrafeedback", "imhi"])
def test_paper_configs_use_real_flags(name):
    from metaaligner.paper import check_flags, load_paper_config

    path = REPO / "configs/paper" / f"{name}.yaml"
    import yaml

    variants = list(yaml.safe_load(path.read_text())["variants"])
    for variant in variants:
        run = load_paper_config(path, variant)
        assert run.stages
        for stage in run.stages:
            assert (REPO / stage.script).is_file(), stage.script
            assert check_flags(stage) == [], f"{name}/{stage.name}: unknown flags"
            assert "${" not in stage.command(), stage.command()
    run = load_paper_config(path, "7B")
    train = next(s for s in run.stages if s.name == "train_aligner")
    assert train.args["config_file"] == "configs/training/paper.yaml"
    assert train.args["model_name_or_path"] == "meta-llama/Llama-2-7b-hf"
    assert train.launcher.endswith("accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 4")


def test_paper_runner_prints_commands_and_refuses_missing_inputs():
    base = [sys.executable, "scripts/run_paper.py", "--config", "configs/paper/ultrafeedback.yaml"]
    dry = subprocess.run(base + ["--variant", "13B", "--dry_run"], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=DEADLINE_S)
    assert dry.returncode == 0, dry.stderr
    assert "ultrafeedback (13B): 49 stage(s)" in dry.stdout   # prepare_ultrafeedback, Table 2's policies, Figure 3, ratings, Table 3 with its baselines
    assert ("--aspects instruction_following,honesty,truthfulness,helpfulness,speci,factual,read,fair,repeat,len"
            in dry.stdout)
    assert "--model_name_or_path meta-llama/Llama-2-13b-hf" in dry.stdout
    run = subprocess.run(base + ["--stages", "build_aligner_dataset", "--set", "UF_REWARDS=/nonexistent/uf.csv"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=DEADLINE_S)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(
        "error: stage 'build_aligner_dataset' needs /nonexistent/uf.csv")


# ----------------------------------------------------------------------------- the demo pipeline

STAGES = ["1", "2", "3", "4", "5a", "5b", "5c", "5d", "5e", "6a", "6b", "6c", "6d", "6e", "6f", "7", "8"]


def _run_demo(out: Path, model: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/reproduce_demo.sh"], cwd=REPO, capture_output=True, text=True,
                          timeout=DEADLINE_S, env=_env(OUT=str(out), SCALE="tiny", MODEL=str(model), THREADS="1"))


@pytest.mark.slow
def test_demo_pipeline_tiny_end_to_end_and_resume(tmp_path, tiny_llama_dir):
    out = tmp_path / "demo"
    proc = _run_demo(out, tiny_llama_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = re.findall(r"^\[(\w+)\] \S+: \d+ s -> (\S+)$", proc.stdout, flags=re.M)
    assert [sid for sid, _ in ran] == STAGES
    for _, artefact in ran:
        assert Path(artefact).exists(), artefact
    assert "judge server stopped" in proc.stdout

    # 1: the offline LLM scorer labelled the first 6 shipped HH-RLHF pairs
    rewards = read_records(out / "1_rewards/rewards.csv")
    assert len(rewards) == 6
    assert {f"{s}_score{i}" for s in ("chosen", "rejected") for i in (1, 2, 3)} <= set(rewards[0])
    # 2 + 3: Algorithm 1 fed a 3-step LoRA curriculum; the aligner names its template
    stats = json.loads((out / "2_aligner_data/stats.json").read_text())
    assert stats["template"] == "hh-rlhf" and stats["items"]["warmup/train"] > 0
    card = json.loads((out / "3_aligner/metaaligner.json").read_text())
    assert card["template"] == "hh-rlhf"
    assert (out / "3_aligner/adapter_model.safetensors").is_file()
    log = [json.loads(line) for line in (out / "3_aligner/training_log.jsonl").read_text().splitlines()]
    subsets = {"warmup": "warmup/train", "equal": "all_equal/train", "contrastive": "no_equal/train"}
    assert {r["stage"] for r in log} == {s for s, k in subsets.items() if stats["items"][k] > 0}
    # 4: the policy answered 2 shipped queries
    policy = read_records(out / "4_policy/SmolLM2-policy.csv")
    claude = read_records(REPO / "samples/HH-RLHF_model_output/Claude-3.csv.gz")
    assert [r["query"] for r in policy] == [r["query"] for r in claude[:2]]
    # 5: every dataset aligned with the trained aligner, 2 rows per policy, provenance kept
    aligned = {p.relative_to(out / "5_aligned").as_posix(): read_records(p) for p in (out / "5_aligned").rglob("*.csv")}
    assert sorted(aligned) == ["figure3/2_speci/gpt-3.5-turbo.csv", "figure3/3_factual/gpt-3.5-turbo.csv",
                               "hh-rlhf/Claude-3.csv", "hh-rlhf/SmolLM2-policy.csv", "imhi/vicuna_7B.csv",
                               "table3/MetaAligner.csv", "ultrafeedback/gpt-3.5-turbo.csv"]
    for name, rows in aligned.items():
        assert len(rows) == 2, name
        assert all(r["template"] == "hh-rlhf" and r["aligner"] == str(out / "3_aligner") for r in rows), name
    # Figure 3's cumulative steps (tiny: 3 of the paper's 7)
    assert aligned["figure3/2_speci/gpt-3.5-turbo.csv"][0]["aspects"] == (
        "instruction_following,honesty,truthfulness,helpfulness,speci")
    assert aligned["figure3/3_factual/gpt-3.5-turbo.csv"][0]["aspects"] == (
        "instruction_following,honesty,truthfulness,helpfulness,speci,factual")
    assert aligned["imhi/vicuna_7B.csv"][0]["aspects"] == "correct,informative,professional"
    assert aligned["table3/MetaAligner.csv"] == aligned["hh-rlhf/Claude-3.csv"]
    # 6: the judge (the tiny model behind `transformers serve`) answered every planned row
    summary = json.loads((out / "6_judged/hh-rlhf/summary.json").read_text())
    assert sum(s["n"] for s in summary) == 2 * 2 * 3 * 2  # 2 policies x 2 rows x 3 objectives x 2 targets
    fig3 = json.loads((out / "6_judged/figure3/1_aligned_obj/summary.json").read_text())
    assert {s["objective"] for s in fig3} == {"instruction_following", "honesty", "truthfulness", "helpfulness",
                                              "speci", "factual", "read", "fair", "repeat", "len"}
    assert {s["target"] for s in fig3} == {"aligned_responses", "origin_responses"}
    ratings = json.loads((out / "6_judged/ratings/all/summary.json").read_text())
    assert {s["objective"] for s in ratings} == {"instruction_following", "honesty", "truthfulness", "helpfulness"}
    # 7: the paper's tables and figure
    report = out / "7_report"
    for name in ("table2.md", "table2.csv", "table2.tex", "table3.md", "table3.csv", "table3.tex", "figure3.md",
                 "figure3.csv", "ratings.md", "ratings.csv"):
        assert (report / name).stat().st_size > 0, name
    assert (report / "figure3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report / "ratings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = read_records(report / "figure3.csv")  # 10 objectives: before alignment + 3 steps
    assert len(points) == 10 * 4 and {p["step"] for p in points} == {"before alignment", "Aligned Obj.",
                                                                      "+Specificity", "+Factuality"}
    table2 = (report / "table2.md").read_text()
    for policy_name in ("Claude-3", "SmolLM2-policy", "gpt-3.5-turbo", "vicuna_7B"):
        assert f"| {policy_name} |" in table2
    table3 = read_records(report / "table3.csv")
    assert {r["method"] for r in table3} == {"MetaAligner"}
    assert float(table3[0]["gpu_hours"]) > 0  # read from the aligner's own training log
    # 8: the edit bench measured the trained aligner against copy and the base on held-out answers
    bench = json.loads((out / "8_edit_bench/edit_bench.json").read_text())
    assert list(bench["systems"]) == ["copy", "aligner", "base"] and bench["rows"] == 2
    assert bench["systems"]["aligner"]["model"] == str(out / "3_aligner")
    assert bench["summary"]["groups"]["copy"]["fix"]["fixed"]["rate"] == 0
    assert "| copy | 0% (0%-0%) |" in proc.stdout   # the summary is printed at the end
    # nothing leaked the planted key
    key = PLANTED_KEY.encode()
    assert PLANTED_KEY not in proc.stdout + proc.stderr
    assert [str(p) for p in out.rglob("*") if p.is_file() and key in p.read_bytes()] == []

    # a second run does no work: every stage is skipped, nothing is rewritten, no server starts
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and ".stamps" not in p.parts}
    again = _run_demo(out, tiny_llama_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert re.findall(r"^\[(\w+)\] \S+: done already", again.stdout, flags=re.M) == STAGES
    assert "running" not in again.stdout and "judge server" not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    # no time bound (a loaded machine makes any bound flaky): the work is what must not happen again
    assert {p for p in out.rglob("*") if p.is_file() and ".stamps" not in p.parts} == set(mtimes)

    # resume after a lost artefact: only the report stage (the last) runs again
    (report / "figure3.png").unlink()
    third = _run_demo(out, tiny_llama_dir)
    assert third.returncode == 0, third.stderr[-2000:]
    assert re.findall(r"^\[(\w+)\] \S+: running", third.stdout, flags=re.M) == ["7"]
    assert (report / "figure3.png").is_file()
