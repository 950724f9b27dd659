"""The fast engine's decode-step shortcuts: oneDNN-packed linears and attention in length groups.
Both must leave every row's tokens as they are, and each is checked to really run."""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

# Rows of very different lengths (so grouping has padding to skip); token ids below the vocabulary.
PROMPTS = [list(range(3, 40)), [5, 9, 2, 7], list(range(50, 72)), [11, 12], list(range(90, 99)), [30] * 6]


@pytest.fixture(scope="module")
def gqa_model():
    """A tiny LLaMA with grouped-query attention (4 heads, 2 KV heads), weights drawn at std 0.5
    (seeded) so that the greedy tokens depend on the prompt."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model


def _greedy(model, prompts=PROMPTS, **switches):
    from metaaligner.generation.fast_greedy import greedy_batch

    with torch.inference_mode():
        return greedy_batch(model, prompts, 10, set(), 0, **switches)


def test_packed_linear_matches_linear_and_small_batches_stay_on_mkl(gqa_model):
    from metaaligner.generation.packed_linear import packed_linears

    layer = gqa_model.model.layers[0].mlp.down_proj
    x3, x1 = torch.randn(3, 1, 64), torch.randn(1, 1, 64)
    plain3, plain1 = layer(x3), layer(x1)
    with torch.inference_mode(), packed_linears(gqa_model) as on:
        assert on and "forward" in layer.__dict__
        packed3, packed1 = layer(x3), layer(x1)
    assert "forward" not in layer.__dict__  # restored
    assert torch.allclose(packed3, plain3, atol=1e-5) and packed3.shape == (3, 1, 32)
    assert torch.equal(packed1, plain1)  # one row: the same MKL call


def test_packed_weights_follow_weight_updates_and_survive_deepcopy(gqa_model):
    from metaaligner.generation import packed_linear

    model = copy.deepcopy(gqa_model)
    linears = 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the lm_head
    assert packed_linear.pack(model) == linears
    assert packed_linear.pack(model) == 0  # nothing changed: nothing repacked
    layer = model.model.layers[1].self_attn.o_proj
    with torch.no_grad():
        layer.weight.mul_(-1)  # what an optimizer step does: in place
    assert packed_linear.pack(model) == 1
    x = torch.randn(4, 32)
    with torch.inference_mode(), packed_linear.packed_linears(model):
        assert torch.allclose(layer(x), x @ layer.weight.T, atol=1e-5)
    copy.deepcopy(model)  # the packed (opaque) tensors are not on the modules


def test_packing_is_skipped_for_other_dtypes_without_memory_and_when_off(gqa_model, monkeypatch):
    from metaaligner.generation import packed_linear

    half = copy.deepcopy(gqa_model).to(torch.float16)
    with packed_linear.packed_linears(half) as on:
        assert not on and "forward" not in half.lm_head.__dict__
    with packed_linear.packed_linears(gqa_model, enabled=False) as on:
        assert not on
    fresh = copy.deepcopy(gqa_model)
    weights = sum(m.weight.numel() * 4 for m in packed_linear._linears(fresh))
    assert packed_linear.available_memory() > 2 * weights
    monkeypatch.setattr(packed_linear, "available_memory", lambda: 2 * weights - 1)  # the copy needs half
    assert not packed_linear.packing_supported(fresh)
    monkeypatch.setattr(packed_linear, "available_memory", lambda: 2 * weights)
    assert packed_linear.packing_supported(fresh)


def test_plan_groups_minimises_slots_plus_a_cost_per_group():
    from metaaligner.generation.decode_attention import plan_groups

    lengths = [10, 9, 3, 2]
    # cost 4: one group 4*10+4 = 44; [10,9][3,2] 20+4+6+4 = 34; [10][9][3,2] 37; all apart 40
    assert plan_groups(lengths, group_cost=4) == [(0, 2), (2, 4)]
    assert plan_groups(lengths, group_cost=0) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert plan_groups(lengths, group_cost=100) == [(0, 4)]
    assert plan_groups([7], group_cost=4) == [(0, 1)]


def test_grouped_decode_attention_equals_one_sdpa_call(gqa_model):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from metaaligner.generation.decode_attention import decode_sdpa

    module = gqa_model.model.layers[0].self_attn
    gen = torch.Generator().manual_seed(1)
    rows, slots = 4, 12
    filled = [12, 10, 5, 3]  # each row fills the last slots
    query = torch.randn(rows, 4, 1, 8, generator=gen)
    key, value = torch.randn(rows, 2, slots, 8, generator=gen), torch.randn(rows, 2, slots, 8, generator=gen)
    mask = torch.zeros(rows, 1, 1, slots, dtype=torch.bool)
    for r, n in enumerate(filled):
        mask[r, ..., slots - n:] = True
    whole, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=module.scaling)
    grouped, _ = decode_sdpa(module, query, key, value, mask, decode_groups=[(0, 2, 0), (2, 4, 7)],
                             scaling=module.scaling)
    assert grouped.shape == whole.shape == (rows, 1, 4, 8)
    assert torch.allclose(grouped, whole, atol=1e-6)


def test_decode_shortcuts_keep_every_rows_tokens_and_run(gqa_model, monkeypatch):
    from metaaligner.generation import decode_attention

    calls = []
    monkeypatch.setattr(decode_attention, "GROUP_COST_SLOTS", 4)  # the tiny prompts are short
    original = decode_attention.decode_sdpa
    monkeypatch.setattr(decode_attention, "decode_sdpa", lambda *a, decode_groups=None, **k: (
        calls.append(decode_groups), original(*a, decode_groups=decode_groups, **k))[1])
    reference = _greedy(gqa_model, pack_weights=False, group_attention=False)
    assert calls == []
    fast = _greedy(gqa_model)
    alone = [_greedy(gqa_model, [p])[0] for p in PROMPTS]
    assert fast == reference == alone
    assert len({tuple(row) for row in fast}) == len(PROMPTS)  # the tokens depend on the prompt
    assert gqa_model.config._attn_implementation == "sdpa"  # restored after decoding
    groups = [g for g in calls if g]
    assert groups and len(groups[0]) > 1  # rows really attended in several length groups
    assert groups[0][0][2] == 0 and groups[0][-1][2] > 0  # the longest starts at slot 0, the last later


def test_a_model_that_refuses_the_kernel_decodes_with_plain_sdpa(gqa_model, monkeypatch):
    from metaaligner.generation.decode_attention import grouped_attention

    model = copy.deepcopy(gqa_model)

    def refuse(name):
        raise ValueError(f"{name} is not supported")

    monkeypatch.setattr(model, "set_attn_implementation", refuse)
    with grouped_attention(model) as on:
        assert not on
    assert _greedy(model) == _greedy(gqa_model, pack_weights=False, group_attention=False)
