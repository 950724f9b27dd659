"""The fast engine's decode-step shortcuts: oneDNN-packed linears, attention in length groups and
n-gram draft tokens. Each must leave every row's tokens as they are, and each is checked to run."""
from __future__ import annotations

import copy
import gc
import weakref

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


def _greedy(model, prompts=PROMPTS, max_new_tokens=10, **switches):
    from metaaligner.generation.fast_greedy import greedy_batch

    with torch.inference_mode():
        return greedy_batch(model, prompts, max_new_tokens, set(), 0, **switches)


def test_packed_linear_matches_linear_and_small_batches_stay_on_mkl(gqa_model, monkeypatch):
    from metaaligner.generation import packed_linear
    from metaaligner.generation.packed_linear import packed_linears

    monkeypatch.setattr(packed_linear, "min_rows", lambda: 3)  # what an Intel CPU gets
    layer = gqa_model.model.layers[0].mlp.down_proj
    x3, x1 = torch.randn(3, 1, 64), torch.randn(1, 1, 64)
    plain3, plain1 = layer(x3), layer(x1)
    with torch.inference_mode(), packed_linears(gqa_model) as on:
        assert on and "forward" in layer.__dict__
        packed3, packed1 = layer(x3), layer(x1)
    assert "forward" not in layer.__dict__  # restored
    assert torch.allclose(packed3, plain3, atol=1e-5) and packed3.shape == (3, 1, 32)
    assert torch.equal(packed1, plain1)  # one row: the same MKL call


def test_min_rows_keeps_one_or_two_rows_on_mkl_only_on_intel(monkeypatch):
    from metaaligner.generation import packed_linear

    for vendor, rows in (("GenuineIntel", 3), ("AuthenticAMD", 1), ("", 1)):
        packed_linear.min_rows.cache_clear()
        monkeypatch.setattr(packed_linear, "cpu_vendor", lambda v=vendor: v)
        assert packed_linear.min_rows() == rows
    packed_linear.min_rows.cache_clear()


def test_prefill_runs_on_the_packed_weights(gqa_model, monkeypatch):
    """The prompts' prefill (many rows per product) runs packed too: on an AMD CPU oneDNN is 2.3x
    MKL there. max_new_tokens=1 is prefill alone."""
    from metaaligner.generation import packed_linear

    rows = []
    real = packed_linear._packed_forward
    monkeypatch.setattr(packed_linear, "_packed_forward",
                        lambda module, x: rows.append(x.shape[-2]) or real(module, x))
    plain = _greedy(gqa_model, max_new_tokens=1, pack_weights=False)
    assert rows == []
    packed = _greedy(gqa_model, max_new_tokens=1)
    assert packed == plain
    # 6 prompts (no shared start) alone through 2 layers x 4 products (q/k/v as one, o, gate/up
    # as one, down: all their tokens) and the lm_head (the last position only)
    assert len(rows) == 6 * 9
    assert rows[:9] == [37] * 8 + [1]
    rows.clear()
    assert _greedy(gqa_model, max_new_tokens=1, merge_linears=False) == plain
    assert len(rows) == 6 * 15 and rows[:15] == [37] * 14 + [1]  # 7 linears a layer


def test_packed_weights_follow_weight_updates_and_survive_deepcopy(gqa_model):
    from metaaligner.generation import packed_linear

    model = copy.deepcopy(gqa_model)
    products = 2 * 4 + 1  # q/k/v, o, gate/up, down per layer, and the lm_head
    assert packed_linear.pack(model) == products
    assert packed_linear.pack(model) == 0  # nothing changed: nothing repacked
    layer = model.model.layers[1].self_attn.o_proj
    with torch.no_grad():
        layer.weight.mul_(-1)  # what an optimizer step does: in place
    assert packed_linear.pack(model) == 1
    with torch.no_grad():
        model.model.layers[0].self_attn.v_proj.weight.add_(1.0)  # a sibling: its whole product
    assert packed_linear.pack(model) == 1
    x = torch.randn(4, 32)
    with torch.inference_mode(), packed_linear.packed_linears(model):
        assert torch.allclose(layer(x), x @ layer.weight.T, atol=1e-5)
    copy.deepcopy(model)  # the packed (opaque) tensors are not on the modules


def test_sibling_linears_run_as_one_product_with_the_same_bits(gqa_model, monkeypatch):
    """q/k/v and gate/up read the same input: one oneDNN product each, whose column slices equal
    the separate packed products bit for bit; a sibling called on another input, or with too few
    rows for oneDNN, computes its own product."""
    from metaaligner.generation import packed_linear

    monkeypatch.setattr(packed_linear, "min_rows", lambda: 3)
    attn, mlp = gqa_model.model.layers[0].self_attn, gqa_model.model.layers[0].mlp
    x, other, few = torch.randn(5, 2, 32), torch.randn(5, 2, 32), torch.randn(1, 2, 32)
    siblings = (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj)
    with torch.inference_mode():
        with packed_linear.packed_linears(gqa_model, merge_siblings=False):
            apart = [m(x) for m in siblings]
        assert packed_linear._PACKED[attn.q_proj][1].shape[0] == 32 and attn.k_proj in packed_linear._PACKED
        calls = []
        real = packed_linear._packed_forward
        monkeypatch.setattr(packed_linear, "_packed_forward", lambda m, x: calls.append(m) or real(m, x))
        with packed_linear.packed_linears(gqa_model):
            merged = [m(x) for m in siblings]
            assert calls == [attn.q_proj, mlp.gate_proj]
            assert [m.shape[-1] for m in merged] == [32, 16, 16, 64, 64]
            assert all(torch.equal(a, b) for a, b in zip(apart, merged))
            attn.q_proj(x)
            alone = attn.k_proj(other)  # not the input q_proj ran on
            assert torch.allclose(alone, other @ attn.k_proj.weight.T, atol=1e-5)
            assert torch.equal(attn.q_proj(few), torch.nn.functional.linear(few, attn.q_proj.weight))
            assert torch.equal(attn.k_proj(few), torch.nn.functional.linear(few, attn.k_proj.weight))
        assert "forward" not in attn.k_proj.__dict__  # restored
        # packed the other way: q/k/v as one 64-row weight, the siblings' own copies let go
        assert packed_linear._PACKED[attn.q_proj][1].shape[0] == 32 + 16 + 16
        assert attn.k_proj not in packed_linear._PACKED and mlp.up_proj not in packed_linear._PACKED


def test_only_rows_runs_the_needed_token_rows_and_one_pad_for_all_pads(gqa_model, monkeypatch):
    """A decode step's pads are never read: the packed linears run one of them for all, which
    keeps them finite (a pad's K and V go into the cache, where masked slots still meet sdpa's
    product with V)."""
    from metaaligner.generation import packed_linear

    monkeypatch.setattr(packed_linear, "min_rows", lambda: 1)
    rows, product = [], packed_linear._product
    monkeypatch.setattr(packed_linear, "_product", lambda m, x: rows.append(x.numel() // x.shape[-1]) or product(m, x))
    mlp = gqa_model.model.layers[0].mlp
    x, other = torch.randn(3, 4, 32), torch.randn(5, 64)  # 3 rows x 4 tokens; another shape
    needed = torch.tensor([0, 1, 4, 8, 9, 10])  # row 0: 2 tokens, row 1: 1, row 2: 3
    pads = [2, 3, 5, 6, 7, 11]
    with torch.inference_mode(), packed_linear.packed_linears(gqa_model):
        full = [m(x).reshape(12, -1) for m in (mlp.gate_proj, mlp.up_proj)]
        rows.clear()
        with packed_linear.only_rows(needed, 12):
            part = [m(x).reshape(12, -1) for m in (mlp.gate_proj, mlp.up_proj)]
            assert mlp.down_proj(other).shape == (5, 32)  # not the step's rows: all of them
        after = mlp.gate_proj(x)
    assert rows == [7, 5, 12]  # gate/up as one product on the 6 needed rows and pad 2; then all rows
    for whole, some in zip(full, part):
        assert torch.allclose(some[needed], whole[needed], atol=1e-5)
        assert torch.allclose(some[pads], whole[2].expand(6, -1), atol=1e-5)
    assert torch.allclose(after.reshape(12, -1), full[0], atol=1e-5)


def test_the_linears_skip_a_decode_steps_pads_with_the_same_tokens(gqa_model, monkeypatch):
    """Rows whose draft is shorter than the step's width are padded; on packed weights the linears
    (the lm_head included) run only the other tokens, and the stats count both."""
    from metaaligner.generation import packed_linear

    stop = {_greedy(gqa_model, [PROMPTS[1]], ngram_speculation=0)[0][5]}
    alone = [_greedy_n(gqa_model, [p], 40, stop, ngram_speculation=0)[0] for p in PROMPTS]
    plain, packed = {}, {}
    assert _greedy_n(gqa_model, PROMPTS, 40, stop, ngram_speculation=6, pack_weights=False, stats=plain) == alone
    head, product = [], packed_linear._product
    monkeypatch.setattr(packed_linear, "_product", lambda m, x: (
        head.append(x.numel() // x.shape[-1]) if m is gqa_model.lm_head else None) or product(m, x))
    assert _greedy_n(gqa_model, PROMPTS, 40, stop, ngram_speculation=6, stats=packed) == alone
    assert packed["decode_pads_skipped"] > 0 and plain["decode_pads_skipped"] == 0
    assert packed["decode_steps"] == plain["decode_steps"]
    assert packed["decode_token_rows"] == plain["decode_token_rows"] - packed["decode_pads_skipped"]
    assert sum(head) == len(PROMPTS) + packed["decode_token_rows"]  # each prompt's last token, then the steps'
    assert packed["decode_token_rows"] < plain["decode_token_rows"]


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
    reference = _greedy(gqa_model, pack_weights=False, group_attention=False, ngram_speculation=0)
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


def test_ngram_drafter_proposes_what_followed_the_latest_earlier_match():
    from metaaligner.generation.fast_greedy import NgramDrafter

    drafter = NgramDrafter([1, 2, 3, 4, 1, 2])
    # (4, 1, 2) was not seen before; (1, 2) was, at 0-1: what followed it
    assert drafter.draft(3) == [3, 4, 1]
    drafter.extend([3])  # now (1, 2, 3) ends the tokens; its earlier occurrence is at 0-2
    assert drafter.draft(2) == [4, 1]
    assert drafter.draft(10) == [4, 1, 2, 3]  # no more than there is
    assert drafter.draft(0) == []
    drafter.extend([9, 8])  # (3, 9, 8), (9, 8) and (8,) are new: no guess
    assert drafter.draft(4) == []
    assert NgramDrafter([5, 6]).draft(2) == []  # the last token itself is no earlier match
    looping = NgramDrafter([7, 5, 6, 5, 6])  # the latest match wins: (5, 6) at 3-4 vs 1-2
    assert looping.draft(3) == [5, 6]


def test_emitted_keeps_the_right_draft_tokens_then_the_prediction():
    from metaaligner.generation.fast_greedy import _emitted

    assert _emitted([5, 6, 7], [5, 6, 9, 4], set(), 10) == [5, 6, 9]  # 7 was wrong: 9 instead
    assert _emitted([5, 6, 7], [5, 6, 7, 4], set(), 10) == [5, 6, 7, 4]  # all right, plus one
    assert _emitted([5, 6, 7], [8, 6, 7, 4], set(), 10) == [8]
    assert _emitted([], [3], set(), 10) == [3]
    assert _emitted([5, 6, 7], [5, 6, 7, 4], {6}, 10) == [5, 6]  # cut after the stop id
    assert _emitted([5, 6, 7], [5, 6, 7, 4], set(), 2) == [5, 6]  # and at the budget


def test_pick_width_weighs_expected_tokens_against_the_step_cost():
    from metaaligner.generation.fast_greedy import _pick_width

    # One row, no history (rate 1/2) among 1 buffered: value(w) = (1 + .5 + ... + .5**(w-1)) /
    # (7 + 1 + .31 (w - 1)): w=1 .125, 2 .1805, 3 .2030, 4 .2100, 5 .2097 -> 4
    assert _pick_width([[1] * 8], [[]], 1) == 4
    # 32 such rows: w=1 32/39 = .821, 2 48/48.92 = .981, 3 56/58.84 = .952 -> 2
    assert _pick_width([[1] * 8] * 32, [[]] * 32, 32) == 2
    # a row that got every draft token right lately (rate 17/18) checks all 8
    assert _pick_width([[1] * 8], [[(4, 4)] * 4], 1) == 9
    # draft tokens that were all wrong lately (rate 1/18): alone, one is still nearly free
    # (w=2: 1.0556/8.31 = .1270 > .125); among 32 rows it is not (w=2: 33.78/48.92 = .690 < .821)
    assert _pick_width([[1] * 8], [[(0, 4)] * 4], 1) == 2
    assert _pick_width([[1] * 8] * 32, [[(0, 4)] * 4] * 32, 32) == 1
    assert _pick_width([[], []], [[], []], 2) == 1  # nothing to check
    assert _pick_width([[1, 2]], [[(4, 4)] * 4], 1) == 3  # no wider than the longest draft


def _spy_widths(monkeypatch):
    from metaaligner.generation import fast_greedy

    widths, step = [], fast_greedy._DecodeState.step
    monkeypatch.setattr(fast_greedy._DecodeState, "step",
                        lambda self, model, tokens, real=None: (widths.append(tokens.shape[1]),
                                                                step(self, model, tokens, real))[1])
    return widths


@pytest.fixture(scope="module")
def looping_model(gqa_model):
    """The tiny model with its attention output scaled down (x 0.002): its greedy text falls into
    loops, as the untrained base model's does, while attention still shapes it."""
    model = copy.deepcopy(gqa_model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.002)
    return model


@pytest.mark.parametrize("compact", [True, False])
def test_draft_tokens_keep_every_rows_tokens(gqa_model, monkeypatch, compact):
    stop = {_greedy(gqa_model, [PROMPTS[1]], ngram_speculation=0)[0][5]}  # row 1 stops early
    alone = [_greedy_n(gqa_model, [p], 40, stop, ngram_speculation=0)[0] for p in PROMPTS]
    widths = _spy_widths(monkeypatch)
    plain = _greedy_n(gqa_model, PROMPTS, 40, stop, ngram_speculation=0, compact=compact)
    assert set(widths) == {1}
    widths.clear()
    drafted = _greedy_n(gqa_model, PROMPTS, 40, stop, ngram_speculation=6, compact=compact)
    assert drafted == plain == alone
    assert [len(r) for r in alone][1] == 6 and max(len(r) for r in alone) == 40
    assert max(widths) > 1  # draft tokens were checked (here mostly wrong: the text does not repeat)


@pytest.mark.parametrize("compact", [True, False])
def test_draft_tokens_that_are_right_save_steps(looping_model, monkeypatch, compact):
    alone = [_greedy_n(looping_model, [p], 40, set(), ngram_speculation=0)[0] for p in PROMPTS]
    widths = _spy_widths(monkeypatch)
    plain = _greedy_n(looping_model, PROMPTS, 40, set(), ngram_speculation=0, compact=compact)
    plain_steps = len(widths)
    widths.clear()
    drafted = _greedy_n(looping_model, PROMPTS, 40, set(), ngram_speculation=6, compact=compact)
    assert drafted == plain == alone
    assert len({tuple(row) for row in alone}) == len(PROMPTS)
    assert plain_steps == 39 and len(widths) <= 25 and max(widths) > 1  # 22 steps here


def _greedy_n(model, prompts, new, stop, **switches):
    from metaaligner.generation.fast_greedy import greedy_batch

    with torch.inference_mode():
        return greedy_batch(model, prompts, new, stop, 0, **switches)


def test_holes_left_by_rejected_drafts_are_closed_when_the_buffer_fills(looping_model, monkeypatch):
    from metaaligner.generation import fast_greedy

    rooms, keep = [], fast_greedy._DecodeState.keep
    monkeypatch.setattr(fast_greedy._DecodeState, "keep",
                        lambda self, live, room=None: (rooms.append(room), keep(self, live, room))[1])
    alone = [_greedy_n(looping_model, [p], 40, set(), ngram_speculation=0)[0] for p in PROMPTS]
    assert _greedy_n(looping_model, PROMPTS, 40, set(), ngram_speculation=6, compact=False) == alone
    assert rooms == [11]  # the free slots ran out once and the holes were closed, no row dropped


def test_buffer_padding_is_zeroed_so_uninitialised_nan_never_reaches_attention(gqa_model, looping_model,
                                                                               monkeypatch):
    """Masked slots still enter sdpa's product with V: NaN there would poison every row."""
    from metaaligner.generation import kv_pool

    new_empty = torch.Tensor.new_empty

    def nan_empty(self, *args, **kwargs):
        out = new_empty(self, *args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    stop = {_greedy(gqa_model, [PROMPTS[1]], ngram_speculation=0)[0][5]}
    alone = [_greedy_n(gqa_model, [p], 40, stop, ngram_speculation=0)[0] for p in PROMPTS]
    looped = [_greedy_n(looping_model, [p], 40, set(), ngram_speculation=0)[0] for p in PROMPTS]
    monkeypatch.setattr(torch.Tensor, "new_empty", nan_empty)
    monkeypatch.setattr(kv_pool, "pool_for", lambda model: kv_pool.KVPool())  # every buffer on new memory
    for spec in (0, 6):  # the first buffer, a re-pack after a row stopped
        assert _greedy_n(gqa_model, PROMPTS, 40, stop, ngram_speculation=spec) == alone
    # a re-pack after holes filled the buffer
    assert _greedy_n(looping_model, PROMPTS, 40, set(), ngram_speculation=6, compact=False) == looped


def test_read_from_slots_are_each_length_groups_first_slot():
    from metaaligner.generation import decode_attention
    from metaaligner.generation.fast_greedy import read_from_slots

    # groups (0, 2), (2, 6): 2 x 37 + 4 x 9 + 2 x 96 = 302 < 6 x 37 + 96; slots end at 37 together
    assert read_from_slots([37, 22, 9, 6, 4, 2], grouped=True) == [0, 0, 28, 28, 28, 28]
    assert read_from_slots([37, 22, 9, 6, 4, 2], grouped=False) == [0] * 6  # one call reads all
    assert read_from_slots([37, 36, 35], grouped=True) == [0, 0, 0]  # one group: one call over all
    assert read_from_slots([5], grouped=True) == [0] and read_from_slots([], grouped=True) == []
    decode_attention.GROUP_COST_SLOTS, cost = 4, decode_attention.GROUP_COST_SLOTS
    try:  # groups (0, 1), (1, 2), (2, 4), (4, 6)
        assert read_from_slots([37, 22, 9, 6, 4, 2], grouped=True) == [0, 15, 28, 28, 33, 33]
    finally:
        decode_attention.GROUP_COST_SLOTS = cost


def test_padding_no_length_group_reads_is_left_untouched(gqa_model, monkeypatch):
    """Zeroing the whole left padding wrote (and faulted in) 7,481 slots of 32x256's KV buffer,
    of which its length groups read 516: the rest is not written, and the tokens stay the same
    when that memory holds NaN."""
    from metaaligner.generation import decode_attention, fast_greedy, kv_pool

    monkeypatch.setattr(decode_attention, "GROUP_COST_SLOTS", 4)
    new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: (
        lambda out: out.fill_(float("nan")) if out.is_floating_point() else out)(new_empty(self, *a, **k)))
    prompts = sorted(PROMPTS, key=len, reverse=True)  # 37, 22, 9, 6, 4, 2 tokens
    with torch.inference_mode():
        _, cache, _ = fast_greedy._prefill_all(gqa_model, prompts, 0, 5, kv_pool.KVPool(), grouped=True)
    keys = cache.layers[1].keys_buf
    for row, (read_from, start) in enumerate(zip([0, 15, 28, 28, 33, 33], [0, 15, 28, 31, 33, 35])):
        assert keys[row, :, :read_from].isnan().all()  # never read, never written
        assert torch.equal(keys[row, :, read_from:start], torch.zeros_like(keys[row, :, read_from:start]))
        assert not keys[row, :, start:37].isnan().any()
    stop = {_greedy(gqa_model, [PROMPTS[1]], ngram_speculation=0)[0][5]}  # a row stops: a re-pack
    alone = [_greedy_n(gqa_model, [p], 40, stop, ngram_speculation=0)[0] for p in PROMPTS]
    monkeypatch.setattr(kv_pool, "pool_for", lambda model: kv_pool.KVPool())  # every buffer on new memory
    for spec in (0, 6):
        assert _greedy_n(gqa_model, PROMPTS, 40, stop, ngram_speculation=spec) == alone


def test_a_row_that_stops_at_its_first_token_leaves_the_survivors_unread_padding_alone(gqa_model, monkeypatch):
    """The survivors of the first token are re-packed before the first step, in their own length
    groups: that re-pack zeroes only the padding those groups read, as the prefill does, and the
    tokens stay those of batch 1 when the rest of that memory holds NaN."""
    from metaaligner.generation import decode_attention, fast_greedy, kv_pool

    monkeypatch.setattr(decode_attention, "GROUP_COST_SLOTS", 4)
    stop = {_greedy(gqa_model, [PROMPTS[1]], max_new_tokens=1)[0][0]}  # the 4-token prompt stops at once
    alone = [_greedy_n(gqa_model, [p], 6, stop, ngram_speculation=0)[0] for p in PROMPTS]
    reads, gather = [], fast_greedy._BufferLayer.gather_rows
    monkeypatch.setattr(fast_greedy._BufferLayer, "gather_rows", lambda self, slots, width, capacity, pool, read_from, joined=(): (
        reads.append(list(read_from)), gather(self, slots, width, capacity, pool, read_from, joined))[1])
    new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: (
        lambda out: out.fill_(float("nan")) if out.is_floating_point() else out)(new_empty(self, *a, **k)))
    monkeypatch.setattr(kv_pool, "pool_for", lambda model: kv_pool.KVPool())  # every buffer on new memory
    assert _greedy_n(gqa_model, PROMPTS, 6, stop, ngram_speculation=0) == alone
    # survivors of 37, 22, 2, 9 and 6 tokens end at slot 37, so they start at 0, 15, 35, 28 and 31;
    # their groups: {0}, {15}, {35}, {28, 31}
    assert reads[0] == [0, 15, 35, 28, 28]


def test_a_multi_token_step_attends_like_sdpa_without_copying_kv_heads(gqa_model, monkeypatch):
    from transformers.integrations import sdpa_attention

    from metaaligner.generation.decode_attention import decode_sdpa

    module = gqa_model.model.layers[0].self_attn
    gen = torch.Generator().manual_seed(2)
    rows, slots, steps = 3, 14, 3
    query = torch.randn(rows, 4, steps, 8, generator=gen)
    key, value = torch.randn(rows, 2, slots, 8, generator=gen), torch.randn(rows, 2, slots, 8, generator=gen)
    mask = torch.zeros(rows, 1, steps, slots, dtype=torch.bool)
    for r, first in enumerate([0, 4, 9]):  # left padding, then causal over the last 3 slots
        for q in range(steps):
            mask[r, 0, q, first:slots - steps + q + 1] = True
    mask[1, 0, :, 6] = False  # a hole left by a rejected draft token
    whole, _ = sdpa_attention.sdpa_attention_forward(module, query, key, value, mask, scaling=module.scaling)
    copies = []
    repeat = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda *a: (copies.append(1), repeat(*a))[1])
    for groups in (None, [(0, 1, 0), (1, 3, 4)]):
        out, _ = decode_sdpa(module, query, key, value, mask, decode_groups=groups, scaling=module.scaling)
        assert out.shape == whole.shape == (rows, steps, 4, 8)
        assert torch.allclose(out, whole, atol=1e-6)
    assert copies == []


def test_one_new_token_needs_no_buffer_and_gives_the_first_greedy_token(gqa_model, monkeypatch):
    from metaaligner.generation import fast_greedy

    alone = [_greedy_n(gqa_model, [p], 3, set(), ngram_speculation=0)[0] for p in PROMPTS]
    built = []
    monkeypatch.setattr(fast_greedy, "_BufferLayer", lambda *a: built.append(a))
    assert _greedy_n(gqa_model, PROMPTS, 1, set()) == [row[:1] for row in alone]
    assert built == []  # prefill only: no KV buffer was allocated


def test_kv_pool_hands_out_the_smallest_free_tensor_that_fits_and_keeps_at_most_its_limit():
    from metaaligner.generation.kv_pool import KVPool

    pool, like = KVPool(limit=10_000), torch.zeros(1)
    a, b = pool.take((2, 3), like), pool.take((4, 5), like)
    assert pool.fresh_bytes == (6 + 20) * 4 and a.shape == (2, 3)
    pool.give(a)
    pool.give(b)
    pool.give(b)  # handed back twice: kept once
    assert pool.free_bytes() == 104
    c = pool.take((5,), like)  # fits in a's 6 floats and in b's 20: the smaller
    assert c.data_ptr() == a.data_ptr() and c.shape == (5,)
    d = pool.take((7,), like)
    assert d.data_ptr() == b.data_ptr() and pool.free_bytes() == 0
    assert pool.take((1,), torch.zeros(1, dtype=torch.float64)).dtype == torch.float64
    assert pool.fresh_bytes == 104 + 8  # another dtype: new memory
    small = KVPool(limit=40)
    x, y = small.take((8,), like), small.take((4,), like)
    small.give(x)
    small.give(y)  # 48 bytes free > 40: the smallest is let go
    assert small.free_bytes() == 32 and small.take((8,), like).data_ptr() == x.data_ptr()
    with torch.inference_mode():
        inference = small.take((8,), like)
        small.give(inference)
    assert small.take((8,), like).data_ptr() != inference.data_ptr()  # can't be written out of inference mode
    with torch.inference_mode():
        assert small.take((8,), like).data_ptr() == inference.data_ptr()


def test_a_second_batch_decodes_on_the_first_batchs_kv_memory(gqa_model, monkeypatch):
    """Fresh memory is slow to fault in on some machines: the buffers of a batch and of its
    compactions come from the model's pool, and what is left in it (NaN here) never leaks in."""
    from metaaligner.generation import kv_pool

    stop = {_greedy(gqa_model, [PROMPTS[1]], ngram_speculation=0)[0][5]}
    alone = [_greedy_n(gqa_model, [p], 40, stop, ngram_speculation=0)[0] for p in PROMPTS]
    kv_pool.release(gqa_model)
    takes, take = [], kv_pool.KVPool.take
    monkeypatch.setattr(kv_pool.KVPool, "take", lambda self, shape, like: (takes.append(shape), take(self, shape, like))[1])
    assert _greedy_n(gqa_model, PROMPTS, 40, stop, ngram_speculation=6) == alone
    pool = kv_pool.pool_for(gqa_model)
    # 2 layers x K and V of [6 rows, 2 KV heads, 37 + 39 + 6 slots, 8] for the prefill, then only the
    # first compaction's first buffer is new: every later one takes a buffer handed back before it
    assert takes[:4] == [(6, 2, 82, 8)] * 4 and len(takes) > 8
    assert pool.fresh_bytes == (4 * 6 * 2 * 82 * 8 + takes[4][0] * 2 * takes[4][2] * 8) * 4
    with torch.inference_mode():
        for free in pool._free:
            free.fill_(float("nan"))
    fresh = pool.fresh_bytes
    assert _greedy_n(gqa_model, PROMPTS, 40, stop, ngram_speculation=6) == alone
    assert pool.fresh_bytes == fresh  # the second batch took no new memory
    assert _greedy_n(gqa_model, PROMPTS, 40, stop, ngram_speculation=6, reuse_buffers=False) == alone
    assert pool.fresh_bytes == fresh  # off: a pool of its own


def test_a_decode_step_makes_its_masks_once_for_all_layers(gqa_model, monkeypatch):
    """sdpa turns a boolean mask into an additive one per call, and folded draft steps repeated it
    per call: the step's masks are made once, as sdpa would make them, and shared by the layers."""
    from metaaligner.generation import decode_attention

    monkeypatch.setattr(decode_attention, "GROUP_COST_SLOTS", 4)  # several length groups
    sdpa, masks = torch.nn.functional.scaled_dot_product_attention, []

    def spy(query, key, value, attn_mask=None, **kwargs):
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            masks.append(attn_mask)
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    alone = [_greedy(gqa_model, [p])[0] for p in PROMPTS]
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    assert _greedy(gqa_model) == alone
    assert masks and len(masks) == 2 * len({id(m) for m in masks})  # 2 layers, one mask per step and group
    assert {m.dtype for m in masks} == {torch.float32} and all(bool((m == 0).any()) for m in masks)
    assert {float(m.min()) for m in masks} <= {float("-inf"), 0.0}
    assert vars(decode_attention._STEP_MASKS) == {}  # let go once decoding ends


def test_a_prefill_makes_its_mask_additive_once_for_all_layers(gqa_model, monkeypatch):
    """Each prompt's prefill after the shared start runs with a boolean mask, which sdpa would turn
    into an additive one in every layer: it reaches sdpa additive, one mask per forward for both
    layers (0 where attended, -inf elsewhere); ``group_attention=False`` leaves sdpa's own way."""
    from metaaligner.generation.decode_attention import MAX_FOLDED_STEPS

    sdpa, masks = torch.nn.functional.scaled_dot_product_attention, []

    def spy(query, key, value, attn_mask=None, **kwargs):
        if attn_mask is not None:
            masks.append(attn_mask)
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    shared = list(range(3, 23))  # 20 tokens every prompt starts with: prefilled once, without a mask
    own = [list(range(30, 48)), [50], list(range(60, 80))]  # more than a draft step's 16 tokens, or one
    assert MAX_FOLDED_STEPS == 16
    prompts = [shared + o for o in own]
    alone = _greedy(gqa_model, prompts, max_new_tokens=1, share_prefix=False)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    assert _greedy(gqa_model, prompts, max_new_tokens=1) == alone
    # 2 layers x the 2 prompts with more than one own token (one token attends to all: no mask)
    assert len(masks) == 2 * 2 and len({id(m) for m in masks}) == 2 and masks[0] is masks[1]
    assert [m.dtype for m in masks] == [torch.float32] * 4
    assert [tuple(m.shape) for m in masks[::2]] == [(1, 1, 18, 38), (1, 1, 20, 40)]
    assert all(torch.equal(m[0, 0, :, :20], torch.zeros(m.shape[-2], 20)) for m in masks)  # the shared start
    causal = torch.full((20, 20), float("-inf")).triu(1)  # each own token over those up to it
    assert torch.equal(masks[2][0, 0, :, 20:], causal) and torch.equal(masks[0][0, 0, :, 20:], causal[:18, :18])
    masks.clear()
    assert _greedy(gqa_model, prompts, max_new_tokens=1, group_attention=False) == alone
    assert [m.dtype for m in masks] == [torch.bool] * 4


def test_a_batch_that_fails_keeps_nothing_in_the_pool(gqa_model, monkeypatch):
    """Only buffers handed back are kept: after an exception mid-batch the pool holds what it held
    before, and the next batch decodes as usual."""
    from metaaligner.generation import fast_greedy, kv_pool

    alone = [_greedy_n(gqa_model, [p], 12, set(), ngram_speculation=0)[0] for p in PROMPTS]
    kv_pool.release(gqa_model)
    decode = fast_greedy._decode

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    made, new_empty = [], torch.Tensor.new_empty

    def tracked(self, *args, **kwargs):
        out = new_empty(self, *args, **kwargs)
        if out.dim() == 1 and out.numel() == 6 * 2 * 56 * 8:  # a prefill buffer's memory
            made.append(weakref.ref(out))
        return out

    monkeypatch.setattr(fast_greedy, "_decode", interrupted)
    monkeypatch.setattr(torch.Tensor, "new_empty", tracked)
    with pytest.raises(KeyboardInterrupt):
        _greedy_n(gqa_model, PROMPTS, 12, set())
    monkeypatch.setattr(torch.Tensor, "new_empty", new_empty)
    gc.collect()
    assert len(made) == 4 and all(ref() is None for ref in made)  # the pool kept no hold on them
    pool = kv_pool.pool_for(gqa_model)
    assert pool.free_bytes() == 0 and pool.fresh_bytes == 4 * 6 * 2 * (37 + 11 + 8) * 8 * 4
    monkeypatch.setattr(fast_greedy, "_decode", decode)
    assert _greedy_n(gqa_model, PROMPTS, 12, set()) == alone
    assert pool.free_bytes() == pool.fresh_bytes - 4 * 6 * 2 * 56 * 8 * 4  # the second batch's, kept


def test_stats_count_the_prefill_tokens_run_and_the_decode_steps_and_their_tokens(gqa_model):
    """One token per row and step, no stop, no compaction: 9 steps of 6 rows for 10 new tokens; the
    prompts' shared start is counted once, as it is run once."""
    stats = {}
    _greedy(gqa_model, max_new_tokens=10, ngram_speculation=0, compact=False, stats=stats)
    # attention: each prompt's tokens over themselves; 9 steps of the 6 rows over the longest
    # prompt's 37 slots plus the step's (one length group: splitting costs more than it saves)
    assert {k: v for k, v in stats.items() if not k.endswith("seconds")} == {
        "prefill_tokens": 37 + 4 + 22 + 2 + 9 + 6, "decode_steps": 9, "decode_token_rows": 54, "decode_pads_skipped": 0,
        "prefill_attention_pairs": 37 ** 2 + 4 ** 2 + 22 ** 2 + 2 ** 2 + 9 ** 2 + 6 ** 2,
        "decode_kv_slots": 6 * sum(37 + k for k in range(1, 10))}
    assert stats["prefill_seconds"] > 0 and stats["decode_seconds"] > 0
    shared = list(range(3, 23))  # 20 tokens every prompt starts with
    prompts = [shared + [40, 41], shared + [50], shared + [60, 61, 62]]
    _greedy(gqa_model, prompts, max_new_tokens=3, ngram_speculation=0, stats=stats)
    assert stats["prefill_tokens"] == 80 + (22 + 21 + 23 - 2 * 20) and stats["decode_steps"] == 9 + 2
    assert stats["decode_token_rows"] == 54 + 3 * 2
    # the shared start over itself once, then each prompt's own tokens over all of its own
    assert stats["prefill_attention_pairs"] == 1990 + 20 * 20 + 2 * 22 + 1 * 21 + 3 * 23
    assert stats["decode_kv_slots"] == 2268 + 3 * 24 + 3 * 25
    _greedy(gqa_model, prompts, max_new_tokens=1, share_prefix=False, stats=stats)  # prefill only
    assert stats["prefill_tokens"] == 106 + 66 and stats["decode_steps"] == 11
    assert stats["prefill_attention_pairs"] == 2524 + 22 ** 2 + 21 ** 2 + 23 ** 2


def test_stats_count_the_kv_slots_each_length_group_reads(gqa_model, monkeypatch):
    """With no cost per extra attention call every row is a group of its own and reads only its own
    slots: at step k a row of n prompt tokens reads n + k; one padded call reads the longest's."""
    from metaaligner.generation import decode_attention

    stats = {}
    _greedy(gqa_model, max_new_tokens=10, ngram_speculation=0, compact=False, group_attention=False, stats=stats)
    assert stats["decode_kv_slots"] == 6 * sum(37 + k for k in range(1, 10))
    monkeypatch.setattr(decode_attention, "GROUP_COST_SLOTS", 0)
    stats = {}
    _greedy(gqa_model, max_new_tokens=10, ngram_speculation=0, compact=False, stats=stats)
    assert stats["decode_kv_slots"] == sum(n + k for n in (37, 4, 22, 2, 9, 6) for k in range(1, 10))


# ---------------------------------------------------------------- rows that end on their own, or are stopped

def test_finished_hears_each_row_once_as_it_stops_while_the_others_go_on(gqa_model):
    """One token a step (no drafts): a row that reaches a stop id is told at that step, with its final
    tokens, before the rows still decoding; every row is told exactly once, in the order they stop."""
    alone = _greedy(gqa_model, max_new_tokens=10, ngram_speculation=0)
    stop = alone[1][2]  # row 1 stops at its third token (or earlier, where that id comes sooner)
    ends = [next((k + 1 for k, t in enumerate(row) if t == stop), 10) for row in alone]
    heard, asked = [], []

    def stopped(i):
        asked.append(i)
        return False

    from metaaligner.generation.fast_greedy import greedy_batch

    with torch.inference_mode():
        out = greedy_batch(gqa_model, PROMPTS, 10, {stop}, 0, ngram_speculation=0, stopped=stopped,
                           finished=lambda i, tokens: heard.append((i, list(tokens), len(asked))))
    assert out == [row[:n] for row, n in zip(alone, ends)]
    assert sorted(i for i, *_ in heard) == list(range(6))
    assert [i for i, *_ in heard] == sorted(range(6), key=lambda i: (ends[i], i))
    assert all(tokens == out[i] for i, tokens, _ in heard)
    # row 1 was told before the last step's questions: the others were still being asked then
    told_row1 = next(n for i, _, n in heard if i == 1)
    assert told_row1 < len(asked) and ends[1] < 10


@pytest.mark.parametrize("drafts", [0, 8])
def test_stopped_ends_a_row_between_steps_and_leaves_the_others_tokens(gqa_model, drafts):
    """``stopped`` is asked once after the prefill and once before each step; row 2 says yes at its
    third question, so it keeps its prefill token and one step's tokens (one token without drafts);
    row 4 says yes at its first (prefill only); every other row's tokens are as without stopping."""
    alone = _greedy(gqa_model, max_new_tokens=10, ngram_speculation=drafts)
    asked = {i: 0 for i in range(6)}
    heard = {}

    def stopped(i):
        asked[i] += 1
        return (i == 2 and asked[i] == 3) or i == 4

    from metaaligner.generation.fast_greedy import greedy_batch

    with torch.inference_mode():
        out = greedy_batch(gqa_model, PROMPTS, 10, set(), 0, ngram_speculation=drafts, stopped=stopped,
                           finished=lambda i, tokens: heard.setdefault(i, list(tokens)))
    assert out[4] == alone[4][:1] and asked[4] == 1
    assert asked[2] == 3 and 2 <= len(out[2]) < 10 and out[2] == alone[2][:len(out[2])]
    if not drafts:
        assert out[2] == alone[2][:2]
    assert [out[i] for i in (0, 1, 3, 5)] == [alone[i] for i in (0, 1, 3, 5)]
    assert heard == dict(enumerate(out))


def test_one_new_token_tells_every_row_after_the_prefill(gqa_model):
    heard = []
    from metaaligner.generation.fast_greedy import greedy_batch

    with torch.inference_mode():
        out = greedy_batch(gqa_model, PROMPTS, 1, set(), 0, finished=lambda i, t: heard.append((i, list(t))))
    assert heard == list(enumerate(out)) and all(len(t) == 1 for t in out)


# ---------------------------------------------------------------- continuous batching: rows join between steps

def _joining(model, first, later, new=40, stop=frozenset(), **switches):
    """``greedy_batch`` on the ``first`` prompts; ``later`` maps a question number (1: the first
    ``more`` call) to the prompts given then. Returns the outputs, the live counts ``more`` was
    given, and the rows ``finished`` heard of in order."""
    from metaaligner.generation.fast_greedy import greedy_batch

    asked, heard = [], []

    def more(live):
        asked.append(live)
        return later.get(len(asked), [])

    with torch.inference_mode():
        out = greedy_batch(model, first, new, set(stop), 0, more=more,
                           finished=lambda i, tokens: heard.append((i, list(tokens))), **switches)
    return out, asked, heard


@pytest.mark.parametrize("spec,compact", [(0, True), (6, True), (6, False)])
def test_rows_that_join_between_steps_get_the_tokens_of_batch_1(gqa_model, spec, compact):
    """Two rows start; two join at the 3rd question, one at the 8th, one at the 30th (its budget runs
    past the first rows' end). Row 1 stops early (a stop id). Every row's tokens are those it gets
    alone, numbered in the order the rows came; ``more`` is asked with the live count before each
    step; every row is heard of once."""
    stop = {_greedy(gqa_model, [PROMPTS[1]], ngram_speculation=0)[0][5]}
    alone = [_greedy_n(gqa_model, [p], 40, stop, ngram_speculation=0)[0] for p in PROMPTS]
    later = {3: [PROMPTS[2], PROMPTS[3]], 8: [PROMPTS[4]], 30: [PROMPTS[5]]}
    out, asked, heard = _joining(gqa_model, PROMPTS[:2], later, stop=stop, ngram_speculation=spec, compact=compact)
    assert out == alone
    assert sorted(i for i, _ in heard) == list(range(6)) and all(t == out[i] for i, t in heard)
    assert asked[:3] == [2, 2, 2] and asked[3] == 4 - (len(alone[1]) <= 3)
    assert len(asked) >= 30 and asked[-1] == 0  # asked once more after the last row ended


def test_a_row_joins_a_batch_whose_rows_all_ended_and_the_call_goes_on(gqa_model):
    """The first row stops at its first decode step; a row given at the 2nd question (no row live
    then) still decodes its whole budget in the same call."""
    stop = {_greedy(gqa_model, [PROMPTS[3]], max_new_tokens=2, ngram_speculation=0)[0][1]}
    alone = [_greedy_n(gqa_model, [p], 12, stop, ngram_speculation=0)[0] for p in (PROMPTS[3], PROMPTS[0])]
    out, asked, _ = _joining(gqa_model, [PROMPTS[3]], {2: [PROMPTS[0]]}, new=12, stop=stop, ngram_speculation=0)
    assert out == alone and len(alone[0]) == 2 and asked[:2] == [1, 0]


def test_a_joining_row_runs_on_the_shared_starts_cache_when_it_starts_with_it(gqa_model):
    """Prompts that start with the first batch's shared 20 tokens prefill only their own tokens;
    one that does not runs whole. The stats count what ran, and the tokens are batch 1's."""
    shared = list(range(3, 23))
    first = [shared + [40, 41], shared + [50]]
    joining = [shared + [60, 61, 62], list(range(30, 55))]
    alone = [_greedy_n(gqa_model, [p], 8, set(), ngram_speculation=0)[0] for p in first + joining]
    stats = {}
    out, _, _ = _joining(gqa_model, first, {2: joining}, new=8, ngram_speculation=0, stats=stats)
    assert out == alone
    assert stats["prefill_tokens"] == 20 + 2 + 1 + 3 + 25
    assert stats["prefill_attention_pairs"] == 20 * 20 + 2 * 22 + 1 * 21 + 3 * 23 + 25 * 25
