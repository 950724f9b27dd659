"""Generation backends: hf batching is exact; the openai backend against a real local
OpenAI-compatible server (``transformers serve``) returns what the hf backend returns."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from metaaligner.errors import MetaAlignerError
from metaaligner.generation import GenerationParams, get_generator
from metaaligner.testing.waits import wait_for_http

PROMPTS = [
    "Hello there",
    "A much longer prompt with several words that make it the longest of them all by far, really.",
    "x",
    "You are an assistant to human. | Context: Is it safe? | Answer:  | Edit: ",
    "The capital of France is a city called",
]


@pytest.fixture(scope="module")
def varied_llama_dir(tiny_llama_dir, tmp_path_factory):
    """The shared tiny LLaMA with weights re-drawn at std 0.5 (seeded): at the default init a
    2-layer model repeats one token whatever the prompt, which would make equality tests vacuous."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    out = tmp_path_factory.mktemp("varied-llama")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf_generator(varied_llama_dir):
    return get_generator("hf", str(varied_llama_dir), device="cpu")


def test_batched_greedy_equals_batch_of_one(hf_generator):
    params = GenerationParams(max_new_tokens=12, batch_size=5)
    batched = hf_generator.generate(PROMPTS, params)
    single = hf_generator.generate(PROMPTS, GenerationParams(max_new_tokens=12, batch_size=1))
    assert batched == single
    assert len(set(batched)) == len(PROMPTS)  # the outputs really depend on the prompt
    # order is the input order, whatever the length sort did: generate each prompt alone
    assert [hf_generator.generate([p], params)[0] for p in PROMPTS[:2]] == batched[:2]
    assert hf_generator.tokenizer.padding_side == "left"
    assert hf_generator.stats["generated_tokens"] > 0 and hf_generator.stats["prompts"] == 12
    assert hf_generator.generate([], params) == []


def test_sampling_is_seeded(hf_generator):
    prompts = PROMPTS[:3]
    params = GenerationParams(max_new_tokens=6, temperature=1.0, seed=7, batch_size=3)
    first = hf_generator.generate(prompts, params)
    assert hf_generator.generate(prompts, params) == first
    other = hf_generator.generate(prompts, GenerationParams(max_new_tokens=6, temperature=1.0, seed=8, batch_size=3))
    assert other != first


def test_long_prompts_keep_their_start_and_end(hf_generator):
    """A prompt no caller fitted is cut in the middle (the instruction and the cue stay), never under "whole"."""
    prompt = "Instruction first. one two three four five six seven eight nine ten | Edit: "
    hf_generator.max_input_tokens = 8
    try:
        hf_generator.truncated = 0
        ids = hf_generator._encode(prompt, hf_generator._input_limit(GenerationParams()))
        text = hf_generator.tokenizer.decode(ids)
        assert len(ids) == 8 and text.startswith("Instruction first.") and text.endswith("| Edit: ")
        assert "five" not in text and hf_generator.truncated == 1
        whole = hf_generator._encode(prompt, hf_generator._input_limit(GenerationParams(long_prompts="whole")))
        assert hf_generator.tokenizer.decode(whole) == prompt and hf_generator.truncated == 1
    finally:
        hf_generator.max_input_tokens = None


def test_backend_errors_are_one_line(monkeypatch):
    with pytest.raises(MetaAlignerError, match="unknown backend 'tgi'"):
        get_generator("tgi", "x")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(MetaAlignerError, match="OPENAI_API_KEY"):
        get_generator("openai", "gpt-4o-mini")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(MetaAlignerError, match="needs vllm"):
            get_generator("vllm", "x")


def test_openai_backend_unreachable_server_is_one_line_error():
    port = _free_port()
    gen = get_generator("openai", "m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=5)
    with pytest.raises(MetaAlignerError) as err:
        gen.generate(["a", "b"], GenerationParams(max_new_tokens=2))
    message = str(err.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "APIConnectionError" in message


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_openai_backend_against_transformers_serve(varied_llama_dir, hf_generator, tmp_path, monkeypatch):
    """A real OpenAI-compatible HTTP server on 127.0.0.1: same text as the hf backend, in order."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OPENAI_API_KEY": ""}
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "transformers.cli.transformers", "serve", str(varied_llama_dir), "--host", "127.0.0.1",
         "--port", str(port), "--device", "cpu", "--dtype", "float32"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:  # its own readiness signal, with a deadline a loaded machine never reaches (metaaligner.testing.waits)
        wait_for_http(f"http://127.0.0.1:{port}/health", "transformers serve to answer /health", process=server,
                      log=tmp_path / "serve.log")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server needs no key
        params = GenerationParams(max_new_tokens=12, batch_size=4)
        remote = get_generator("openai", str(varied_llama_dir), base_url=f"http://127.0.0.1:{port}/v1")
        assert remote.generate(PROMPTS, params) == hf_generator.generate(PROMPTS, params)
        assert remote.stats["generated_tokens"] == 12 * len(PROMPTS)
        chat = get_generator("openai", str(varied_llama_dir), base_url=f"http://127.0.0.1:{port}/v1", chat_template=True)
        replies = chat.generate(PROMPTS[:2], GenerationParams(max_new_tokens=4))
        assert len(replies) == 2 and all(isinstance(r, str) and r for r in replies)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        finally:
            if server.poll() is None:
                server.kill()
            log.close()
    assert server.returncode is not None


# ---------------------------------------------------------------- the fast greedy engine (issue 15)

def _released_way(gen, prompt: str, max_new_tokens: int) -> str:
    """One plain ``model.generate`` on one unpadded prompt, as the released script does."""
    import torch

    inputs = gen.tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = gen.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=gen.tokenizer.pad_token_id)
    return gen.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.fixture
def early_stop(hf_generator):
    """Make EOS a token the tiny model emits early in some rows but not others, so rows finish at
    different steps (the fast engine then drops finished rows from its batch)."""
    config = hf_generator.model.generation_config
    saved = config.eos_token_id
    free = hf_generator.generate(PROMPTS, GenerationParams(max_new_tokens=12, batch_size=1))
    ids = hf_generator.tokenizer(free[1], add_special_tokens=False)["input_ids"]
    config.eos_token_id = ids[2]
    yield ids[2]
    config.eos_token_id = saved


def test_fast_engine_equals_released_generate_per_row(hf_generator, early_stop):
    assert hf_generator.engine == "fast"
    expected = [_released_way(hf_generator, p, 12) for p in PROMPTS]
    lengths = [len(hf_generator.tokenizer(e, add_special_tokens=False)["input_ids"]) for e in expected]
    assert len(set(lengths)) > 1 and min(lengths) < 11  # rows really stop at different steps
    for size in (1, 2, 5):
        assert hf_generator.generate(PROMPTS, GenerationParams(max_new_tokens=12, batch_size=size)) == expected


def test_fast_engine_equals_generate_engine_and_compaction_changes_nothing(varied_llama_dir, early_stop, hf_generator):
    import torch

    from metaaligner.generation.fast_greedy import greedy_batch

    params = GenerationParams(max_new_tokens=12, batch_size=5)
    slow = get_generator("hf", str(varied_llama_dir), device="cpu", engine="generate")
    slow.model.generation_config.eos_token_id = early_stop
    assert slow.generate(PROMPTS, params) == hf_generator.generate(PROMPTS, params)
    ids = [hf_generator.tokenizer(p)["input_ids"] for p in PROMPTS]
    with torch.inference_mode():
        compacted = greedy_batch(hf_generator.model, ids, 12, {early_stop}, 0, compact=True)
        padded = greedy_batch(hf_generator.model, ids, 12, {early_stop}, 0, compact=False)
    assert compacted == padded
    assert any(row[-1] == early_stop and len(row) < 12 for row in compacted)
    assert any(len(row) == 12 for row in compacted)
    assert greedy_batch(hf_generator.model, ids, 0, {early_stop}, 0) == [[]] * len(PROMPTS)


def test_fast_engine_drops_a_finished_long_row_and_the_padding_at_once(hf_generator, monkeypatch):
    """The longest prompt stops first (at its third token): the engine drops it at the next step, not
    once half the batch is done, and re-packs the survivors without the padding they shared; every
    row's text stays that of batch 1 and of no compaction (so the trimmed positions and mask are right)."""
    import torch

    from metaaligner.generation import fast_greedy

    ids = [hf_generator.tokenizer(p)["input_ids"] for p in PROMPTS]
    ids[1] = ids[1] + ids[1][1:]  # 39 tokens against 1..22: most of the others' slots are its padding
    seen = []
    keep = fast_greedy._DecodeState.keep
    monkeypatch.setattr(fast_greedy._DecodeState, "keep",
                        lambda self, live: (seen.append((len(self.mask), len(live), self.trim(live))), keep(self, live)))
    with torch.inference_mode():
        stop = {fast_greedy.greedy_batch(hf_generator.model, [ids[1]], 3, set(), 0)[0][2]}
        alone = [fast_greedy.greedy_batch(hf_generator.model, [row], 12, stop, 0)[0] for row in ids]
        seen.clear()
        compacted = fast_greedy.greedy_batch(hf_generator.model, ids, 12, stop, 0, share_prefix=False)
        seen_compacted = list(seen)
        padded = fast_greedy.greedy_batch(hf_generator.model, ids, 12, stop, 0, compact=False)
    assert compacted == padded == alone
    assert len(compacted[1]) == 3 and all(len(row) > 3 for i, row in enumerate(compacted) if i != 1)
    buffered, live, trim = seen_compacted[0]
    assert (buffered, live) == (5, 4)  # one of five finished: dropped at once
    assert trim == len(ids[1]) - max(len(row) for i, row in enumerate(ids) if i != 1)  # 39 - 22 slots
    assert len(seen) == len(seen_compacted)  # compact=False never re-packs


def test_compaction_pays_when_the_saved_kv_reads_outweigh_the_copy():
    from metaaligner.generation.fast_greedy import _compaction_pays

    assert _compaction_pays(16, 15, 700, 0, 200)  # one dead row early in a long budget
    assert _compaction_pays(11, 11, 700, 300, 100)  # no row to drop, but 300 slots of shared padding
    assert not _compaction_pays(16, 15, 700, 0, 1)  # the copy costs more than one step saves
    assert not _compaction_pays(8, 8, 700, 0, 200)  # nothing to drop


def test_fast_engine_falls_back_when_the_generation_config_changes_greedy(hf_generator):
    from metaaligner.generation.fast_greedy import fast_greedy_supported

    config = hf_generator.model.generation_config
    assert fast_greedy_supported(hf_generator.model)
    config.repetition_penalty = 1.5
    try:
        assert not fast_greedy_supported(hf_generator.model)
        expected = [_released_way(hf_generator, p, 10) for p in PROMPTS[:3]]
        assert hf_generator.generate(PROMPTS[:3], GenerationParams(max_new_tokens=10, batch_size=3)) == expected
    finally:
        config.repetition_penalty = None
    hf_generator.model.config.sliding_window = 8  # a sliding-window cache is not the buffer cache
    try:
        assert not fast_greedy_supported(hf_generator.model)
    finally:
        hf_generator.model.config.sliding_window = None
    assert fast_greedy_supported(hf_generator.model)
    with pytest.raises(MetaAlignerError, match="unknown hf engine 'turbo'"):
        get_generator("hf", model_obj=hf_generator.model, tokenizer=hf_generator.tokenizer, engine="turbo")


def test_vllm_engine_kwargs_prefix_caching_tensor_parallel_ngram():
    from metaaligner.generation.vllm_backend import engine_kwargs

    assert engine_kwargs("m", None, False, 1, None, 0.9, 0) == {
        "model": "m", "dtype": "auto", "seed": 0, "enable_lora": False, "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.9, "enable_prefix_caching": True, "generation_config": "auto"}
    kwargs = engine_kwargs("m", "bf16", True, 4, 4096, 0.8, 3, prefix_caching=False, ngram_speculation=5)
    assert kwargs["dtype"] == "bfloat16" and kwargs["enable_lora"] and kwargs["tensor_parallel_size"] == 4
    assert kwargs["max_model_len"] == 4096 and kwargs["enable_prefix_caching"] is False
    assert kwargs["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 5,
                                            "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    with pytest.raises(MetaAlignerError, match="unknown dtype 'int3'"):
        engine_kwargs("m", "int3", False, 1, None, 0.9, 0)
    with pytest.raises(MetaAlignerError, match="tensor_parallel_size must be >= 1"):
        engine_kwargs("m", None, False, 0, None, 0.9, 0)


def test_backend_auto_picks_vllm_only_with_vllm_and_a_gpu(monkeypatch):
    import importlib.util

    import torch

    from metaaligner import generation

    real_find_spec = importlib.util.find_spec
    for installed, gpu, expected in ((True, True, "vllm"), (True, False, "hf"), (False, True, "hf")):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, _i=installed: (object() if _i else None) if name == "vllm" else real_find_spec(name, *a))
        monkeypatch.setattr(torch.cuda, "is_available", lambda _g=gpu: _g)
        picked = []
        monkeypatch.setattr(generation.importlib, "import_module",
                            lambda name, _p=picked: type("M", (), {n: (lambda *a, _n=name, **k: _p.append(_n)) for n in
                                                        ("HFGenerator", "VLLMGenerator")}))
        generation.get_generator("auto", "m")
        assert picked == [generation.BACKENDS[expected].split(":")[0]]


def test_fast_engine_shares_the_template_prefix_and_keeps_the_text(hf_generator):
    from metaaligner.generation.fast_greedy import shared_prefix_length

    head = "You are an assistant to human. Edit the answer to improve it considering these aspects: "
    prompts = [head + "Harmlessness | Context: hi | Answer: no | Edit: ", head + "Humour | Context: a joke",
               head + "x"]
    ids = [hf_generator.tokenizer(p)["input_ids"] for p in prompts]
    n = shared_prefix_length(ids)
    assert n >= 16 and all(i[:n] == ids[0][:n] for i in ids) and len({i[n] for i in ids}) > 1
    assert shared_prefix_length(ids[:1]) == 0 and shared_prefix_length([[1, 2, 3], [1, 2, 4]]) == 0
    assert shared_prefix_length([[7] * 20, [7] * 30]) == 19  # the shortest keeps one token of its own
    expected = [_released_way(hf_generator, p, 10) for p in prompts]
    assert hf_generator.generate(prompts, GenerationParams(max_new_tokens=10, batch_size=3)) == expected
    hf_generator.share_prefix = False
    try:
        assert hf_generator.generate(prompts, GenerationParams(max_new_tokens=10, batch_size=3)) == expected
    finally:
        hf_generator.share_prefix = True


def test_one_auto_rule_for_every_caller(monkeypatch):
    """``auto`` means the same in generation.get_generator and the aligner's make_generator."""
    import metaaligner.generation as gen

    monkeypatch.setattr(gen, "_vllm_usable", lambda: False)
    assert gen.resolve_backend("auto") == "hf"
    assert gen.resolve_backend("auto", "http://127.0.0.1:1/v1") == "openai"
    assert gen.resolve_backend("vllm", "http://127.0.0.1:1/v1") == "vllm"
    monkeypatch.setenv("OPENAI_API_KEY", "")
    backend = gen.get_generator("auto", "served-model", base_url="http://127.0.0.1:1/v1")
    assert backend.name == "openai" and backend.base_url == "http://127.0.0.1:1/v1"


def test_one_key_rule_for_the_backend_and_the_judge(monkeypatch):
    from metaaligner.errors import MetaAlignerError
    from metaaligner.generation.openai_backend import resolve_api_key
    from metaaligner.judge import engine

    assert engine.resolve_api_key is resolve_api_key
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert resolve_api_key("http://127.0.0.1:1/v1") == "EMPTY"
    with pytest.raises(MetaAlignerError, match="set OPENAI_API_KEY in the environment"):
        resolve_api_key(None)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert resolve_api_key(None) == "sk-test"


def test_generate_all_checks_one_completion_per_prompt():
    from metaaligner.errors import MetaAlignerError
    from metaaligner.generation import GenerationParams, generate_all

    class Short:
        name = "short"

        def generate(self, prompts, params, progress=False):
            return ["only one"]

    with pytest.raises(MetaAlignerError, match="^backend returned 1 outputs for 2 prompts$"):
        generate_all(Short(), ["a", "b"], GenerationParams())
    assert generate_all(Short(), ["a"], GenerationParams()) == ["only one"]


# ---------------------------------------------------------------- vllm: install hint and engine options (issue 33)

def test_vllm_missing_says_which_releases_fit_and_not_a_bare_pip_install(monkeypatch):
    import re

    monkeypatch.setitem(sys.modules, "vllm", None)           # import vllm -> ImportError, installed or not
    with pytest.raises(MetaAlignerError) as exc:
        get_generator("vllm", "x")
    message = str(exc.value)
    assert "needs vllm" in message and not re.search(r"pip install vllm(?!==)", message)
    for fits in ("0.32.0 needs torch==2.13.0 with transformers<5.20", "0.33.0 torch==2.14.0 with transformers<5.21",
                 "0.34.0 torch==2.14.0 with transformers>=5.16.1,<5.23", "--backend openai --base_url"):
        assert fits in message


def test_vllm_options_reach_the_engine_and_tensor_parallel_defaults_to_1(monkeypatch, tiny_llama_dir):
    import types

    import torch

    from metaaligner.aligner import make_generator

    class FakeLLM:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)   # TP over every visible GPU was the default
    plain = make_generator("vllm", str(tiny_llama_dir), dtype="float32")
    assert plain.llm.kwargs["tensor_parallel_size"] == 1 and plain.llm.kwargs["gpu_memory_utilization"] == 0.9
    assert "max_model_len" not in plain.llm.kwargs and plain.llm.kwargs["dtype"] == "float32"
    tuned = make_generator("vllm", str(tiny_llama_dir), dtype="float32", vllm_options={
        "tensor_parallel_size": 2, "max_model_len": 1024, "gpu_memory_utilization": 0.5})
    assert {k: tuned.llm.kwargs[k] for k in ("tensor_parallel_size", "max_model_len", "gpu_memory_utilization")} == {
        "tensor_parallel_size": 2, "max_model_len": 1024, "gpu_memory_utilization": 0.5}
    with pytest.raises(MetaAlignerError, match="--tensor_parallel_size needs --backend vllm or auto"):
        make_generator("hf", str(tiny_llama_dir), vllm_options={"tensor_parallel_size": 2})
    with pytest.raises(MetaAlignerError, match="unknown vllm option"):
        make_generator("vllm", str(tiny_llama_dir), vllm_options={"tp": 2})


@pytest.mark.parametrize("script", ["inference/aligner_inference.py", "inference/policy_generation.py"])
def test_generation_scripts_take_the_vllm_options(script, repo_root, capsys, monkeypatch):
    import importlib.util
    from pathlib import Path

    from metaaligner import cli

    name = "issue33_" + Path(script).stem
    spec = importlib.util.spec_from_file_location(name, repo_root / script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)          # dataclasses look their module up there
    spec.loader.exec_module(module)
    config = cli.parse(module.make_parser(), ["--backend", "vllm", "--tensor_parallel_size", "2",
                                              "--max_model_len", "2048", "--gpu_memory_utilization", "0.6"])[0]
    assert (config.tensor_parallel_size, config.max_model_len, config.gpu_memory_utilization) == (2, 2048, 0.6)
    assert cli.parse(module.make_parser(), [])[0].tensor_parallel_size is None    # the backend's 1
    with pytest.raises(SystemExit):
        cli.parse(module.make_parser(), ["--backend", "hf", "--tensor_parallel_size", "2"])
    assert "--tensor_parallel_size needs --backend vllm or auto" in capsys.readouterr().err


def test_row_events_hear_each_row_once_with_its_text_and_can_stop_one(hf_generator):
    """``generate_all`` with ``RowEvents``: every row's ``done`` once, with the text returned (in the
    call's row numbering, whatever the length sort did) and its token count; a row stopped at its
    first question (right after the prefill) keeps one token; the other rows' texts are unchanged. A
    backend without per-row events is told of every row at the end."""
    from metaaligner.generation import RowEvents, generate_all

    params = GenerationParams(max_new_tokens=8, batch_size=5)
    plain = generate_all(hf_generator, PROMPTS, params)
    heard = {}
    events = RowEvents(done=lambda i, text, tokens: heard.setdefault(i, (text, tokens)), stopped=lambda i: i == 3)
    out = generate_all(hf_generator, PROMPTS, params, events=events)
    assert sorted(heard) == list(range(len(PROMPTS))) and {i: t for i, (t, _) in heard.items()} == dict(enumerate(out))
    assert [o for i, o in enumerate(out) if i != 3] == [p for i, p in enumerate(plain) if i != 3]
    first = hf_generator.tokenizer(PROMPTS[3], return_tensors=None)["input_ids"]
    assert heard[3][1] <= 1 and len(hf_generator.tokenizer(out[3])["input_ids"]) <= 1 < len(first)
    assert heard[0][1] == 8  # a row that ran its whole budget (no EOS in 8 tokens at these weights)

    # prompts that join the call's last batch between steps are numbered after its own, with their text alone
    assert len(PROMPTS) == 5
    given = iter([[PROMPTS[0]], [], [PROMPTS[1]]])
    heard.clear()
    out = generate_all(hf_generator, PROMPTS[2:], params, events=RowEvents(
        done=lambda i, text, tokens: heard.setdefault(i, text), more=lambda live: next(given, [])))
    assert out == plain[2:] and heard == {0: plain[2], 1: plain[3], 2: plain[4], 3: plain[0], 4: plain[1]}

    class Plain:  # a backend without per-row events: told at the end
        name = "plain"

        def generate(self, prompts, params, progress=False):
            return [p.upper() for p in prompts]

    told = []
    assert generate_all(Plain(), ["a", "b"], params, events=RowEvents(done=lambda *e: told.append(e))) == ["A", "B"]
    assert told == [(0, "A", None), (1, "B", None)]
