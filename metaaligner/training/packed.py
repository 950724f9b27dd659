"""Training steps at their real cost: attention per packed item, the LM head on target tokens only.

Two costs measured in a LoRA step of the embedded SmolLM2-135M on CPU (issue 15), both work on
tokens that do not count:

- Padding-free batches are one packed sequence. transformers then builds a block-diagonal mask and
  sdpa computes the whole ``T x T`` score matrix (4 items of ~340 tokens: ~16x the work of one
  causal attention per item). ``segment_sdpa`` runs causal sdpa per item instead, from the
  ``cu_seq_lens_q`` the collator already sends.
- TRL scores the LM head (a 49k-vocabulary matmul, softmax and their backward) at every position,
  prompt included, unless the device runs Triton (TRL keeps shapes fixed for compiled backends).
  The loss only reads the target positions, about a quarter of an aligner item. ``score_targets_only``
  makes TRL gather those positions first, as it already does on GPUs.

Both give the same loss and gradients up to float rounding (tested against the plain path).
"""
from __future__ import annotations

SEGMENT_SDPA = "segment_sdpa"


def segment_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                 is_causal=None, cu_seq_lens_q=None, cu_seq_lens_k=None, **kwargs):
    """sdpa, but a packed single-row batch (``cu_seq_lens_q`` given) attends causally per item."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    packed = (cu_seq_lens_q is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
              and (is_causal if is_causal is not None else getattr(module, "is_causal", True)))
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    bounds = cu_seq_lens_q.tolist()
    parts = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout, scale=scaling, is_causal=True)
        for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def use_segment_sdpa(model) -> bool:
    """Switch a model that runs sdpa to ``segment_sdpa``; False (unchanged) for other kernels, e.g.
    flash-attention, which handles packed items itself."""
    from metaaligner.models import use_sdpa_variant

    return use_sdpa_variant(model, SEGMENT_SDPA, segment_sdpa) is not None


_TARGETS_ONLY = {"on": False}


def score_targets_only(on: bool = True) -> bool:
    """Make TRL's fused LM-head loss gather the target positions before the vocabulary matmul on
    every device (TRL does so only where Triton runs), or restore TRL's choice with ``on=False``.
    Same loss. Returns False when this TRL has no such switch (then nothing changes)."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if not callable(original):
        return False
    if not getattr(original, "_metaaligner", False):
        # Only the compaction decision in the fused forward reads this name; the kernel module keeps
        # its own copy, so a CPU still runs TRL's torch tiles, not Triton.
        def compact(device, _original=original):
            return _TARGETS_ONLY["on"] or _original(device)

        compact._metaaligner = True
        trl_utils._use_triton = compact
    _TARGETS_ONLY["on"] = on
    return True
