"""Greedy decoding for the hf backend at the CPU's limits, same text as one ``generate`` per row.

Where ``model.generate`` on a left-padded batch loses time on CPU (measured in issue 15):

- a padded prefill runs every row at the longest row's length and computes the 49k-vocabulary
  lm_head at every position. Here each prompt is prefilled alone, unpadded (exactly the batch-1
  computation), with the lm_head on its last position only (``logits_to_keep=1``);
- every aligner prompt starts with the template's instruction (82 of 324 tokens on average for
  hh-rlhf with 3 objectives). Here the batch's common first tokens are prefilled once and each row
  continues from a copy of that cache (``share_prefix``);
- the KV cache is re-concatenated each step (a copy of the whole cache per layer per token). Here
  the rows' caches are copied once into one pre-allocated buffer, left-aligned to a common end, and
  every step writes one slot in place and attends to a view of the filled part;
- finished rows keep being decoded, and every row attends over the longest prompt's padding. Here
  rows that reached EOS are dropped from the buffer as soon as the KV reads this saves over the
  remaining steps outweigh the copy of the survivors (``_compaction_pays``), and the copy also drops
  the left padding all survivors share, so long tails decode small, short batches.

Decoding then runs all rows of a batch together: one read of the weights per step for all rows,
which is what makes batch decoding pay off where decoding is memory-bound. On CPU the decode
linears run on weights packed once for oneDNN (``packed_linear.py``, faster than MKL for few rows),
and rows attend in length groups that skip most of the padding (``decode_attention.py``). Only
plain greedy decoding takes this path; ``fast_greedy_supported`` says when the model's generation
config asks for something else (a repetition penalty, say), in which case the caller falls back to
``generate``.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from metaaligner.generation.decode_attention import grouped_attention, plan_groups
from metaaligner.generation.packed_linear import MIN_ROWS, packed_linears

# generation_config fields that change greedy decoding; any non-default value -> use generate().
_NEUTRAL = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "min_new_tokens": (None, 0),
            "min_length": (None, 0), "bad_words_ids": (None,), "suppress_tokens": (None,),
            "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
            "sequence_bias": (None,), "encoder_repetition_penalty": (None, 1.0), "renormalize_logits": (None, False),
            "exponential_decay_length_penalty": (None,), "stop_strings": (None,)}


def fast_greedy_supported(model) -> bool:
    """True when plain argmax decoding reproduces ``generate(do_sample=False)`` for this model."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return True
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    text = model.config.get_text_config()
    # The buffer cache is full attention only: sliding-window or linear-attention layers -> generate().
    if any(t != "full_attention" for t in getattr(text, "layer_types", None) or []):
        return False
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False
    return all(getattr(config, name, None) in allowed for name, allowed in _NEUTRAL.items())


class _BufferLayer(DynamicLayer):
    """A KV layer over a pre-allocated ``[batch, heads, capacity, dim]`` buffer: ``update`` writes
    in place and returns a view of the filled slots (no copy, no re-concatenation)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.keys_buf, self.values_buf, self.length = keys, values, length
        self.is_initialized = True
        self.device = keys.device
        self._sync()

    def _sync(self) -> None:
        self.keys = self.keys_buf[:, :, :self.length]
        self.values = self.values_buf[:, :, :self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        self.keys_buf[:, :, self.length:self.length + n] = key_states
        self.values_buf[:, :, self.length:self.length + n] = value_states
        self.length += n
        self._sync()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def select_rows(self, rows: list[int], start: int = 0) -> None:
        """Keep ``rows`` and drop the first ``start`` slots (padding of every kept row)."""
        self.keys_buf = _repack(self.keys_buf, rows, start, self.length)
        self.values_buf = _repack(self.values_buf, rows, start, self.length)
        self.length -= start
        self._sync()


def _repack(buf: torch.Tensor, rows: list[int], start: int, length: int) -> torch.Tensor:
    """A new buffer with ``rows`` of ``buf``, slots ``start:length`` moved to 0; free slots are left
    uninitialised (each is written before it enters the attended view)."""
    out = buf.new_empty((len(rows), buf.shape[1], buf.shape[2] - start, buf.shape[3]))
    for new, old in enumerate(rows):
        out[new, :, :length - start] = buf[old, :, start:length]
    return out


def _prefill(model, ids: list[int], device, prefix: DynamicCache | None = None) -> tuple[int, DynamicCache]:
    """One prompt alone, unpadded: its first greedy token and its KV cache. With ``prefix`` (the
    cache of the prompt's first tokens), only the remaining ``ids`` are run."""
    cache = DynamicCache(config=model.config)
    start = 0
    if prefix is not None:
        for layer_idx, layer in enumerate(prefix.layers):
            cache.update(layer.keys, layer.values, layer_idx)
        start = prefix.get_seq_length()
    out = model(input_ids=torch.tensor([ids[start:]], device=device), cache=cache, use_cache=True,
                position_ids=torch.arange(start, len(ids), device=device)[None], logits_to_keep=1)
    return int(out.logits[0, -1].argmax()), out.past_key_values


def shared_prefix_length(prompts: list[list[int]], minimum: int = 16) -> int:
    """Tokens every prompt starts with (leaving each at least one of its own), or 0 when fewer
    than ``minimum`` or only one prompt: then sharing saves too little to matter."""
    if len(prompts) < 2:
        return 0
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n if n >= minimum else 0


def _prefill_all(model, prompts: list[list[int]], share_prefix: bool):
    """First tokens and caches of all prompts; the template's shared start is prefilled once."""
    device = model.device
    prefix = None
    n = shared_prefix_length(prompts) if share_prefix else 0
    if n:
        prefix = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([prompts[0][:n]], device=device), cache=prefix, use_cache=True,
              logits_to_keep=1)
    return zip(*(_prefill(model, ids, device, prefix) for ids in prompts))


def _stack_caches(caches: list[DynamicCache], lengths: list[int], extra: int) -> Cache:
    """One buffer cache for all rows: row i's ``lengths[i]`` slots end at the longest length (left
    padding), with ``extra`` free slots after that for the new tokens."""
    longest = max(lengths)
    layers = []
    for layer_idx in range(len(caches[0].layers)):
        first = caches[0].layers[layer_idx]
        batch, heads, dim = len(caches), first.keys.shape[1], first.keys.shape[-1]
        keys = first.keys.new_zeros((batch, heads, longest + extra, dim))
        values = first.values.new_zeros((batch, heads, longest + extra, first.values.shape[-1]))
        for row, (cache, length) in enumerate(zip(caches, lengths)):
            keys[row, :, longest - length:longest] = cache.layers[layer_idx].keys[0]
            values[row, :, longest - length:longest] = cache.layers[layer_idx].values[0]
        layers.append(_BufferLayer(keys, values, longest))
    return Cache(layers=layers)


def greedy_batch(model, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int], pad_id: int,
                 compact: bool = True, share_prefix: bool = True, pack_weights: bool = True,
                 group_attention: bool = True) -> list[list[int]]:
    """Greedy continuations of token-id prompts, one list per prompt, ending at the first stop id
    (included, as ``generate`` returns it) or after ``max_new_tokens``. Each row is its own batch-1
    computation in the prefill (after the shared prefix, run once when ``share_prefix``); the batched
    decode steps (on oneDNN-packed weights when ``pack_weights``, see packed_linear.py; attention
    in length groups when ``group_attention``, see decode_attention.py) agree with batch 1 up to
    float rounding."""
    if max_new_tokens <= 0 or not prompts:
        return [[] for _ in prompts]
    firsts, caches = _prefill_all(model, prompts, share_prefix)
    outputs = [[t] for t in firsts]
    alive = [i for i, t in enumerate(firsts) if t not in stop_ids]
    if max_new_tokens > 1 and alive:
        state = _DecodeState([len(prompts[i]) for i in alive], [caches[i] for i in alive], max_new_tokens - 1,
                             model.device)
        with (packed_linears(model, enabled=pack_weights and len(alive) >= MIN_ROWS),
              grouped_attention(model, enabled=group_attention and len(alive) > 1) as grouped):
            state.grouped = grouped
            state.plan()
            _decode(model, state, alive, [firsts[i] for i in alive], outputs, max_new_tokens, stop_ids, pad_id,
                    compact)
    return outputs


class _DecodeState:
    """The rows decoded together: one buffer cache, the padding mask, each row's next position.
    Row r fills the last ``positions[r]`` of the ``filled`` slots (left padding before them).
    With ``grouped`` attention, ``groups`` lists ``(first row, end row, first slot)`` per length
    group; all rows grow by one slot per step, so a group's first slot holds until ``keep``."""

    def __init__(self, lengths: list[int], caches: list, extra: int, device):
        self.filled = max(lengths)
        self.cache = _stack_caches(caches, lengths, extra)
        self.mask = torch.zeros((len(lengths), self.filled + extra + 1), dtype=torch.long, device=device)
        for row, length in enumerate(lengths):
            self.mask[row, self.filled - length:self.filled] = 1
        self.positions = torch.tensor([[n] for n in lengths], device=device)
        self.grouped, self.groups = False, None

    def plan(self) -> None:
        """(Re)plan the length groups for the rows now buffered; None: one plain sdpa call."""
        if self.grouped:
            lengths = self.positions[:, 0].tolist()
            groups = [(start, end, self.filled - max(lengths[start:end])) for start, end in plan_groups(lengths)]
            self.groups = groups if len(groups) > 1 else None

    def step(self, model, tokens: torch.Tensor) -> list[int]:
        self.filled += 1
        self.mask[:, self.filled - 1] = 1
        extra = {"decode_groups": self.groups} if self.groups else {}
        out = model(input_ids=tokens, attention_mask=self.mask[:, :self.filled], position_ids=self.positions,
                    cache=self.cache, use_cache=True, **extra)
        self.positions = self.positions + 1
        return out.logits[:, -1].argmax(-1).tolist()

    def trim(self, live: list[int]) -> int:
        """Left-padding slots every row in ``live`` has: the longest of them starts there."""
        return self.filled - int(self.positions[live].max())

    def keep(self, live: list[int]) -> None:
        """Only the ``live`` rows from now on, re-packed so that the longest starts at slot 0."""
        start = self.trim(live)
        for layer in self.cache.layers:
            layer.select_rows(live, start)
        rows = torch.tensor(live, device=self.mask.device)
        self.mask = self.mask.index_select(0, rows)[:, start:]
        self.positions = self.positions.index_select(0, rows)
        self.filled -= start
        self.plan()


# A row's own matmul work in a decode step, in KV-slot reads (SmolLM2-135M, 1 thread: ~0.5 ms of
# matmul vs ~4.6 us to read one slot's K and V of 30 layers); and how many times over the saving
# must cover the copy, since live rows may stop before the budget's end (32x256 decode, 1 thread:
# margin 4 took 58 s, 1 took 65 s, 16 took 62 s, "half the rows dead" 65 s).
_ROW_SLOTS, _MARGIN = 128, 4


def _compaction_pays(buffered: int, live: int, filled: int, trim: int, steps_left: int) -> bool:
    """Whether dropping the dead rows (and ``trim`` padding slots) now saves more KV reads over the
    ``steps_left`` remaining steps than the copy of the survivors (read + write) costs."""
    if live == buffered and trim == 0:
        return False
    kept = live * (filled - trim)
    saved = buffered * filled - kept + (buffered - live) * _ROW_SLOTS
    return saved * steps_left > _MARGIN * 2 * kept


def _decode(model, state: _DecodeState, rows: list[int], next_tokens: list[int], outputs: list[list[int]],
            max_new_tokens: int, stop_ids: set[int], pad_id: int, compact: bool) -> None:
    """Extend ``outputs[rows[r]]`` step by step until every row stopped or the budget is spent."""
    done = [False] * len(rows)
    device = state.mask.device
    for step in range(1, max_new_tokens):
        # finished rows still in the buffer are fed a pad token; their output is complete
        tokens = torch.tensor([[pad_id if d else t] for t, d in zip(next_tokens, done)], device=device)
        next_tokens = state.step(model, tokens)
        for r, t in enumerate(next_tokens):
            if not done[r]:
                outputs[rows[r]].append(t)
                done[r] = t in stop_ids
        live = [r for r in range(len(rows)) if not done[r]]
        if not live:
            return
        steps_left = max_new_tokens - 1 - step
        if compact and _compaction_pays(len(rows), len(live), state.filled, state.trim(live), steps_left):
            state.keep(live)
            rows, done, next_tokens = [rows[r] for r in live], [False] * len(live), [next_tokens[r] for r in live]
