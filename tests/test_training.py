"""Aligner training: SFT stage, label mask, curriculum, resume, metaaligner.json, two processes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from metaaligner.training.sft import SFTStageConfig, tokenize_item, train_sft


def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _losses(log_path, stage):
    return [r["loss"] for r in _records(log_path) if r.get("stage") == stage and "loss" in r]


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
