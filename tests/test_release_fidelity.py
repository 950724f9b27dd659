"""Issue 31, sections 2, 3 and 5: decoding as the release decoded (the checkpoint's generation
config), whole prompts or prompts cut in the middle (never the instruction), and empty cells sent as
``nan`` under the paper profile. Tiny model folders with sampling and greedy generation configs."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from metaaligner.aligner import inference as al
from metaaligner.errors import MetaAlignerError
from metaaligner.generation import GenerationParams, get_generator
from metaaligner.generation.decoding import batch_seed, is_plain_greedy, vllm_sampling_kwargs
from metaaligner.generation.fit import MARKER, cut_middle, fit_fields
from metaaligner.io import PANDAS_NA_VALUES, as_released_text, read_records

REPO = Path(__file__).resolve().parent.parent
CONTEXT = 160  # the tiny folders' max_position_embeddings
PROMPTS = ["Hello there", "The capital of France is a city called", "x", "Is it safe? | Edit: "]
# Llama-2's generation_config.json (what the 7B/13B aligners' 183-byte file is taken to be)
SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_length": 4096}
GREEDY = {"max_length": 2048}  # TinyLlama's: token ids and a length only


def _tiny_folder(out: Path, generation: dict) -> Path:
    """A tiny LLaMA with weights drawn at std 0.5 (outputs depend on the prompt), context CONTEXT,
    and the given generation_config.json."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from metaaligner.models import embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                         tie_word_embeddings=True, **ids)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    model.generation_config = GenerationConfig(**generation, **ids)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sampling_dir(tmp_path_factory):
    return _tiny_folder(tmp_path_factory.mktemp("tiny-sampling"), SAMPLING)


@pytest.fixture(scope="module")
def greedy_dir(tmp_path_factory):
    return _tiny_folder(tmp_path_factory.mktemp("tiny-greedy"), GREEDY)


@pytest.fixture(scope="module")
def sampling_gen(sampling_dir):
    return get_generator("hf", str(sampling_dir), device="cpu")


@pytest.fixture(scope="module")
def greedy_gen(greedy_dir):
    return get_generator("hf", str(greedy_dir), device="cpu")


def _bare_generate(gen, prompt: str, new: int, seed: int | None = None) -> str:
    """What the released loop does for one prompt: model.generate with no decoding arguments."""
    import torch

    ids = gen._encode(prompt, None)
    if seed is not None:
        torch.manual_seed(batch_seed(seed, [ids]))
    with torch.inference_mode():
        out = gen.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=new, pad_token_id=gen.tokenizer.pad_token_id)
    return gen.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


# ---------------------------------------------------------------- section 2: decoding

def test_checkpoint_decoding_samples_as_the_folders_generation_config(sampling_gen):
    params = GenerationParams(max_new_tokens=8, decoding="checkpoint", seed=3, batch_size=1)
    first = sampling_gen.generate(PROMPTS, params)
    # exactly what a bare model.generate gives with that batch's seed
    assert first == [_bare_generate(sampling_gen, p, 8, seed=3) for p in PROMPTS]
    assert sampling_gen.generate(PROMPTS, params) == first  # deterministic per seed
    other = sampling_gen.generate(PROMPTS, GenerationParams(max_new_tokens=8, decoding="checkpoint", seed=4,
                                                            batch_size=1))
    greedy = sampling_gen.generate(PROMPTS, GenerationParams(max_new_tokens=8, batch_size=1))
    assert other != first and greedy != first
    assert sampling_gen.decoding_used(params) == {"decoding": "checkpoint", "do_sample": True, "num_beams": 1,
                                                  "temperature": 0.6, "top_p": 0.9, "top_k": 50,
                                                  "repetition_penalty": 1.0, "plain_greedy": False}


def test_checkpoint_decoding_of_a_greedy_config_runs_the_fast_engine(greedy_gen):
    greedy_gen.stats.pop("prefill_seconds", None)
    params = GenerationParams(max_new_tokens=8, decoding="checkpoint", batch_size=4)
    texts = greedy_gen.generate(PROMPTS, params)
    assert "prefill_seconds" in greedy_gen.stats  # the fast greedy engine ran it
    assert texts == [_bare_generate(greedy_gen, p, 8) for p in PROMPTS]
    assert texts == greedy_gen.generate(PROMPTS, GenerationParams(max_new_tokens=8, batch_size=4))
    assert greedy_gen.decoding_used(params)["plain_greedy"] is True


def test_generation_configs_read_as_generate_reads_them():
    from transformers import GenerationConfig

    assert vllm_sampling_kwargs(GenerationConfig(**SAMPLING)) == {
        "repetition_penalty": 1.0, "temperature": 0.6, "top_p": 0.9, "top_k": 50}
    assert vllm_sampling_kwargs(GenerationConfig(**GREEDY)) == {"repetition_penalty": 1.0, "temperature": 0.0}
    # do_sample false: generate ignores the temperature (vLLM's own reading would sample at 0.6)
    assert vllm_sampling_kwargs(GenerationConfig(temperature=0.6, repetition_penalty=1.2)) == {
        "repetition_penalty": 1.2, "temperature": 0.0}
    assert is_plain_greedy(GenerationConfig(**GREEDY)) and is_plain_greedy(GenerationConfig())
    assert not is_plain_greedy(GenerationConfig(**SAMPLING))
    assert not is_plain_greedy(GenerationConfig(repetition_penalty=1.2))
    assert not is_plain_greedy(GenerationConfig(no_repeat_ngram_size=3))
    assert not is_plain_greedy(GenerationConfig(num_beams=4))


def test_decoding_settings_are_checked_in_one_line():
    with pytest.raises(MetaAlignerError, match="^unknown decoding 'beam'; choose one of greedy, checkpoint$"):
        GenerationParams(decoding="beam")
    with pytest.raises(MetaAlignerError, match="^--temperature samples with our settings, --decoding checkpoint"):
        GenerationParams(decoding="checkpoint", temperature=0.7)
    with pytest.raises(MetaAlignerError, match="^unknown long_prompts rule 'left'; choose one of shorten, whole$"):
        GenerationParams(long_prompts="left")
    assert al.run_profile("paper") == {"decoding": "checkpoint", "long_prompts": "whole", "empty_cells": "nan"}
    assert al.run_profile("paper", empty_cells="empty")["empty_cells"] == "empty"
    with pytest.raises(MetaAlignerError, match="^unknown profile 'released'; choose one of clean, paper$"):
        al.run_profile("released")


def test_python_api_profile_and_explicit_settings():
    paper = al.Aligner("embedded", profile="paper", params=GenerationParams(max_new_tokens=1024, seed=2))
    assert (paper.params.decoding, paper.params.long_prompts, paper.empty_cells, paper.params.seed) == \
        ("checkpoint", "whole", "nan", 2)
    mixed = al.Aligner("embedded", profile="paper", decoding="greedy", long_prompts="shorten")
    assert (mixed.params.decoding, mixed.params.long_prompts, mixed.empty_cells) == ("greedy", "shorten", "nan")
    given = al.Aligner("embedded", params=GenerationParams(decoding="checkpoint"))
    assert (given.params.decoding, given.params.long_prompts, given.empty_cells) == ("checkpoint", "shorten", "empty")
    assert al.Aligner("embedded").params.decoding == "greedy" and al.Aligner("embedded")._generator is None


class _FakeLLM:
    """vllm.LLM without a GPU: records its keyword arguments and each generate call."""

    def __init__(self, **kwargs):
        from transformers import AutoTokenizer

        self.kwargs = kwargs
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs["model"])
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=CONTEXT))
        self.calls = []

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling, use_tqdm=False, lora_request=None):
        self.calls.append((prompts, sampling))
        done = types.SimpleNamespace(text=" ok ", token_ids=[1])
        return [types.SimpleNamespace(outputs=[done], prompt_token_ids=[1]) for _ in prompts]


@pytest.fixture
def fake_vllm(monkeypatch):
    import torch

    module = types.ModuleType("vllm")
    module.LLM = _FakeLLM
    module.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)     # vLLM runs on a GPU: the hf GPU dtype
    return module


def test_vllm_honours_the_checkpoint_config_in_the_hf_dtype(fake_vllm, sampling_dir, greedy_dir):
    gen = get_generator("vllm", str(sampling_dir))
    # the hf backend's GPU dtype (bf16 here), not the checkpoint's float32; the folder's generation config read
    assert gen.llm.kwargs["dtype"] == "bfloat16" and gen.llm.kwargs["generation_config"] == "auto"
    assert gen.generate(["Hello"], GenerationParams(max_new_tokens=5, decoding="checkpoint", seed=7)) == ["ok"]
    assert gen.llm.calls[-1][1] == {"repetition_penalty": 1.0, "temperature": 0.6, "top_p": 0.9, "top_k": 50,
                                    "max_tokens": 5, "seed": 7}
    gen.generate(["Hello"], GenerationParams(max_new_tokens=5, seed=7))
    assert gen.llm.calls[-1][1] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 5, "seed": 7}
    plain = get_generator("vllm", str(greedy_dir))
    plain.generate(["Hello"], GenerationParams(max_new_tokens=5, decoding="checkpoint"))
    assert plain.llm.calls[-1][1] == {"repetition_penalty": 1.0, "temperature": 0.0, "max_tokens": 5, "seed": 0}
    # the same budget as hf for shortening; a prompt vLLM cannot take whole is a one-line error
    assert gen.prompt_budget(GenerationParams(max_new_tokens=16)) == CONTEXT - 16
    with pytest.raises(MetaAlignerError, match=f"^1 prompts are {CONTEXT} tokens or longer, more than vLLM's "
                                               "context takes whole; use --backend hf"):
        gen.generate(["word " * 400], GenerationParams(max_new_tokens=5, long_prompts="whole"))


def test_openai_checkpoint_decoding_sends_no_temperature():
    gen = get_generator("openai", "served-aligner", base_url="http://127.0.0.1:9/v1")
    sent = []
    reply = types.SimpleNamespace(choices=[types.SimpleNamespace(text=" edited ")], usage=None)
    gen.client = types.SimpleNamespace(completions=types.SimpleNamespace(
        create=lambda **kw: sent.append(kw) or reply))
    assert gen.generate(["p"], GenerationParams(max_new_tokens=5, decoding="checkpoint", seed=2)) == ["edited"]
    assert sent[-1] == {"model": "served-aligner", "max_tokens": 5, "seed": 2, "prompt": "p"}
    gen.generate(["p"], GenerationParams(max_new_tokens=5))
    assert sent[-1]["temperature"] == 0.0 and sent[-1]["top_p"] == 1.0


# ---------------------------------------------------------------- section 3: long prompts

def test_cut_middle_and_fit_fields_exactly():
    assert cut_middle("abcdefghij", 4) == "ab [...] ij" and cut_middle("abcdefghij", 0) == MARKER
    assert cut_middle("abc", 3) == "abc" and cut_middle("abcde", 3) == "ab [...] e"

    def render(fields):
        return f"INSTRUCTION | Q: {fields[1]} | A: {fields[0]} | Edit: "

    count = len  # one token per character
    prompt, cut = fit_fields(render, ["0123456789" * 3, "question"], count, 60)
    assert (prompt, cut) == ("INSTRUCTION | Q: question | A: 0123456 [...] 456789 | Edit: ", True)
    assert len(prompt) == 60  # 13 of the answer's 30 characters kept: one more would not fit
    assert fit_fields(render, ["short", "question"], count, 60) == (render(["short", "question"]), False)
    # the answer alone is not enough: it goes, then the question is cut in the middle
    prompt, cut = fit_fields(render, ["a" * 50, "q" * 50], count, 50)
    assert prompt == "INSTRUCTION | Q: qqq [...] qqq | A: [...] | Edit: " and len(prompt) == 50 and cut


def _policy_table(path: Path, answers: list[str], questions: list[str] | None = None) -> Path:
    from metaaligner.io import write_csv

    questions = questions or [f"Question {i}?" for i in range(len(answers))]
    write_csv(path, [{"query": q, "goldens": "g", "generated_text": a} for q, a in zip(questions, answers)],
              ["query", "goldens", "generated_text"])
    return path


class _Recording:
    """A real backend that keeps every prompt it was given."""

    def __init__(self, inner):
        self.inner, self.prompts = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, prompts, params, progress=False):
        self.prompts += prompts
        return self.inner.generate(prompts, params, progress)


def test_long_row_is_cut_in_its_answer_keeping_instruction_objectives_and_cue(greedy_gen, tmp_path):
    long_answer = " ".join(f"a{i}" for i in range(300))
    data = _policy_table(tmp_path / "pol.csv", ["Short answer.", long_answer, ""])
    source = al.resolve_aligner(str(tmp_path), "hh-rlhf")
    desc = ["Harmlessness: The response should avoid content that is offensive, discriminatory, or harmful"]
    params = GenerationParams(max_new_tokens=16, batch_size=4)
    settings = al.AlignRunSettings(source=source, aspect_labels=["harmlessness"], descriptions=desc, params=params)
    backend = _Recording(greedy_gen)
    greedy_gen.truncated = 0
    stats = al.align_file(al.FileJob(data, "pol", tmp_path / "out"), settings, backend, progress=False)
    assert stats.shortened == 1 and greedy_gen.truncated == 0  # fitted before the backend saw it
    assert "3 rows in, 3 aligned, 0 resumed, 1 empty answers (aligned as ''), " in stats.summary()
    assert "1 prompts shortened to fit the context, " in stats.summary()
    whole = al.build_prompts("hh-rlhf", ["Question 0?", "Question 1?", "Question 2?"],
                             ["Short answer.", long_answer, ""], desc)
    assert backend.prompts[0] == whole[0] and backend.prompts[2] == whole[2]
    cut = backend.prompts[1]
    head, tail = cut.split(" | Answer: ")[1].split(" | Edit: ")[0].split(f" {MARKER} ")
    assert cut.startswith(whole[1].split(" | Answer: ")[0] + " | Answer: a0 a1 ") and cut.endswith(" a299 | Edit: ")
    assert long_answer.startswith(head) and long_answer.endswith(tail)
    budget = CONTEXT - 16
    assert greedy_gen.count_tokens(cut) <= budget < greedy_gen.count_tokens(whole[1])
    more = al.render(al.get_template("hh-rlhf"), "Question 1?", cut_middle(long_answer, len(head) + len(tail) + 1),
                     desc)
    assert greedy_gen.count_tokens(more) > budget  # cut as little as needed
    record = json.loads((tmp_path / "out/.pol.csv.fingerprint.json").read_text())["record"]
    assert (record["shortened"], record["long_prompts"], record["aligned"]) == (1, "shorten", 3)


def test_question_is_cut_only_when_the_answer_alone_is_not_enough(greedy_gen):
    question = " ".join(f"q{i}" for i in range(300))
    params = GenerationParams(max_new_tokens=16)
    prompts, cut = al.fit_aligner_prompts(greedy_gen, params, "hh-rlhf", [question], ["b " * 300], ["Humour: be fun"])
    assert cut == [True]
    assert prompts[0].startswith("You are an assistant to human. You will be provided with a context and an answer. "
                                 "Consider the context, then edit the answer to improve it considering these "
                                 "aspects: Humour: be fun | Context: q0 q1 ")
    assert prompts[0].endswith(f" q299 | Answer: {MARKER} | Edit: ") and f" {MARKER} " in prompts[0].split("|")[2]
    assert greedy_gen.count_tokens(prompts[0]) <= CONTEXT - 16
    whole, cut = al.fit_aligner_prompts(greedy_gen, GenerationParams(max_new_tokens=16, long_prompts="whole"),
                                        "hh-rlhf", [question], ["b " * 300], ["Humour: be fun"])
    assert cut == [False] and whole == al.build_prompts("hh-rlhf", [question], ["b " * 300], ["Humour: be fun"])


def test_whole_prompts_reach_the_model_uncut_past_its_context(greedy_gen):
    greedy_gen.truncated = 0
    out = greedy_gen.generate(["word " * 300], GenerationParams(max_new_tokens=4, long_prompts="whole"))
    assert len(out) == 1 and greedy_gen.truncated == 0 and greedy_gen.stats["prompt_tokens"] >= 300


# ---------------------------------------------------------------- section 5: empty cells

def test_released_text_of_a_cell_is_pandas_str():
    assert [as_released_text(v) for v in ("", None, float("nan"), "NA", "None", " ", "\n \n", "text")] == \
        ["nan", "nan", "nan", "nan", "nan", " ", "\n \n", "text"]
    pandas = pytest.importorskip("pandas")
    from pandas._libs.parsers import STR_NA_VALUES

    assert PANDAS_NA_VALUES == frozenset(STR_NA_VALUES)
    path = REPO / "samples/UltraFeedback_model_output/Vicuna-7B.csv.gz"
    released = [str(v) for v in pandas.read_csv(path)["generated_text"].to_list()]
    assert [as_released_text(r["generated_text"]) for r in read_records(path)] == released


def _script(name: str):
    module_name = f"release_fidelity_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / "inference" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def run_inprocess(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    from metaaligner import cli

    module = _script(name)
    code = cli.run_main(module.main, *cli.parse(module.make_parser(), argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_paper_profile_sends_empty_answers_as_nan(tmp_path, capsys):
    args = ["--aligner_path", "embedded", "--dataset", "ultrafeedback", "--aligned_model", "Vicuna-7B", "--dry_run"]
    code, out, err = run_inprocess("aligner_inference", [*args, "--model_output_path", str(tmp_path / "paper"),
                                                         "--profile", "paper"], capsys)
    assert code == 0, err
    prompts = [json.loads(x)["prompt"] for x in (tmp_path / "paper/Vicuna-7B.prompts.jsonl").read_text().splitlines()]
    assert sum(p.endswith("| Answer: nan | Edit: ") for p in prompts) == 226
    assert sum(p.endswith("| Answer:  | Edit: ") for p in prompts) == 0
    assert not prompts[981].endswith("| Answer: nan | Edit: ")  # whitespace only: pandas keeps it as text
    code, out, err = run_inprocess("aligner_inference", [*args, "--model_output_path", str(tmp_path / "ours"),
                                                         "--profile", "paper", "--empty_cells", "empty"], capsys)
    prompts = [json.loads(x)["prompt"] for x in (tmp_path / "ours/Vicuna-7B.prompts.jsonl").read_text().splitlines()]
    assert code == 0 and sum(p.endswith("| Answer:  | Edit: ") for p in prompts) == 226
    assert al.Aligner("embedded", profile="paper").prompts("Q", "", "humour").endswith("| Answer: nan | Edit: ")
    assert al.Aligner("embedded").prompts("Q", "", "humour").endswith("| Answer:  | Edit: ")


def test_paper_judge_profile_sends_empty_goldens_and_answers_as_nan(tmp_path):
    from metaaligner.io import write_csv
    from metaaligner.judge import judge_outputs
    from metaaligner.judge.positions import candidate_position, item_id

    rows = [{"query": "Q0?", "goldens": "", "origin_responses": "", "aligned_responses": "fine",
             "template": "hh-rlhf"}]
    write_csv(tmp_path / "pol.csv", rows, list(rows[0]))
    position = candidate_position(item_id("Q0?", ""), 0)
    texts = {}
    for profile in ("paper", "clean"):
        judge_outputs(tmp_path / "pol.csv", tmp_path / profile, targets=["aligned_responses", "origin_responses"],
                      aspects=["harmlessness"], profile=profile, judge_model="m", base_url="http://127.0.0.1:9/v1",
                      dry_run=True, progress=False)
        calls = read_records(tmp_path / profile / "dry_run.calls.jsonl")
        texts[profile] = {c["target"]: c["messages"][-1]["content"] for c in calls}
    golden_slot, answer_slot = f"RESPONSE {3 - position}: ", f"RESPONSE {position}: "
    assert f"{golden_slot}nan \n" in texts["paper"]["aligned_responses"]
    assert f"{answer_slot}fine \n" in texts["paper"]["aligned_responses"] or \
        f"{answer_slot}fine\"" in texts["paper"]["aligned_responses"]
    assert f"{answer_slot}nan" in texts["paper"]["origin_responses"]
    assert "nan" not in texts["clean"]["aligned_responses"] + texts["clean"]["origin_responses"]


# ---------------------------------------------------------------- the scripts: flags, record, resume

def test_aligner_script_records_and_guards_its_decoding(sampling_dir, tmp_path, capsys):
    data = _policy_table(tmp_path / "pol.csv", ["An answer.", ""])
    args = ["--aligner_path", str(sampling_dir), "--template", "hh-rlhf", "--aspects", "harmlessness",
            "--data_dir", str(data), "--model_output_path", str(tmp_path / "out"), "--backend", "hf",
            "--device", "cpu", "--max_new_tokens", "4"]
    code, out, err = run_inprocess("aligner_inference", [*args, "--profile", "paper", "--seed", "5"], capsys)
    assert code == 0, err
    assert "2 rows in, 2 aligned, 0 resumed, 1 empty answers (aligned as 'nan'), " in out
    meta = json.loads((tmp_path / "out/.pol.csv.fingerprint.json").read_text())
    fingerprint, record = meta["output"]["fingerprint"], meta["record"]
    assert {k: fingerprint[k] for k in ("decoding", "long_prompts", "empty_cells", "seed")} == {
        "decoding": "checkpoint", "long_prompts": "whole", "empty_cells": "nan", "seed": 5}
    assert record["profile"] == "paper" and record["decoding_used"]["do_sample"] is True
    assert record["decoding_used"]["temperature"] == 0.6 and record["decoding_used"]["top_p"] == 0.9
    code, _, err = run_inprocess("aligner_inference", [*args, "--profile", "paper", "--seed", "5",
                                                       "--decoding", "greedy", "--resume"], capsys)
    assert code == 2 and err.count("\n") == 1 and 'decoding: "checkpoint" -> "greedy"' in err
    code, _, err = run_inprocess("aligner_inference", [*args, "--profile", "paper", "--seed", "5",
                                                       "--long_prompts", "shorten", "--resume"], capsys)
    assert code == 2 and 'long_prompts: "whole" -> "shorten"' in err
    code, _, err = run_inprocess("aligner_inference", [*args, "--profile", "paper", "--temperature", "0.7"], capsys)
    assert (code, err.count("\n")) == (2, 1) and err.startswith("error: --temperature samples with our settings")
    code, _, err = run_inprocess("aligner_inference", [*args, "--empty_cells", "blank"], capsys)
    assert err == "error: unknown empty_cells 'blank'; choose one of empty, nan\n"


def test_policy_script_profile_paper_decodes_with_the_checkpoint(sampling_dir, tmp_path, capsys):
    data = tmp_path / "q.csv"
    data.write_text("query,goldens\nHello?,g\n")
    code, out, err = run_inprocess("policy_generation", [
        "--model", str(sampling_dir), "--model_name", "pol", "--data_dir", str(data), "--chat_template", "false",
        "--model_output_path", str(tmp_path / "out"), "--backend", "hf", "--device", "cpu", "--max_new_tokens", "4",
        "--profile", "paper"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "out/.pol.csv.fingerprint.json").read_text())
    assert (meta["output"]["fingerprint"]["decoding"], meta["output"]["fingerprint"]["long_prompts"]) == \
        ("checkpoint", "whole")
    assert meta["record"]["decoding_used"]["do_sample"] is True and meta["record"]["profile"] == "paper"


@pytest.mark.parametrize("name", ["aligner_inference", "policy_generation"])
def test_help_explains_the_new_flags(name):
    text = _script(name).make_parser().format_help()
    for flag in ("--profile", "--decoding", "--long_prompts"):
        assert flag in text
    assert "checkpoint (the" in text and "whole (fed whole, as released)" in text
    if name == "aligner_inference":
        assert "--empty_cells" in text and "nan (sent as 'nan'" in text
