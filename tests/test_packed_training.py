"""Training at its real cost (issue 15): per-item attention in packed batches, LM head on targets only."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture()
def gqa_llama():
    """A tiny LLaMA with grouped KV heads (4 query heads, 2 KV heads), like SmolLM2's 9/3."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _packed_inputs():
    import torch

    torch.manual_seed(1)
    ids = torch.randint(0, 100, (1, 30))
    positions = torch.cat([torch.arange(10), torch.arange(12), torch.arange(8)])[None]
    cu = torch.tensor([0, 10, 22, 30], dtype=torch.int32)
    return ids, {"position_ids": positions, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 12,
                 "max_length_k": 12, "use_cache": False}


def _sdpa_key_lengths(monkeypatch) -> list[int]:
    """Record the key length of every sdpa call (the size of each score matrix's second side)."""
    import torch

    seen, real = [], torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        seen.append(key.shape[2])
        return real(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


def test_segment_sdpa_attends_per_item_with_the_separate_items_result(gqa_llama, monkeypatch):
    import torch

    from metaaligner.training.packed import SEGMENT_SDPA, use_segment_sdpa

    ids, kw = _packed_inputs()
    separate = torch.cat([gqa_llama(input_ids=ids[:, s:e], use_cache=False).logits
                          for s, e in [(0, 10), (10, 22), (22, 30)]], 1)
    seen = _sdpa_key_lengths(monkeypatch)
    masked = gqa_llama(input_ids=ids, **kw).logits
    assert seen == [30, 30]   # plain sdpa: one 30x30 score matrix per layer (block-diagonal mask)
    seen.clear()
    assert use_segment_sdpa(gqa_llama) and gqa_llama.config._attn_implementation == SEGMENT_SDPA
    segmented = gqa_llama(input_ids=ids, **kw).logits
    assert seen == [10, 12, 8, 10, 12, 8]   # one causal call per item per layer
    assert torch.allclose(segmented, separate, atol=1e-6)
    assert torch.allclose(masked, separate, atol=1e-5)


def test_segment_sdpa_gradients_equal_the_masked_path(gqa_llama):
    import copy

    from metaaligner.training.packed import use_segment_sdpa

    ids, kw = _packed_inputs()
    other = copy.deepcopy(gqa_llama)
    use_segment_sdpa(other)
    grads = []
    for model in (gqa_llama, other):
        model(input_ids=ids, labels=ids, **kw).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all((grads[0][n] - grads[1][n]).abs().max() < 1e-5 for n in grads[0])


def test_segment_sdpa_falls_back_to_sdpa_without_packing(gqa_llama):
    """Padded batches (no cu_seq_lens) and generation with a cache take plain sdpa unchanged."""
    import torch

    from metaaligner.training.packed import use_segment_sdpa

    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    before = gqa_llama(input_ids=ids, attention_mask=mask).logits
    greedy = gqa_llama.generate(ids[:1], max_new_tokens=5, do_sample=False)
    use_segment_sdpa(gqa_llama)
    assert torch.equal(gqa_llama(input_ids=ids, attention_mask=mask).logits, before)
    assert torch.equal(gqa_llama.generate(ids[:1], max_new_tokens=5, do_sample=False), greedy)


def _head_rows(monkeypatch) -> list[int]:
    """Rows (positions) given to TRL's chunked LM-head loss kernel, per call."""
    import trl.trainer.utils as trl_utils

    rows, real = [], trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            rows.append(hidden.shape[0])
            return real.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    return rows


def _train_once(model_dir, tmp_path, name, rows_seen, **switches):
    from metaaligner.training.sft import SFTStageConfig, train_sft

    items = [{"prompt": "Q: a long question about eggs and water | Edit: ", "completion": "Boil it."},
             {"prompt": "Q: short | Edit: ", "completion": "A somewhat longer answer, with commas"}]
    log = tmp_path / f"{name}.jsonl"
    cfg = SFTStageConfig(max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                         logging_steps=1, save_steps=100, **switches)
    rows_seen.clear()
    train_sft(str(model_dir), items, None, str(tmp_path / name), cfg, name, str(log))
    losses = [json.loads(line)["loss"] for line in Path(log).read_text().splitlines() if '"loss"' in line]
    return losses[0], list(rows_seen)


def test_lm_head_scores_only_target_positions_with_the_same_loss(tiny_llama_dir, tmp_path, monkeypatch):
    from metaaligner.models import load_tokenizer
    from metaaligner.training.packed import score_targets_only
    from metaaligner.training.sft import tokenize_item

    tok = load_tokenizer(str(tiny_llama_dir), padding_side="right")
    a = tokenize_item(tok, "Q: a long question about eggs and water | Edit: ", "Boil it.", None)
    b = tokenize_item(tok, "Q: short | Edit: ", "A somewhat longer answer, with commas", None)
    total = len(a[0]) + len(b[0])
    # TRL drops the first label of each packed item (position 0) and shifts by one
    targets = sum(sum(t != -100 for t in labels[1:]) for _, labels, _ in (a, b))
    rows = _head_rows(monkeypatch)
    try:
        every, rows_every = _train_once(tiny_llama_dir, tmp_path, "every", rows, padding_free=True,
                                        targets_only_lm_head=False)
        only, rows_only = _train_once(tiny_llama_dir, tmp_path, "only", rows, padding_free=True,
                                      targets_only_lm_head=True)
    finally:
        score_targets_only(False)
    assert rows_every[0] == total - 1          # every position of the packed row but the last
    assert rows_only[0] == targets             # the target tokens only
    assert targets < total // 2
    assert only == pytest.approx(every, abs=1e-5)


def test_the_default_stage_is_the_fast_path_with_the_padded_loss(tiny_llama_dir, tmp_path, monkeypatch):
    """train_aligner.py with no flags: padding-free batches, attention per packed item, the LM head on target
    positions only (the path benchmarks/bench_training.py measures); --padding_free false is the padded path,
    with the same loss. Before, the default was padded with the head on every position."""
    from metaaligner.cli import parse
    from metaaligner.models import load_tokenizer
    from metaaligner.testing.scripts import load_script
    from metaaligner.training.packed import score_targets_only
    from metaaligner.training.sft import tokenize_item

    script = load_script("training/train_aligner.py")
    _, default = parse(script.make_parser(), ["--data_dir", "d", "--output_dir", "o"])
    _, padded = parse(script.make_parser(), ["--data_dir", "d", "--output_dir", "o", "--padding_free", "false"])
    assert (default.padding_free, default.segment_attention, default.targets_only_lm_head) == (True, True, True)
    assert padded.padding_free is False
    tok = load_tokenizer(str(tiny_llama_dir), padding_side="right")
    a = tokenize_item(tok, "Q: a long question about eggs and water | Edit: ", "Boil it.", None)
    b = tokenize_item(tok, "Q: short | Edit: ", "A somewhat longer answer, with commas", None)
    targets = sum(sum(t != -100 for t in labels[1:]) for _, labels, _ in (a, b))
    rows = _head_rows(monkeypatch)
    keys = _sdpa_key_lengths(monkeypatch)
    try:
        fast, rows_fast = _train_once(tiny_llama_dir, tmp_path, "default", rows)
        per_item = list(keys)
        slow, rows_slow = _train_once(tiny_llama_dir, tmp_path, "padded", rows, padding_free=False,
                                      segment_attention=False, targets_only_lm_head=False)
    finally:
        score_targets_only(False)
    assert rows_fast[0] == targets                                       # LM head on the target tokens only
    assert sorted(per_item[:2]) == sorted([len(a[0]), len(b[0])])        # one causal sdpa call per packed item
    longest = max(len(a[0]), len(b[0]))
    assert rows_slow[0] == 2 * (longest - 1)                             # padded: every position of both rows
    assert fast == pytest.approx(slow, abs=1e-5)
