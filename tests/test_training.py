"""Aligner training: SFT stage, label mask, curriculum, resume, metaaligner.json, two processes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaaligner.testing.waits import DEADLINE_S
from metaaligner.training.sft import SFTStageConfig, tokenize_item, train_sft


def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _losses(log_path, stage):
    return [r["loss"] for r in _records(log_path) if r.get("stage") == stage and "loss" in r]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One CPU thread: on the shared 2-core machine, 2 threads per process measured ~3x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from metaaligner.models import load_tokenizer

    return load_tokenizer(str(tiny_llama_dir), padding_side="right")


def test_label_mask_known_example(tokenizer):
    # SmolLM2's tokenizer: "Edit: " -> [15867, 42, 216] on its own; "Sure thing." -> [34355, 2775, 30];
    # EOS <|im_end|> = 2. The prompt keeps its trailing-space token (216) as at inference.
    ids, labels, cut = tokenize_item(tokenizer, "Edit: ", "Sure thing.", max_length=None)
    assert ids == [15867, 42, 216, 34355, 2775, 30, 2]
    assert labels == [-100, -100, -100, 34355, 2775, 30, 2]
    assert cut is False


def test_truncation_keeps_prompt_end_and_half_budget_for_target(tokenizer):
    prompt = "a " * 20 + "| Edit: "
    p = tokenizer(prompt)["input_ids"]
    c = tokenizer("b " * 20, add_special_tokens=False)["input_ids"] + [2]
    ids, labels, cut = tokenize_item(tokenizer, prompt, "b " * 20, max_length=16)
    assert cut is True and len(ids) == 16
    assert ids[:8] == p[-8:] and ids[8:] == c[:8]     # prompt end (the Edit cue) + first half of target
    assert labels == [-100] * 8 + c[:8]


def test_vicuna_v1_1_format_wraps_and_masks_as_fastchat(tokenizer):
    """FastChat's train_mem.py (the released aligner and SFT runs): the item inside the Vicuna v1.1
    conversation, "<system> USER: <prompt> ASSISTANT: <target></s>", the loss on " <target>" + EOS only."""
    ids, labels, cut = tokenize_item(tokenizer, "Edit: ", "Sure thing.", None, prompt_format="vicuna_v1.1")
    assert tokenizer.decode(ids) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Edit:  ASSISTANT: Sure thing.<|im_end|>")
    n_masked = len(tokenizer("A chat between a curious user and an artificial intelligence assistant. The assistant "
                             "gives helpful, detailed, and polite answers to the user's questions. USER: Edit:  "
                             "ASSISTANT:")["input_ids"])
    # SmolLM2: " Sure" = 16096 (the target's first token carries the space after "ASSISTANT:"), " thing" 2775, "." 30
    assert labels == [-100] * n_masked + [16096, 2775, 30, 2] and ids[n_masked:] == [16096, 2775, 30, 2]
    assert cut is False
    assert tokenize_item(tokenizer, "Edit: ", "Sure thing.", None) == tokenize_item(
        tokenizer, "Edit: ", "Sure thing.", None, prompt_format="raw")
    with pytest.raises(Exception, match="--prompt_format must be one of raw, vicuna_v1.1, got 'chatml'"):
        tokenize_item(tokenizer, "Edit: ", "Sure thing.", None, prompt_format="chatml")


def test_logged_first_loss_is_target_only_nll(tiny_llama_dir, tmp_path):
    """The trainer's first logged loss equals -mean log p(target + EOS | prompt) computed by hand."""
    import torch
    from transformers import AutoModelForCausalLM

    from metaaligner.models import load_tokenizer

    tok = load_tokenizer(str(tiny_llama_dir), padding_side="right")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    prompt, target = "Context: hi | Answer: yo | Edit: ", "Hello there."
    ids, labels, _ = tokenize_item(tok, prompt, target, None)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    logp = torch.log_softmax(logits.float(), -1)
    n_prompt = len(tok(prompt)["input_ids"])
    expected = -sum(logp[t - 1, ids[t]].item() for t in range(n_prompt, len(ids))) / (len(ids) - n_prompt)
    log = tmp_path / "log.jsonl"
    cfg = SFTStageConfig(max_steps=1, per_device_train_batch_size=1, gradient_accumulation_steps=1,
                         logging_steps=1, save_steps=100)
    train_sft(str(tiny_llama_dir), [{"prompt": prompt, "completion": target}], None, str(tmp_path / "o"),
              cfg, "warmup", str(log))
    assert _losses(log, "warmup")[0] == pytest.approx(expected, abs=1e-4)


def test_loss_falls_on_repeated_tiny_batch(tiny_llama_dir, tmp_path):
    items = [{"prompt": "Q: 1 | Edit: ", "completion": "one two three"},
             {"prompt": "Q: 2 | Edit: ", "completion": "four five six"}]
    log = tmp_path / "log.jsonl"
    cfg = SFTStageConfig(max_steps=25, learning_rate=2e-2, warmup_ratio=0.0, lr_scheduler_type="constant",
                         per_device_train_batch_size=2, gradient_accumulation_steps=1, logging_steps=1,
                         save_steps=1000, weight_decay=0.0)
    out = train_sft(str(tiny_llama_dir), items, None, str(tmp_path / "o"), cfg, "sft", str(log))
    losses = _losses(log, "sft")
    assert len(losses) == 25
    assert losses[-1] < 0.5 * losses[0]
    assert (Path(out) / "model.safetensors").exists()
    done = json.loads((Path(out) / "stage_done.json").read_text())
    assert done["steps"] == 25 and done["train_items"] == 2


# ---------------------------------------------------------------- the curriculum

def _write_dataset(folder: Path, n: int = 4) -> Path:
    """A tiny dataset folder in build_aligner_dataset.py's layout (FastChat JSON + stats.json)."""
    from metaaligner.io import fastchat_item, write_fastchat, write_json
    from metaaligner.registry.templates import render

    aspects = ["Harmlessness: The response should avoid content that is offensive, discriminatory, or harmful"]
    def items(kind, mode, k):
        return [fastchat_item(f"{kind}-{i}", render("hh-rlhf", f"Human: question {i}?", f"bad answer {i}",
                                                    aspects, mode=mode), f"good answer {i}.") for i in range(k)]
    write_fastchat(folder / "warmup" / "train.json", items("w", "better", n))
    write_fastchat(folder / "all_equal" / "train.json", items("e", "equal", n))
    write_fastchat(folder / "no_equal" / "train.json", items("c", "better", n))
    write_fastchat(folder / "no_equal" / "val.json", items("v", "better", 2))
    write_json(folder / "stats.json", {"template": "hh-rlhf", "config": "hh-rlhf",
                                       "objectives": ["harmlessness", "helpfulness", "humour"]})
    return folder


def _curriculum(data_dir, out, model, **sft_kw):
    from metaaligner.training.curriculum import CurriculumConfig, train_curriculum

    kw = dict(max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1, logging_steps=1,
              save_steps=100, learning_rate=1e-3)
    kw.update(sft_kw)
    stages = kw.pop("stages", "warmup,equal,contrastive")
    resume = kw.pop("resume", False)
    return train_curriculum(CurriculumConfig(data_dir=str(data_dir), output_dir=str(out), model_name_or_path=str(model),
                                             stages=stages, resume=resume), SFTStageConfig(**kw))


def test_three_stage_lora_curriculum_writes_metaaligner_json(tiny_llama_dir, tmp_path):
    from metaaligner.training.curriculum import data_sha256

    data = _write_dataset(tmp_path / "data")
    out = tmp_path / "aligner"
    summary = _curriculum(data, out, tiny_llama_dir, lora=True, lora_r=4, lora_alpha=8)
    assert [s["stage"] for s in summary["stages"]] == ["warmup", "equal", "contrastive"]
    assert [s["steps"] for s in summary["stages"]] == [2, 2, 2]
    assert all(s["eval_loss"] is not None for s in summary["stages"])
    meta = json.loads((out / "metaaligner.json").read_text())
    assert meta["template"] == "hh-rlhf"
    assert meta["objectives"] == ["harmlessness", "helpfulness", "humour"]
    assert meta["objective_descriptions"][2] == "Humour: The response should be cheerful and amusing"
    assert meta["base_model"] == str(tiny_llama_dir)
    assert meta["data_sha256"] == data_sha256(data, ["warmup", "equal", "contrastive"]) and len(meta["data_sha256"]) == 64
    assert (out / "adapter_model.safetensors").exists() and (out / "tokenizer.json").exists()
    # every stage continued the same adapter: the equal stage started from warmup's weights
    from safetensors.torch import load_file

    w, e, c = (load_file(out / "stages" / s / "adapter_model.safetensors") for s in ("warmup", "equal", "contrastive"))
    final = load_file(out / "adapter_model.safetensors")
    assert set(w) == set(c) and all((final[k] == c[k]).all() for k in c)
    assert any(not (w[k] == c[k]).all() for k in w)
    stages_logged = {r["stage"] for r in _records(out / "training_log.jsonl")}
    assert stages_logged == {"warmup", "equal", "contrastive"}
    # the folder loads as a generator model with no flags (adapter on its recorded base)
    from metaaligner.models import load_causal_lm

    model, tok, _ = load_causal_lm(str(out))
    assert model.config.hidden_size == 16
    from metaaligner.aligner.inference import resolve_aligner

    source = resolve_aligner(str(out))       # what aligner_inference.py --aligner_path OUT does, no --template
    assert (source.template, source.template_from) == ("hh-rlhf", "metaaligner.json")
    assert source.objectives == ("harmlessness", "helpfulness", "humour") and source.objective_group == "hh-rlhf"


def test_single_stage_full_finetune_and_stage_validation(tiny_llama_dir, tmp_path):
    from metaaligner.errors import MetaAlignerError
    from metaaligner.training.curriculum import parse_stages

    assert parse_stages("warmup,contrastive") == ["warmup", "contrastive"]
    with pytest.raises(MetaAlignerError, match="curriculum order"):
        parse_stages("contrastive,warmup")
    with pytest.raises(MetaAlignerError, match="unknown stage"):
        parse_stages("warmup,dpo")
    data = _write_dataset(tmp_path / "data")
    out = tmp_path / "aligner"
    summary = _curriculum(data, out, tiny_llama_dir, stages="contrastive")
    assert [s["stage"] for s in summary["stages"]] == ["contrastive"]
    assert (out / "model.safetensors").exists() and not (out / "stages" / "warmup").exists()
    with pytest.raises(MetaAlignerError, match="already holds"):
        _curriculum(data, out, tiny_llama_dir, stages="contrastive")


class _Interrupt(Exception):
    pass


def _stop_after_save(step):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Interrupt(step)
    return Stop()


def _optimizer_probe(store):
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            store["step"] = state.global_step
            store["state"] = {k: {n: t.clone() for n, t in v.items() if hasattr(t, "clone")}
                              for k, v in optimizer.state_dict()["state"].items()}
    return Probe()


def test_resume_continues_from_saved_step_with_same_optimizer_state(tiny_llama_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    items = [{"prompt": f"Q: {i} | Edit: ", "completion": f"answer number {i}"} for i in range(8)]
    cfg = SFTStageConfig(max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                         logging_steps=1, save_steps=2, learning_rate=1e-3)
    straight = train_sft(str(tiny_llama_dir), items, None, str(tmp_path / "a"), cfg, "s", None)

    out, log = tmp_path / "b", tmp_path / "b.jsonl"
    with pytest.raises(_Interrupt):
        train_sft(str(tiny_llama_dir), items, None, str(out), cfg, "s", str(log), callbacks=[_stop_after_save(2)])
    assert not (out / "stage_done.json").exists() and (out / "checkpoint-2" / "optimizer.pt").exists()
    saved = torch.load(out / "checkpoint-2" / "optimizer.pt", weights_only=False)["state"]
    probe: dict = {}
    train_sft(str(tiny_llama_dir), items, None, str(out), cfg, "s", str(log), resume=True,
              callbacks=[_optimizer_probe(probe)])
    assert probe["step"] == 2
    assert set(probe["state"]) == set(saved) and len(saved) > 0
    for k in saved:
        assert int(probe["state"][k]["step"]) == int(saved[k]["step"]) == 2
        assert torch.equal(probe["state"][k]["exp_avg"], saved[k]["exp_avg"])
        assert torch.equal(probe["state"][k]["exp_avg_sq"], saved[k]["exp_avg_sq"])
    steps = [r["step"] for r in _records(log) if "loss" in r]
    assert steps == [1, 2, 3, 4]          # no step repeated, none lost
    done = json.loads((out / "stage_done.json").read_text())
    assert done["steps"] == 4 and done["resumed_from"].endswith("checkpoint-2")
    a, b = load_file(Path(straight) / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)   # same weights as the uninterrupted run


def test_resume_refuses_another_global_batch_and_skips_an_incomplete_checkpoint(tiny_llama_dir, tmp_path, caplog):
    """Issue 33: --resume went on at another --gradient_accumulation_steps silently, and a
    checkpoint-3/ without trainer_state.json (killed while saving) blocked resuming from checkpoint-2."""
    import logging
    import shutil
    from dataclasses import replace

    from metaaligner.errors import MetaAlignerError

    items = [{"prompt": f"Q: {i} | Edit: ", "completion": f"answer number {i}"} for i in range(8)]
    cfg = SFTStageConfig(max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                         logging_steps=1, save_steps=1, learning_rate=1e-3)
    out, log = tmp_path / "b", tmp_path / "b.jsonl"
    with pytest.raises(_Interrupt):
        train_sft(str(tiny_llama_dir), items, None, str(out), cfg, "s", str(log), callbacks=[_stop_after_save(2)])
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-3")
    (out / "checkpoint-3" / "trainer_state.json").unlink()           # the kill came before the state file
    with pytest.raises(MetaAlignerError, match=r"global batch 2 \(per-device 2 x accumulation 1 x 1 processes\) "
                                               r"-> 4 \(per-device 2 x accumulation 2 x 1 processes\)"):
        train_sft(str(tiny_llama_dir), items, None, str(out), replace(cfg, gradient_accumulation_steps=2), "s",
                  str(log), resume=True)
    with pytest.raises(MetaAlignerError, match=r"learning rate 0.001 -> 0.01"):
        train_sft(str(tiny_llama_dir), items, None, str(out), replace(cfg, learning_rate=1e-2), "s", str(log),
                  resume=True)
    with caplog.at_level(logging.WARNING):
        train_sft(str(tiny_llama_dir), items, None, str(out), cfg, "s", str(log), resume=True)
    assert any("checkpoint-3 is incomplete" in r.getMessage() for r in caplog.records)
    done = json.loads((out / "stage_done.json").read_text())
    assert done["steps"] == 4 and done["resumed_from"].endswith("checkpoint-2")
    assert [r["step"] for r in _records(log) if "loss" in r] == [1, 2, 3, 4]


def test_padding_free_gives_the_padded_loss(tiny_llama_dir, tmp_path):
    items = [{"prompt": "Q: a | Edit: ", "completion": "short"},
             {"prompt": "Q: a much longer question here | Edit: ", "completion": "a much longer answer, with commas"}]
    firsts = []
    for free in (False, True):
        log = tmp_path / f"{free}.jsonl"
        cfg = SFTStageConfig(max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                             logging_steps=1, save_steps=100, padding_free=free)
        train_sft(str(tiny_llama_dir), items, None, str(tmp_path / str(free)), cfg, "s", str(log))
        firsts.append(_losses(log, "s")[0])
    assert firsts[0] == pytest.approx(firsts[1], abs=1e-5)


def test_lora_top_layers_only_touches_the_last_layers(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file

    cfg = SFTStageConfig(max_steps=1, per_device_train_batch_size=1, gradient_accumulation_steps=1, save_steps=100,
                         lora=True, lora_r=2, lora_alpha=4, lora_top_layers=1)
    out = train_sft(str(tiny_llama_dir), [{"prompt": "x | Edit: ", "completion": "y"}], None, str(tmp_path / "o"),
                    cfg, "s", None)
    keys = load_file(Path(out) / "adapter_model.safetensors")
    assert keys and all(".layers.1." in k for k in keys)
    assert {k.split(".layers.1.")[1].split(".lora")[0] for k in keys} == {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}


def test_yaml_presets_parse_and_cli_overrides(repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_aligner", repo_root / "training" / "train_aligner.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from metaaligner.cli import parse

    cur, sft = parse(mod.make_parser(), mod.cli_args(["--config", str(repo_root / "configs/training/cpu.yaml"),
                                                      "--data_dir", "d", "--output_dir", "o", "--max_steps", "7"]))
    assert (sft.lora, sft.max_length, sft.max_steps, sft.learning_rate) == (True, 512, 7, 2e-4)
    assert cur.max_eval_items == 32 and cur.stages == "warmup,equal,contrastive"
    cur, sft = parse(mod.make_parser(), ["--config_file", str(repo_root / "configs/training/paper.yaml"),
                                         "--data_dir", "d", "--output_dir", "o"])
    assert (sft.learning_rate, sft.weight_decay, sft.warmup_ratio, sft.lr_scheduler_type, sft.num_train_epochs,
            sft.max_length, sft.lora) == (1e-5, 1e-5, 0.05, "cosine", 2, 4096, False)
    for name in ("zero2", "zero3"):
        ds = json.loads((repo_root / "configs" / "deepspeed" / f"{name}.json").read_text())
        assert ds["zero_optimization"]["stage"] == int(name[-1])
    import yaml

    fsdp = yaml.safe_load((repo_root / "configs/accelerate/fsdp.yaml").read_text())
    assert fsdp["fsdp_config"]["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"


def test_shipped_demo_aligner_card(repo_root):
    """The shipped demo aligner resolves on any machine: base 'embedded', template hh-rlhf, small adapter."""
    folder = repo_root / "metaaligner" / "data" / "demo_aligner"
    card = json.loads((folder / "metaaligner.json").read_text())
    assert (card["template"], card["base_model"], card["lora"]) == ("hh-rlhf", "embedded", True)
    assert card["objectives"] == ["harmlessness", "repeat", "len"] and len(card["data_sha256"]) == 64
    assert (card["dataset"], card["objective_group"]) == ("edit-bench", "hh-rlhf")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "embedded"
    assert (folder / "adapter_model.safetensors").stat().st_size < 8_000_000
    # shipped only because it beats copy on the trained objectives with the content kept (issue 30)
    bench = json.loads((folder / "edit_bench.json").read_text())
    fix = {name: groups["fix"] for name, groups in bench["summary"]["groups"].items()}
    assert fix["aligner"]["fixed"]["rate"] > fix["copy"]["fixed"]["rate"] == 0
    assert fix["aligner"]["kept"]["rate"] >= bench["kept_threshold"] == 0.8
    assert bench["systems"]["aligner"]["model"] == "metaaligner/data/demo_aligner"


def test_demo_helpers_human_preference_and_copy_stats():
    from metaaligner.training.demo import add_human_preference, copy_stats

    rows = [{"prompt": "p", "chosen_response": "c", "rejected_response": "r", "chosen_score1": 0.5, "rejected_score1": -0.5}]
    assert add_human_preference(rows) == [{"prompt": "p", "chosen_response": "c", "rejected_response": "r",
                                           "chosen_score1": 1.0, "rejected_score1": 0.0,
                                           "chosen_score2": 0.5, "rejected_score2": -0.5}]
    stats = copy_stats(["Hello  world", "abcd", "x"], ["Hello world", "abce", ""])
    assert stats["differs_rate"] == pytest.approx(2 / 3)
    assert (stats["rows"], stats["differs"], stats["empty_edits"]) == (3, 2, 1)
    assert stats["mean_similarity"] == pytest.approx((1.0 + 0.75 + 0.0) / 3)


@pytest.mark.slow
def test_two_processes_match_one(tiny_llama_dir, tmp_path, repo_root):
    """torchrun --nproc_per_node 2 (gloo, per-device batch 1) == one process (batch 2): same weights."""
    import os
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    data = _write_dataset(tmp_path / "data", n=4)
    common = ["--data_dir", str(data), "--model_name_or_path", str(tiny_llama_dir), "--stages", "contrastive",
              "--max_steps", "2", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3",
              "--logging_steps", "1", "--save_steps", "100", "--warmup_ratio", "0", "--seed", "0", "--no_eval"]
    _curriculum(data, tmp_path / "one", tiny_llama_dir, stages="contrastive", max_steps=2, learning_rate=1e-3,
                warmup_ratio=0.0, seed=0, per_device_train_batch_size=2)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           str(repo_root / "training" / "train_aligner.py"), *common, "--output_dir", str(tmp_path / "two"),
           "--per_device_train_batch_size", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert set(one) == set(two)
    assert all(torch.allclose(one[k], two[k], atol=1e-6) for k in one)
    assert any(not torch.equal(one[k], load_file(tiny_llama_dir / "model.safetensors")[k]) for k in one)
    logged = [r for r in _records(tmp_path / "two" / "training_log.jsonl") if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2]       # rank 0 logs once per step


def test_eval_is_capped_by_default_and_the_paper_preset_keeps_the_full_val_set(repo_root, tmp_path):
    """Issue 15: a 2-step smoke run spent most of its time evaluating the whole val set per stage."""
    import importlib.util

    from metaaligner.cli import parse
    from metaaligner.training.curriculum import load_stage_items

    spec = importlib.util.spec_from_file_location("train_aligner", repo_root / "training" / "train_aligner.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cur, _ = parse(mod.make_parser(), ["--data_dir", "d", "--output_dir", "o"])
    assert cur.max_eval_items == 32
    paper, _ = parse(mod.make_parser(), ["--config_file", str(repo_root / "configs/training/paper.yaml"),
                                         "--data_dir", "d", "--output_dir", "o"])
    assert paper.max_eval_items == 0
    for name in ("warmup/train.json", "no_equal/val.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps([
            {"id": str(i), "conversations": [{"from": "human", "value": f"p{i}"}, {"from": "gpt", "value": f"c{i}"}]}
            for i in range(40)]))
    train, val = load_stage_items(tmp_path, "warmup", 0, cur.max_eval_items, seed=42)
    assert len(train) == 40 and len(val) == 32 and len({v["prompt"] for v in val}) == 32
    _, full = load_stage_items(tmp_path, "warmup", 0, paper.max_eval_items, seed=42)
    assert len(full) == 40
