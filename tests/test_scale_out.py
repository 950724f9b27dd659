"""Scaling out: vLLM's engine options, LoRA adapters behind --backend openai, the install pin sets, the
benchmarks' device and roofline, scripts/gpu_check.sh at tiny sizes, and docs/scaling_out.md's commands."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from metaaligner.errors import MetaAlignerError
from metaaligner.testing.waits import DEADLINE_S

REPO = Path(__file__).resolve().parent.parent


class FakeLLM:
    """Stands in for ``vllm.LLM`` (vLLM is not installed here): keeps the engine's keyword arguments and the
    GPUs the engine would see."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.visible = os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    for name in ("WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def lora_adapter(folder: Path, base: Path, r: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": r,
                                                            "peft_type": "LORA"}))
    return folder


# ---------------------------------------------------------------- vllm engine options

def test_engine_kwargs_every_option():
    from metaaligner.generation.vllm_backend import engine_kwargs

    kwargs = engine_kwargs("m", "bf16", True, 2, 4096, 0.75, 7, prefix_caching=False, ngram_speculation=3,
                           max_lora_rank=64)
    assert kwargs == {"model": "m", "dtype": "bfloat16", "seed": 7, "enable_lora": True, "tensor_parallel_size": 2,
                      "gpu_memory_utilization": 0.75, "enable_prefix_caching": False, "generation_config": "auto",
                      "max_model_len": 4096, "max_lora_rank": 64,
                      "speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4,
                                             "prompt_lookup_min": 2}}
    assert "max_lora_rank" not in engine_kwargs("m", "float32", True, 1, None, 0.9, 0)   # vLLM's default then
    with pytest.raises(MetaAlignerError, match=r"--max_lora_rank applies to a LoRA adapter"):
        engine_kwargs("m", "float32", False, 1, None, 0.9, 0, max_lora_rank=32)
    with pytest.raises(MetaAlignerError, match=r"--max_lora_rank 48: vLLM takes one of \[1, 8, 16, 32, 64, 128"):
        engine_kwargs("m", "float32", True, 1, None, 0.9, 0, max_lora_rank=48)
    with pytest.raises(MetaAlignerError, match=r"gpu_memory_utilization must be in \(0, 1\], got 1.5"):
        engine_kwargs("m", "float32", False, 1, None, 1.5, 0)


def test_vllm_dtype_follows_the_hf_rule(fake_vllm, tiny_llama_dir):
    import torch

    from metaaligner.aligner import make_generator
    from metaaligner.generation.vllm_backend import hf_dtype

    assert hf_dtype() == "float32"                          # no GPU here: float32, as the hf backend loads it
    assert make_generator("vllm", str(tiny_llama_dir)).llm.kwargs["dtype"] == "float32"
    fake_vllm.setattr(torch.cuda, "is_available", lambda: True)
    fake_vllm.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hf_dtype() == "bfloat16"
    assert make_generator("vllm", str(tiny_llama_dir)).llm.kwargs["dtype"] == "bfloat16"
    assert make_generator("vllm", str(tiny_llama_dir), dtype="float16").llm.kwargs["dtype"] == "float16"


def test_max_lora_rank_defaults_to_the_adapters_rank(fake_vllm, tiny_llama_dir, tmp_path):
    from metaaligner.aligner import make_generator

    adapter = lora_adapter(tmp_path / "adapter-r40", tiny_llama_dir, 40)
    engine = make_generator("vllm", str(adapter)).llm.kwargs      # an adapter folder as the model
    assert (engine["model"], engine["enable_lora"], engine["max_lora_rank"]) == (str(tiny_llama_dir), True, 64)
    engine = make_generator("vllm", str(tiny_llama_dir), lora_path=str(adapter),
                            vllm_options={"max_lora_rank": 128}).llm.kwargs
    assert engine["max_lora_rank"] == 128
    with pytest.raises(MetaAlignerError, match=r"--max_lora_rank 32 is smaller than the rank of adapter .*adapter-r40 "
                                               r"\(r=40\); raise it or leave it out"):
        make_generator("vllm", str(adapter), vllm_options={"max_lora_rank": 32})
    assert make_generator("vllm", str(tiny_llama_dir)).llm.kwargs["enable_lora"] is False


def test_data_parallel_one_copy_per_torchrun_rank_on_its_own_gpus(fake_vllm, tiny_llama_dir):
    from metaaligner.aligner import make_generator
    from metaaligner.generation.vllm_backend import replica_gpus

    assert replica_gpus(1, None, {}) is None                                # one process: vLLM's own choice
    env = {"WORLD_SIZE": "4", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}
    assert replica_gpus(1, 4, env) == "3"
    assert replica_gpus(2, 4, env) == "6,7"
    assert replica_gpus(2, None, {**env, "CUDA_VISIBLE_DEVICES": "0,1,2,3,8,9,10,11"}) == "10,11"
    with pytest.raises(MetaAlignerError, match=r"local rank 3 with --tensor_parallel_size 2 needs GPUs 6..7 of the "
                                               r"visible ones \(0,1,2,3\): start fewer ranks per node"):
        replica_gpus(2, None, {**env, "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    with pytest.raises(MetaAlignerError) as exc:
        make_generator("vllm", str(tiny_llama_dir), vllm_options={"data_parallel_size": 8})
    assert str(exc.value) == (
        "--data_parallel_size 8 runs one model copy per process, and this is 1 process: start it with torchrun "
        "--nproc-per-node 8 (each rank on 1 GPU), or serve the model with vllm serve MODEL --data-parallel-size 8 "
        "and pass --backend openai --base_url URL")
    for name, value in {"WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        fake_vllm.setenv(name, value)
    engine = make_generator("vllm", str(tiny_llama_dir), vllm_options={"data_parallel_size": 2})
    assert engine.llm.visible == "1" and engine.llm.kwargs["tensor_parallel_size"] == 1
    assert "data_parallel_size" not in engine.llm.kwargs     # vLLM's in-process LLM refuses it; each rank is a copy


def test_vllm_missing_names_the_requirements_file(monkeypatch):
    from metaaligner.generation import get_generator

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(MetaAlignerError) as exc:
        get_generator("vllm", "x")
    assert ".venv-vllm/bin/pip install -r requirements-vllm.txt" in str(exc.value)
    assert (REPO / "requirements-vllm.txt").is_file()


@pytest.mark.parametrize("script", ["inference/aligner_inference.py", "inference/policy_generation.py"])
def test_scripts_take_data_parallel_and_max_lora_rank(script, capsys):
    from metaaligner import cli
    from metaaligner.testing.scripts import load_script

    module = load_script(script)
    config = cli.parse(module.make_parser(), ["--backend", "vllm", "--data_parallel_size", "8",
                                              "--max_lora_rank", "64"])[0]
    assert (config.data_parallel_size, config.max_lora_rank) == (8, 64)
    with pytest.raises(SystemExit):
        cli.parse(module.make_parser(), ["--backend", "hf", "--max_lora_rank", "64"])
    assert "--max_lora_rank needs --backend vllm or auto" in capsys.readouterr().err


def test_python_api_passes_every_vllm_option(fake_vllm, tiny_llama_dir):
    from metaaligner.aligner import Aligner
    from metaaligner.aligner.inference import VLLM_OPTIONS

    assert set(VLLM_OPTIONS) == {"tensor_parallel_size", "max_model_len", "gpu_memory_utilization",
                                 "data_parallel_size", "max_lora_rank"}
    aligner = Aligner(str(tiny_llama_dir), template="hh-rlhf", backend="vllm", vllm_options={
        "tensor_parallel_size": 2, "max_model_len": 2048, "gpu_memory_utilization": 0.5, "data_parallel_size": 1})
    engine = aligner.generator.llm.kwargs
    assert (engine["tensor_parallel_size"], engine["max_model_len"], engine["gpu_memory_utilization"]) == (2, 2048, 0.5)


# ---------------------------------------------------------------- LoRA adapters behind --backend openai

def test_openai_sends_the_served_adapters_name(tmp_path):
    """``vllm serve BASE --enable-lora --lora-modules aligner-lora=FOLDER`` serves the adapter as model
    ``aligner-lora``: policy generation with ``--model aligner-lora`` asks for exactly that model."""
    from metaaligner import cli
    from metaaligner.testing import ScriptedOpenAIServer
    from metaaligner.testing.scripts import load_script

    data = tmp_path / "queries.csv"
    data.write_text("query,goldens\nHow do I boil an egg?,Boil it.\nName a colour.,Blue.\n")
    module = load_script("inference/policy_generation.py")
    with ScriptedOpenAIServer(lambda req: "from " + req["model"], models=["base", "aligner-lora"]) as server:
        config = cli.parse(module.make_parser(), [
            "--backend", "openai", "--base_url", server.base_url, "--model", "aligner-lora", "--data_dir", str(data),
            "--model_output_path", str(tmp_path / "out"), "--model_name", "policy"])[0]
        module.main(config)
        assert sorted(r.body["model"] for r in server.requests) == ["aligner-lora", "aligner-lora"]
    with open(tmp_path / "out" / "policy.csv", newline="") as f:
        assert [r["generated_text"] for r in csv.DictReader(f)] == ["from aligner-lora", "from aligner-lora"]


def test_openai_aligner_by_served_adapter_name_and_local_adapter_refused(tmp_path, tiny_llama_dir):
    from metaaligner.aligner import make_generator, resolve_aligner
    from metaaligner.generation import GenerationParams
    from metaaligner.testing import ScriptedOpenAIServer

    with ScriptedOpenAIServer(lambda req: "edited", models=["aligner-lora"]) as server:
        source = resolve_aligner("aligner-lora", template="hh-rlhf")
        generator = make_generator("openai", source, base_url=server.base_url, chat_template=True)
        assert generator.generate(["Edit: x"], GenerationParams(max_new_tokens=8)) == ["edited"]
        assert [r.body["model"] for r in server.requests] == ["aligner-lora"]
    adapter = lora_adapter(tmp_path / "my-adapter", tiny_llama_dir, 16)
    with pytest.raises(MetaAlignerError, match=r"my-adapter is a local LoRA adapter folder, which --backend openai "
                                               r"cannot send to the server; serve it under its own name .*"
                                               r"--lora-modules NAME=ADAPTER_FOLDER"):
        make_generator("openai", str(adapter), base_url="http://127.0.0.1:9/v1")
    with pytest.raises(MetaAlignerError, match=r"--lora_path .*my-adapter: with --backend openai the server applies "
                                               r"the adapter; serve it under its own name"):
        make_generator("openai", "base", base_url="http://127.0.0.1:9/v1", lora_path=str(adapter))


# ---------------------------------------------------------------- benchmarks: the device and its roofline

def test_known_gpus_and_an_unknown_one():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from devices import gpu_roofline

    assert gpu_roofline("NVIDIA H100 80GB HBM3") == ("H100 SXM", 989400.0, 3350.0)
    assert gpu_roofline("NVIDIA H100 PCIe") == ("H100 PCIe", 756000.0, 2000.0)
    assert gpu_roofline("NVIDIA H100 NVL") == ("H100 NVL", 835000.0, 3900.0)
    assert gpu_roofline("NVIDIA H200") == ("H200 SXM", 989400.0, 4800.0)
    assert gpu_roofline("NVIDIA A100-SXM4-80GB") == ("A100 SXM 80GB", 312000.0, 2039.0)
    assert gpu_roofline("NVIDIA A100-SXM4-40GB") == ("A100 SXM 40GB", 312000.0, 1555.0)
    assert gpu_roofline("NVIDIA A100 80GB PCIe") == ("A100 PCIe 80GB", 312000.0, 1935.0)
    assert gpu_roofline("NVIDIA A100-PCIE-40GB") == ("A100 PCIe 40GB", 312000.0, 1555.0)
    assert gpu_roofline("NVIDIA GeForce RTX 4090") is None


BENCHMARKS_WITH_A_MODEL = ["bench_aligner_inference.py", "bench_training.py", "bench_reward_labelling.py",
                           "bench_sepo_scoring.py", "bench_serve.py", "gpu_check.py"]


@pytest.mark.parametrize("script", BENCHMARKS_WITH_A_MODEL)
def test_every_benchmark_takes_a_device_and_refuses_a_missing_gpu(script):
    """No benchmark is tied to the CPU: --device is a flag, cuda is the default when visible, and a GPU asked
    for on a machine without one is one error line (not a silent CPU run)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: a missing one cannot be shown")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    helped = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True,
                            text=True, env=env, timeout=DEADLINE_S)
    assert helped.returncode == 0 and "--device" in helped.stdout
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--device", "cuda", "--quick"
                           if script != "gpu_check.py" else "--tiny"], capture_output=True, text=True, env=env,
                          timeout=DEADLINE_S)
    assert (done.returncode, done.stderr.strip().splitlines()[-1]) == (
        2, "error: --device cuda: no CUDA device is visible; use --device cpu")


def test_run_all_passes_the_device_to_every_benchmark_with_a_model(tmp_path):
    text = (REPO / "benchmarks" / "run_all.py").read_text()
    assert 'NO_MODEL = ("bench_judge.py",)' in text
    assert sorted(p.name for p in (REPO / "benchmarks").glob("bench_*.py")) == sorted(
        [s for s in BENCHMARKS_WITH_A_MODEL if s.startswith("bench_")] + ["bench_judge.py"])


SERVE_OUTPUT = """16 clients x 2 requests, 32 new tokens, aligner embedded, --batch_wait_ms 50; load average 1.57 1.20 1.00
--max_batch_size  16: 32 requests in 27.8 s = 1.15 req/s, 36.0 tokens/s (1001 tokens), latency p50 15.50 s p99 15.60 s, \
mean batch 10.7, every request answered once with its own answer: yes, load average now 1.40
--max_batch_size   1: 32 requests in 51.6 s = 0.62 req/s, 19.4 tokens/s (1001 tokens), latency p50 24.00 s p99 27.60 s, \
mean batch 1.0, every request answered once with its own answer: yes, load average now 1.02
load average before 1.57 1.20 1.00, after 1.02 1.10 1.00; 2 CPUs, torch threads 1; 2.13.0
device cpu (the host CPU; its roofline is measured in this process)
CPU roofline (this process, 1 thread(s)): fp32 matmul 90.1 GFLOP/s, memory copy 9.8 GB/s
ratio requests/s --max_batch_size 16 / 1: 1.86x
"""  # a backslash at a line's end joins it to the next: each run line is one line, as printed


def test_run_all_reads_bench_serve_output():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from run_all import extra_notes, parse

    assert extra_notes("bench_serve.py", SERVE_OUTPUT) == "mean batch 10.7; every request answered once: yes"
    continuous = SERVE_OUTPUT.replace("mean batch 10.7", "mean rows a step 12.3")
    assert extra_notes("bench_serve.py", continuous) == "mean rows a step 12.3; every request answered once: yes"
    row = parse("bench_serve.py", SERVE_OUTPUT, 0, 80.0)
    assert (row.naive, row.ours, row.ratio, row.goal, row.met, row.note) == (
        "--max_batch_size 1: 0.62 req/s", "--max_batch_size 16 (requests batched in the aligner): 1.15 req/s",
        "1.86x", ">= 3x", "no", "")


# ---------------------------------------------------------------- scripts/gpu_check.sh at tiny sizes

GPU_CHECK_ROWS = [("inference 3x4", "released: batch 1 loop"), ("inference 3x4", "padded generate, batch 3"),
                  ("inference 3x4", "fast engine, batch 3"), ("training 2x32 x 2 steps", "LoRA r16 (peft), AdamW")]


def test_gpu_check_tiny_prints_every_row_of_its_table():
    """The GPU check, run as on a GPU machine but with --tiny sizes on the CPU: a row per shape, method and
    stage, each with its numbers, and the output says the weights are random."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu"], capture_output=True,
                          text=True, timeout=DEADLINE_S, env={**os.environ, "GPU_CHECK_TINY": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("gpu_check: device cpu (the host CPU")
    assert lines[1].startswith("weights: RANDOM (no trained weights travel to the GPU machine), shapes of "
                               "smollm2-135m, llama-1.1b scaled down (--tiny); float32; tokenizer: ")
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    assert table[0] == ["shape", "work", "method", "tokens", "seconds", "tokens/s", "x released", "roofline",
                        "peak GPU memory"]
    body = table[2:]
    assert [(r[0].split(" (")[0], r[1], r[2]) for r in body] == [
        (shape, work, method) for shape in ("smollm2-135m", "llama-1.1b") for work, method in GPU_CHECK_ROWS]
    for r in body:
        assert int(r[3]) == (12 if r[1].startswith("inference") else 128)   # every row generates all 4 tokens
        assert float(r[4]) > 0 and float(r[5]) > 0 and r[7] == "--" and r[8] == "--"
    assert [r[6] for r in body if r[2].startswith("released")] == ["1.00x", "1.00x"]
    assert lines[-1].startswith("total ")


# ---------------------------------------------------------------- docs/scaling_out.md: every command parses

PAGE = REPO / "docs" / "scaling_out.md"
SHELL_VALUES = {"$SLURM_ARRAY_TASK_ID": "3", "$NODE_RANK": "1"}


def page_commands() -> list[list[str]]:
    """Each command of the page's bash blocks as argv (continuations joined, comments dropped)."""
    import re
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                for name, value in SHELL_VALUES.items():
                    line = line.replace(name, value)
                assert "$" not in line, f"a shell variable without a test value: {line}"
                commands.append(shlex.split(line))
    return commands


def split_launcher(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """(launcher options, our script, its arguments) of ``torchrun ... SCRIPT ...`` or ``python SCRIPT ...``."""
    at = next(i for i, a in enumerate(argv) if a.endswith((".py", ".sh")))
    return argv[:at], argv[at], argv[at + 1:]


def parse_ours(script: str, args: list[str]) -> None:
    """Parse ``args`` with the script's own parser, as its ``main`` would (a bad flag: SystemExit)."""
    from metaaligner import cli
    from metaaligner.testing.scripts import load_script

    if script == "scripts/gpu_check.sh":
        script = "benchmarks/gpu_check.py"
    assert (REPO / script).is_file(), script
    module = load_script(script)
    if script.startswith("benchmarks/"):
        module.make_parser().parse_args(args)
    else:
        cli.parse(module.make_parser(), module.cli_args(args) if hasattr(module, "cli_args") else args)


def launcher_options(tool: list[str]) -> set[str]:
    done = subprocess.run(tool + ["--help"], capture_output=True, text=True, timeout=DEADLINE_S)
    import re

    return set(re.findall(r"--[a-z][a-z_-]*", done.stdout))


def test_scaling_out_page_commands_parse(capsys):
    """Every command of docs/scaling_out.md that runs one of our scripts parses with that script's flags
    (so a renamed flag fails here); pip files exist; torchrun's and accelerate's options are theirs."""
    import shutil

    commands = page_commands()
    ours, kinds = 0, set()
    known = {"torchrun": launcher_options(["torchrun"]) if shutil.which("torchrun") else None,
             "accelerate": launcher_options(["accelerate", "launch"]) if shutil.which("accelerate") else None}
    for argv in commands:
        tool = Path(argv[0]).name
        if tool == "pip":
            assert argv[1] == "install"
            if "-r" in argv:
                assert (REPO / argv[argv.index("-r") + 1]).is_file(), argv
            kinds.add("pip")
            continue
        if tool == "vllm" or (tool == "python" and argv[1:3] == ["-m", "venv"]):
            kinds.add(tool)  # vLLM's own flags, or making an environment: not ours to parse
            continue
        assert tool in ("python", "torchrun", "accelerate", "bash"), f"a command the test does not know: {argv}"
        options, script, args = split_launcher(argv[2:] if tool == "accelerate" else argv[1:])
        if tool in known and known[tool] is not None:
            flags = {o.split("=")[0] for o in options if o.startswith("--")}
            assert flags <= known[tool], f"{tool} does not take {sorted(flags - known[tool])}"
        if "--config_file" in options:
            assert (REPO / options[options.index("--config_file") + 1]).is_file()
        try:
            parse_ours(script, args)
        except SystemExit:
            pytest.fail(f"{script} refused the page's flags {args}: {capsys.readouterr().err.strip()}")
        ours += 1
        kinds.add(tool)
    assert ours >= 18 and kinds == {"pip", "python", "vllm", "torchrun", "accelerate", "bash"}
    text = PAGE.read_text()
    for heading in ("## Install paths", "## One node with 8 GPUs: a 7B aligner", "## A 70B policy: tensor parallelism "
                    "in one node", "## Several nodes", "## Sharding row-wise stages", "## Training on several nodes"):
        assert heading in text


def test_the_page_test_catches_a_renamed_flag(capsys):
    with pytest.raises(SystemExit):
        parse_ours("inference/aligner_inference.py", ["--backend", "vllm", "--data_parallel", "8"])
    assert "--data_parallel" in capsys.readouterr().err


# ---------------------------------------------------------------- the pin sets resolve (pip --dry-run, under CI)

# .ci/run runs these beside the test suite (network-bound: pip downloads the wheels to read their metadata)
PIN_CHECKS = os.environ.get("METAALIGNER_PIN_CHECKS") == "1"
pin_check = pytest.mark.skipif(not PIN_CHECKS, reason="resolves the pin sets with pip --dry-run against PyPI "
                                                      "(minutes of downloads): METAALIGNER_PIN_CHECKS=1, a step of "
                                                      ".ci/run")
PIN_CACHE_S = float(os.environ.get("METAALIGNER_PIN_CACHE_S", 86400))  # a resolution reused for a day; 0: never


def local_cpu_wheel() -> Path | None:
    """This machine's own copy of PyTorch's torch-2.13.0+cpu wheel, from pip's find-links, if any."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=DEADLINE_S)
    folders = [v.strip("'\"") for line in done.stdout.splitlines() if "find-links" in line
               for v in line.split("=", 1)[1:]]
    folders += os.environ.get("PIP_FIND_LINKS", "").split()
    for folder in folders:
        found = sorted(Path(folder).glob("torch-2.13.0+cpu-*.whl")) if Path(folder).is_dir() else []
        if found:
            return found[0]
    return None


def pytorch_index_reachable() -> bool:
    import socket

    try:
        socket.getaddrinfo("download.pytorch.org", 443)
        return True
    except OSError:
        return False


def pin_jobs(tmp: Path) -> dict[str, tuple[list[str], dict]]:
    """name -> (pip arguments, environment) of each dry run."""
    env = dict(os.environ)
    pypi_only = {k: v for k, v in env.items() if k not in ("PIP_FIND_LINKS", "PIP_CONSTRAINT")}
    pypi_only["PIP_CONFIG_FILE"] = os.devnull            # no local wheel folder or local index: PyPI as a user has it
    jobs = {"vllm": (["-r", str(REPO / "requirements-vllm.txt")], env),
            "gpu": (["-r", str(REPO / "requirements-gpu.txt")], pypi_only)}
    wheel = local_cpu_wheel()
    if wheel is not None:  # the CPU set with the unreachable index replaced by the local copy of its wheel
        lines = [line.replace("-r requirements.txt", f"-r {REPO / 'requirements.txt'}")
                 for line in (REPO / "requirements-cpu.txt").read_text().splitlines()
                 if not line.startswith("--extra-index-url")]
        (tmp / "requirements-cpu-local.txt").write_text("\n".join(lines) + "\n")
        jobs["cpu_local"] = (["-r", str(tmp / "requirements-cpu-local.txt"), "--find-links", str(wheel.parent)], env)
    if pytorch_index_reachable():
        jobs["cpu_index"] = (["-r", str(REPO / "requirements-cpu.txt")], pypi_only)
    return jobs


def pin_key(name: str, args: list[str]) -> str:
    import hashlib

    texts = [(REPO / "requirements.txt").read_text()] + [Path(a).read_text() for a in args if a.endswith(".txt")]
    return hashlib.sha256("\n".join([name, sys.version, *texts]).encode()).hexdigest()


@pytest.fixture(scope="module")
def pin_plans(request, tmp_path_factory) -> dict[str, list[str]]:
    """The packages each dry run would install ("Would install" line), the dry runs run side by side; a
    resolution of the same files is reused from pytest's cache for METAALIGNER_PIN_CACHE_S seconds."""
    import time

    tmp = tmp_path_factory.mktemp("pins")
    plans, running = {}, {}
    for name, (args, env) in pin_jobs(tmp).items():
        cached = request.config.cache.get(f"metaaligner/pins/{name}", None)
        key = pin_key(name, args)
        if cached and cached["key"] == key and time.time() - cached["time"] < PIN_CACHE_S:
            plans[name] = cached["plan"]
            continue
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--disable-pip-version-check",
               "--retries", "1", *args]
        running[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                          cwd=REPO), key)
    for name, (proc, key) in running.items():
        out, _ = proc.communicate(timeout=1500)
        lines = [line for line in out.splitlines() if line.startswith("Would install ")]
        if proc.returncode != 0 or not lines:
            plans[name] = ["FAILED", *out.splitlines()[-15:]]
            continue
        plans[name] = lines[-1].split()[2:]
        request.config.cache.set(f"metaaligner/pins/{name}", {"key": key, "time": time.time(), "plan": plans[name]})
    return plans


@pin_check
def test_vllm_pin_set_resolves_with_vllm(pin_plans):
    plan = pin_plans["vllm"]
    assert plan[0] != "FAILED", "\n".join(plan)
    assert {"vllm-0.33.0", "torch-2.14.0"} <= set(plan)
    assert any(p.startswith("transformers-5.20.") for p in plan)


@pin_check
def test_gpu_pin_set_resolves_to_the_cuda_build_from_pypi(pin_plans):
    plan = pin_plans["gpu"]
    assert plan[0] != "FAILED", "\n".join(plan)
    assert "torch-2.13.0" in plan and any(p.startswith("nvidia-") for p in plan)


@pin_check
def test_cpu_pin_set_resolves_with_the_cpu_wheel(pin_plans):
    if "cpu_local" not in pin_plans:
        pytest.skip("no local copy of torch-2.13.0+cpu in pip's find-links here")
    plan = pin_plans["cpu_local"]
    assert plan[0] != "FAILED", "\n".join(plan)
    assert "torch-2.13.0+cpu" in plan and not any(p.startswith("nvidia-") for p in plan)


@pin_check
def test_cpu_pin_set_resolves_from_pytorchs_index(pin_plans):
    if "cpu_index" not in pin_plans:
        pytest.skip("download.pytorch.org cannot be reached from here: requirements-cpu.txt was resolved with the "
                    "local copy of its torch wheel only (test_cpu_pin_set_resolves_with_the_cpu_wheel)")
    plan = pin_plans["cpu_index"]
    assert plan[0] != "FAILED", "\n".join(plan)
    assert "torch-2.13.0+cpu" in plan and not any(p.startswith("nvidia-") for p in plan)


def test_sepo_inference_takes_the_vllm_options(monkeypatch, capsys, tmp_path):
    from metaaligner import cli
    from metaaligner.methods import sepo
    from metaaligner.testing.scripts import load_script

    module = load_script("baseline_models/sepo/sepo_inference.py")
    seen = {}
    monkeypatch.setattr(sepo, "generate_outputs", lambda *a, **k: seen.update(k))
    config = cli.parse(module.make_parser(), [
        "--input", "q.csv", "--model", "m", "--output", str(tmp_path / "o.csv"), "--backend", "vllm",
        "--tensor_parallel_size", "2", "--data_parallel_size", "1", "--max_model_len", "2048",
        "--gpu_memory_utilization", "0.8", "--max_lora_rank", "64"])[0]
    module.main(config)
    assert seen["vllm_options"] == {"tensor_parallel_size": 2, "max_model_len": 2048, "gpu_memory_utilization": 0.8,
                                    "data_parallel_size": 1, "max_lora_rank": 64}
    with pytest.raises(SystemExit):
        cli.parse(module.make_parser(), ["--input", "q", "--model", "m", "--output", "o", "--max_model_len", "8"])
    assert "--max_model_len needs --backend vllm or auto" in capsys.readouterr().err
