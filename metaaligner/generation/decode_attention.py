"""Decode-step attention that skips most of the left padding: rows attend in length groups.

The fast engine keeps all rows of a batch in one left-padded KV buffer, so one sdpa call per layer
reads every row over the longest row's length. Aligner prompts vary a lot (16 HH-RLHF rows: 152
to 555 tokens, mean 324), so about 40% of those KV reads are padding, and the KV cache (46 KB per
token for SmolLM2-135M) weighs as much as the weights in a 16-row step. Here consecutive rows
(the hf backend sorts a batch by length) are split into groups, each attending only to the slots
its longest row fills; ``plan_groups`` picks the split that minimises the slots read plus a fixed
cost per extra sdpa call. Rows keep their own computation (only the masked slots are left out), so
the text is the single-call text up to float rounding. A step's masks are made once for all layers
(``_step_mask``).
"""
from __future__ import annotations

import contextlib
import threading

DECODE_SDPA = "metaaligner_decode_sdpa"

# The cost of one more sdpa call per layer, in KV slots read (a few tens of microseconds against
# ~8 us per 46 KB slot of 30 layers at ~6 GB/s; SmolLM2-135M, 1 thread).
GROUP_COST_SLOTS = 96


def plan_groups(lengths: list[int], group_cost: int | None = None) -> list[tuple[int, int]]:
    """Contiguous row ranges ``[(start, end), ...]`` covering ``lengths`` (slots each row fills)
    that minimise sum(rows x longest in group) + ``group_cost`` per group (dynamic programming;
    default ``GROUP_COST_SLOTS``)."""
    group_cost = GROUP_COST_SLOTS if group_cost is None else group_cost
    n = len(lengths)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of the first j rows
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = 0
        for start in range(end - 1, -1, -1):
            longest = max(longest, lengths[start])
            cost = best[start] + (end - start) * longest + group_cost
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], n
    while end:
        groups.append((cut[end], end))
        end = cut[end]
    return groups[::-1]


def decode_sdpa(module, query, key, value, attention_mask, decode_groups=None, **kwargs):
    """sdpa; for a decode step (one token per row, or a few with draft tokens) with a mask, one call
    per group of ``decode_groups`` ``[(row_start, row_end, first_slot)]`` over its rows and the
    slots from ``first_slot`` on (one group of all rows when None). A boolean mask is made additive
    once per forward for all layers (``_step_mask``), a prefill's too: sdpa would convert it in every
    layer (0.28 s of a 32-row prefill at 1 thread)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    steps = query.shape[2]
    if attention_mask is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if steps > MAX_FOLDED_STEPS:  # a prefill: one plain call
        mask = _step_mask(attention_mask, 0, query.shape[0], 0, 1, query.dtype)
        return sdpa_attention_forward(module, query, key, value, mask, **kwargs)
    attend = sdpa_attention_forward if steps == 1 else _folded_sdpa
    fold = 1 if steps == 1 else query.shape[1] // key.shape[1]
    parts = []
    for start, end, slot in decode_groups or [(0, query.shape[0], 0)]:
        mask = _step_mask(attention_mask, start, end, slot, fold, query.dtype)
        parts.append(attend(module, query[start:end], key[start:end, :, slot:], value[start:end, :, slot:],
                            mask, **kwargs)[0])
    return (torch.cat(parts) if len(parts) > 1 else parts[0]), None


# The masks of the forward now running, made from its boolean mask once for all layers (sdpa
# would convert it per call, and folding would repeat it per call: 1.2 s of a 32x256 decode).
# Per thread: two threads decoding at once each have their own forward.
_STEP_MASKS = threading.local()


def _step_mask(attention_mask, start: int, end: int, slot: int, fold: int, dtype):
    """Rows ``start:end`` of a boolean decode mask from ``slot`` on, repeated ``fold`` times along
    the query axis (``_folded_sdpa``'s layout), as the additive mask sdpa makes of a boolean one
    (0 where attended, -inf elsewhere)."""
    import torch

    if attention_mask.dtype != torch.bool:
        return _mask_part(attention_mask, start, end, slot, fold)
    if getattr(_STEP_MASKS, "source", None) is not attention_mask:  # a new forward (held: its id stays unique)
        _STEP_MASKS.source, _STEP_MASKS.made = attention_mask, {}
    key = (start, end, slot, fold, dtype)
    if key not in _STEP_MASKS.made:
        part = _mask_part(attention_mask, start, end, slot, fold)
        _STEP_MASKS.made[key] = torch.zeros(part.shape, dtype=dtype, device=part.device).masked_fill_(
            part.logical_not(), float("-inf"))
    return _STEP_MASKS.made[key]


def _mask_part(attention_mask, start: int, end: int, slot: int, fold: int):
    part = attention_mask[start:end, ..., slot:]
    return part.repeat(1, 1, fold, 1) if fold > 1 else part


# Draft steps run a few query tokens per row; past this many a prefill-like call is as good.
MAX_FOLDED_STEPS = 16


def _folded_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """sdpa for a few query tokens per row over grouped-query KV heads, without ``repeat_kv``'s
    copy of K and V per query head (what transformers does for more than one query token with a
    mask): each KV head's query heads and tokens are folded into one query axis."""
    import torch

    batch, heads, steps, dim = query.shape
    kv_heads = key.shape[1]
    folded = query.reshape(batch, kv_heads, heads // kv_heads * steps, dim)
    # the mask comes folded already (``_step_mask``)
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask,
                                                           scale=scaling)
    return out.reshape(batch, heads, steps, dim).transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def grouped_attention(model, enabled: bool = True):
    """Within the block a model that runs sdpa runs ``decode_sdpa`` (the same as sdpa unless a
    forward passes ``decode_groups``); yields whether it does. Other kernels stay as they are."""
    from metaaligner.models import use_sdpa_variant

    try:
        switched = use_sdpa_variant(model, DECODE_SDPA, decode_sdpa) if enabled else None
    except (ValueError, AttributeError):  # a model class that takes no registered kernels
        switched = None
    if switched is None:
        yield False
        return
    try:
        yield True
    finally:
        switched.set_attn_implementation("sdpa")
        vars(_STEP_MASKS).clear()  # the last step's masks are not needed after decoding
