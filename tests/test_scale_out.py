"""Scaling out: vLLM's engine options, LoRA adapters behind --backend openai, the install pin sets, the
benchmarks' device and roofline, scripts/gpu_check.sh at tiny sizes, and docs/scaling_out.md's commands."""
from __future__ import annotations

import csv
import json
import os
import sys
import types
from pathlib import Path

import pytest

from metaaligner.errors import MetaAlignerError

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
