"""Greedy decoding for the hf backend at the CPU's limits, same text as one ``generate`` per row.

Where ``model.generate`` on a left-padded batch loses time on CPU (measured in issue 15):

- a padded prefill runs every row at the longest row's length and computes the 49k-vocabulary
  lm_head at every position. Here each prompt is prefilled alone, unpadded (the batch-1
  computation, on the packed weights of ``packed_linear.py``: oneDNN, 2.3x MKL's speed on an AMD
  CPU, equal up to float rounding), with the lm_head on its last position only (``logits_to_keep=1``);
- every aligner prompt starts with the template's instruction (82 of 324 tokens on average for
  hh-rlhf with 3 objectives). Here the batch's common first tokens are prefilled once and each row
  continues from a copy of that cache (``share_prefix``);
- the KV cache is re-concatenated each step (a copy of the whole cache per layer per token). Here
  each prompt's prefill writes its KV straight into its row of one pre-allocated buffer,
  left-aligned to a common end, and every step writes its slots in place and attends to a view of
  the filled part;
- finished rows keep being decoded, and every row attends over the longest prompt's padding. Here
  rows that reached EOS are dropped from the buffer as soon as the KV reads this saves over the
  remaining steps outweigh the copy of the survivors (``_compaction_pays``), and the copy also drops
  the left padding all survivors share, so long tails decode small, short batches.

Decoding then runs all rows of a batch together: one read of the weights per step for all rows,
which is what makes batch decoding pay off where decoding is memory-bound. Between steps the
caller may hear of rows that ended (``finished``), stop rows (``stopped``) and add prompts
(``more``: continuous batching, ``_Joiner``), each joining row prefilled alone and packed in. A step may also check a
few tokens per row guessed by prompt lookup (``NgramDrafter``: an aligner copies much of the answer
it edits, a looping row repeats itself); the greedy predictions decide which are kept, so the text
is that of one token per step, in fewer steps. On CPU the linears run on weights packed once for
oneDNN (``packed_linear.py``, faster than MKL for few rows, and at any size on AMD CPUs),
and rows attend in length groups that skip most of the padding (``decode_attention.py``). Only
plain greedy decoding takes this path; ``fast_greedy_supported`` says when the model's generation
config asks for something else (a repetition penalty, say), in which case the caller falls back to
``generate``.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from metaaligner.generation.decode_attention import grouped_attention, plan_groups
from metaaligner.generation.kv_pool import KVPool, pool_for
from metaaligner.generation.packed_linear import only_rows, packed_linears

# Draft tokens a step may check per row by default (32x256 at 1 thread, widths picked by
# ``_pick_width``: at most 4 took 38.8 s, at most 8 took 38.0 s; 0 took 55 s).
NGRAM_SPECULATION = 8

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

    def truncate(self, length: int) -> None:
        """Forget the slots from ``length`` on (rejected draft tokens); the next update writes there."""
        self.length = length
        self._sync()

    def gather_rows(self, slots: list[tuple[int | None, slice | torch.Tensor | int]], width: int, capacity: int,
                    pool: KVPool, read_from: list[int], joined: list[tuple[torch.Tensor, torch.Tensor]] = ()) -> None:
        """Keep one row per entry of ``slots`` (``(old row, its slots)``, or ``(None, j)`` for the
        j-th of ``joined``: a new row's ``[heads, length, dim]`` keys and values), those slots moved
        to end at ``width`` in a new buffer of ``capacity`` slots (left padding before them, zeroed
        from the row's ``read_from`` slot on), from ``pool``; the old buffer goes back to it."""
        for which, name in enumerate(("keys_buf", "values_buf")):
            old = getattr(self, name)
            sources = [(old[row], index) if row is not None else
                       (joined[index][which], slice(0, joined[index][which].shape[1])) for row, index in slots]
            setattr(self, name, _gather(old, sources, width, capacity, pool, read_from))
            pool.give(old)
        self.length = width
        self._sync()


def _row_slots(mask_row: torch.Tensor) -> slice | torch.Tensor:
    """The slots a row fills (mask 1): a slice when they are contiguous (a plain copy), else their
    indices (holes left by rejected draft tokens). Worked out once per row, not per layer."""
    index = mask_row.nonzero().flatten()
    first, last = (int(index[0]), int(index[-1])) if len(index) else (0, -1)
    return slice(first, last + 1) if last - first == len(index) - 1 else index


def _gather(buf: torch.Tensor, sources: list[tuple[torch.Tensor, slice | torch.Tensor]], width: int,
            capacity: int, pool: KVPool, read_from: list[int]) -> torch.Tensor:
    """A new buffer (shaped and typed like ``buf``) with one row per ``(source, slots)``: those slots
    of a ``[heads, slots, dim]`` source, right-aligned at ``width``. The left padding attention
    reads (from the row's ``read_from`` slot on) is zeroed: masked slots still enter sdpa's product
    with V, and uninitialised memory can hold NaN. Free slots after ``width`` are written before
    they are read."""
    out = pool.take((len(sources), buf.shape[1], capacity, buf.shape[3]), buf)
    for new, (source, index) in enumerate(sources):
        n = _count(index)
        out[new, :, read_from[new]:width - n].zero_()
        out[new, :, width - n:width] = source[:, index] if isinstance(index, slice) else source.index_select(1, index)
    return out


def _count(index: slice | torch.Tensor) -> int:
    return index.stop - index.start if isinstance(index, slice) else len(index)


def _prefill(model, ids: list[int], device, prefix: DynamicCache | None = None,
             cache: Cache | None = None) -> tuple[int, Cache]:
    """One prompt alone, unpadded: its first greedy token and its KV cache (``cache``, filled in
    place, or a new DynamicCache). With ``prefix`` (the cache of the prompt's first tokens), only
    the remaining ``ids`` are run."""
    cache = DynamicCache(config=model.config) if cache is None else cache
    start = 0
    if prefix is not None:
        for layer_idx, layer in enumerate(prefix.layers):
            cache.update(layer.keys, layer.values, layer_idx)
        start = prefix.get_seq_length()
    out = model(input_ids=torch.tensor([ids[start:]], device=device), cache=cache, use_cache=True,
                position_ids=torch.arange(start, len(ids), device=device)[None], logits_to_keep=1)
    return int(out.logits[0, -1].argmax()), cache


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


def prefill_attention_pairs(prompts: list[list[int]], prefix: int) -> int:
    """Query-key pairs the prefill's attention computes: the shared start's ``prefix`` tokens over
    themselves once, then each prompt's own tokens over all of its tokens."""
    return prefix * prefix + sum((len(p) - prefix) * len(p) for p in prompts)


def length_groups(first: list[int], end: int, grouped: bool) -> list[tuple[int, int, int]] | None:
    """``(first row, end row, first slot)`` per length group (``plan_groups``) of rows whose slots
    run from ``first[r]`` to ``end``, or None for one plain sdpa call over every slot: when not
    ``grouped``, for one row, or when one group is best."""
    if not grouped or len(first) < 2:
        return None
    groups = [(start, stop, min(first[start:stop])) for start, stop in plan_groups([end - f for f in first])]
    return groups if len(groups) > 1 else None


def read_from_slots(extents: list[int], grouped: bool) -> list[int]:
    """The first slot each row's decode attention reads, for rows whose filled slots (``extents``,
    padding excluded) end together: its length group's first (``length_groups``), or 0 for one
    call over all rows. Padding before it is never read, so it is neither zeroed nor touched (memory
    never touched is never faulted in: 32x256 leaves 6,965 of its 7,481 padding slots so)."""
    longest = max(extents, default=0)
    return _first_read(length_groups([longest - e for e in extents], longest, grouped), len(extents))


def _first_read(groups: list[tuple[int, int, int]] | None, rows: int) -> list[int]:
    return [slot for start, stop, slot in groups for _ in range(start, stop)] if groups else [0] * rows


def _prefill_all(model, prompts: list[list[int]], n: int, extra: int, pool: KVPool, grouped: bool = False):
    """First greedy tokens of all prompts and, when ``extra`` > 0, their KV caches in one buffer:
    row i's slots end at the longest prompt's length (left padding before them, zeroed where
    decode attention reads it: ``read_from_slots``, with length groups when ``grouped``), with
    ``extra`` free slots after (memory from ``pool``). The ``n`` tokens all prompts start with (the
    template's shared start; 0: none) are prefilled once, and each prompt's prefill writes straight
    into its row of the buffer (no per-row cache to copy afterwards). Also returns the shared
    start's cache (None without one), for prompts that join later (``_Joiner``)."""
    device = model.device
    prefix = None
    if n:
        prefix = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([prompts[0][:n]], device=device), cache=prefix, use_cache=True,
              logits_to_keep=1)
    first, cache = _prefill(model, prompts[0], device, prefix)  # its shapes size the buffer
    if extra <= 0:
        return [first] + [_prefill(model, ids, device, prefix)[0] for ids in prompts[1:]], None, prefix
    longest = max(len(p) for p in prompts)
    slots = longest + extra
    buffers = [tuple(pool.take((len(prompts), t.shape[1], slots, t.shape[3]), t) for t in (layer.keys, layer.values))
               for layer in cache.layers]
    firsts = [first]
    read_from = read_from_slots([len(p) for p in prompts], grouped)
    for row, ids in enumerate(prompts):
        start = longest - len(ids)
        for keys, values in buffers:  # masked slots still meet V in sdpa: no uninitialised NaN there
            keys[row, :, read_from[row]:start].zero_()
            values[row, :, read_from[row]:start].zero_()
        if row == 0:
            for (keys, values), layer in zip(buffers, cache.layers):
                keys[0, :, start:longest] = layer.keys[0]
                values[0, :, start:longest] = layer.values[0]
            continue
        views = Cache(layers=[_BufferLayer(k[row:row + 1, :, start:], v[row:row + 1, :, start:], 0)
                              for k, v in buffers])
        firsts.append(_prefill(model, ids, device, prefix, views)[0])
    return firsts, Cache(layers=[_BufferLayer(k, v, longest) for k, v in buffers]), prefix


def greedy_batch(model, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int], pad_id: int,
                 compact: bool = True, share_prefix: bool = True, pack_weights: bool = True,
                 group_attention: bool = True, ngram_speculation: int = NGRAM_SPECULATION,
                 reuse_buffers: bool = True, merge_linears: bool = True, stats: dict | None = None,
                 stopped: Callable[[int], bool] | None = None,
                 finished: Callable[[int, list[int]], None] | None = None,
                 more: Callable[[int], list[list[int]]] | None = None) -> list[list[int]]:
    """Greedy continuations of token-id prompts, one list per prompt, ending at the first stop id
    (included, as ``generate`` returns it) or after ``max_new_tokens``. Each row is its own batch-1
    computation in the prefill (after the shared prefix, run once when ``share_prefix``); the prefill
    and the batched decode steps (on oneDNN-packed weights when ``pack_weights``, see
    packed_linear.py, with the linears that read the same input as one product when
    ``merge_linears``, and a draft step's pads skipped there; decode attention in length groups
    and each forward's mask made additive once for all layers when ``group_attention``, see
    decode_attention.py) agree with batch 1 up to
    float rounding. With ``ngram_speculation`` > 0 a step may also check up to that many tokens per
    row guessed by n-gram lookup in the row's own prompt and output (``NgramDrafter``; how many:
    ``_pick_width``): the greedy predictions decide what is kept, so the text is the same, in fewer
    steps when the guesses are right. The KV buffers take their memory from the model's ``KVPool``
    (``kv_pool.py``) and hand it back at the end when ``reuse_buffers`` and the model is on CPU,
    else from a pool of this call only. ``stats``, when given, has this call's work added to it
    (``add_stats``: where the time goes). ``finished(i, tokens)``, when given, hears of row i once, as
    soon as it stops (its tokens are final), while the other rows go on; ``stopped(i)`` is asked for
    each live row before every decode step: True stops row i there (its tokens so far are its output).
    ``more(live)``, asked before every decode step with the number of rows decoding, gives prompts
    that join the batch there (continuous batching, ``_Joiner``): each is prefilled alone (on the
    shared start's cache when it starts with it), numbered after the rows before it, and decodes
    with the others, its tokens those of batch 1 as for every row; the call ends once no row is
    left and ``more`` gives none. The result has one list per row, joined rows included."""
    if max_new_tokens <= 0 or not prompts:
        return [[] for _ in prompts]
    ngram_speculation = max(ngram_speculation, 0)
    extra = max_new_tokens - 1 + ngram_speculation if max_new_tokens > 1 else 0
    # CUDA's caching allocator keeps freed memory already; the CPU allocator hands it back
    pool = pool_for(model) if reuse_buffers and model.device.type == "cpu" else KVPool()
    started = time.perf_counter()
    state = None
    prefix = shared_prefix_length(prompts) if share_prefix else 0
    packed = packed_linears(model, enabled=pack_weights, merge_siblings=merge_linears)
    with packed as packing, grouped_attention(model, enabled=group_attention) as grouped:
        firsts, cache, prefix_cache = _prefill_all(model, prompts, prefix, extra, pool, grouped)
        prefilled = time.perf_counter()
        outputs = [[t] for t in firsts]
        ends = _RowEnds(outputs, stopped, finished)
        alive = [i for i, t in enumerate(firsts) if t not in stop_ids and max_new_tokens > 1 and not ends.stop(i)]
        ends.end([i for i in range(len(prompts)) if i not in set(alive)])
        joiner = None
        if more is not None and max_new_tokens > 1:
            joiner = _Joiner(model, more, prompts[0][:prefix], prefix_cache, stop_ids, ends, ngram_speculation > 0,
                             extra)
        if alive or joiner is not None:
            drafters = [NgramDrafter(prompts[i] + outputs[i]) for i in alive] if ngram_speculation else None
            state = _DecodeState([len(p) for p in prompts], cache, model.device, pool, ngram_speculation,
                                 grouped=grouped and (len(alive) > 1 or joiner is not None), skip_pads=packing)
            if len(alive) < len(prompts) and alive:
                state.keep(alive)
            _decode(model, state, alive, [firsts[i] for i in alive], outputs, max_new_tokens, stop_ids,
                    pad_id, compact, drafters, ends, joiner)
    for layer in cache.layers if cache is not None else []:
        pool.give(layer.keys_buf)
        pool.give(layer.values_buf)
    if stats is not None:
        add_stats(stats, prefill_seconds=prefilled - started, decode_seconds=time.perf_counter() - prefilled,
                  prefill_tokens=sum(len(p) for p in prompts) - max(len(prompts) - 1, 0) * prefix
                  + (joiner.prefill_tokens if joiner else 0),
                  prefill_attention_pairs=prefill_attention_pairs(prompts, prefix)
                  + (joiner.attention_pairs if joiner else 0),
                  decode_steps=state.steps if state else 0, decode_token_rows=state.token_rows if state else 0,
                  decode_pads_skipped=state.pads_skipped if state else 0,
                  decode_kv_slots=state.kv_slots if state else 0)
    return outputs


class _RowEnds:
    """Tells the caller of each row once as it stops (``finished``) and asks whether a live row is to
    stop now (``stopped``); either may be None."""

    def __init__(self, outputs: list[list[int]], stopped, finished):
        self.outputs, self.stopped, self.finished = outputs, stopped, finished

    def stop(self, row: int) -> bool:
        return self.stopped is not None and bool(self.stopped(row))

    def end(self, rows: list[int]) -> None:
        if self.finished is not None:
            for row in rows:
                self.finished(row, self.outputs[row])


class _Joiner:
    """Continuous batching: prompts that ``more`` gives between decode steps join the batch. Each is
    prefilled alone (from the shared start's cache when it starts with those tokens), is told of
    at once when its first token ends it, and otherwise is packed into the decode buffer with the
    live rows, all ordered longest first (so length groups stay tight)."""

    def __init__(self, model, more, prefix_ids: list[int], prefix_cache, stop_ids: set[int], ends: _RowEnds,
                 draft: bool, room: int):
        self.model, self.more, self.stop_ids, self.ends, self.draft = model, more, stop_ids, ends, draft
        self.room = room  # free slots after a re-pack: a new row's whole budget and a step's draft
        self.prefix_ids, self.prefix_cache = prefix_ids, prefix_cache
        # prompt tokens the joined rows ran and the query-key pairs of their attention (for ``stats``;
        # their prefill time is in the decode time)
        self.prefill_tokens = self.attention_pairs = 0

    def _prefill(self, ids: list[int]) -> tuple[int, DynamicCache]:
        n = len(self.prefix_ids)
        shared = self.prefix_cache is not None and len(ids) > n and ids[:n] == self.prefix_ids
        self.prefill_tokens += len(ids) - (n if shared else 0)
        self.attention_pairs += (len(ids) - (n if shared else 0)) * len(ids)
        return _prefill(self.model, ids, self.model.device, self.prefix_cache if shared else None)

    def admit(self, state: _DecodeState, lists: dict, done: list[bool]) -> dict | None:
        """Ask ``more`` with the number of live rows; prefill what it gives and re-pack the buffer
        with the live rows and the joining ones. Returns the per-row lists (``rows``,
        ``next_tokens``, ``drafters``, ``history``) in the new order, or None when nothing joined."""
        live = [r for r in range(len(done)) if not done[r]]
        prompts = self.more(len(live))
        if not prompts:
            return None
        outputs, joined = self.ends.outputs, []
        for ids in prompts:
            first, cache = self._prefill(ids)
            outputs.append([first])
            if first in self.stop_ids or self.ends.stop(len(outputs) - 1):
                self.ends.end([len(outputs) - 1])
            else:
                joined.append((len(outputs) - 1, ids, first, cache))
        if not joined:
            return None
        # longest first: each entry is an old row (index) or a joining one (None), with its extent
        order = sorted([(int(state.positions[r]), r) for r in live] + [(len(ids), None) for _, ids, _, _ in joined],
                       key=lambda e: -e[0])
        state.keep([r for _, r in order], room=self.room, joined=[(cache, len(ids)) for _, ids, _, cache in joined])
        new = iter(joined)
        out = {key: [] for key in lists}
        for _, r in order:
            if r is not None:
                for key in lists:
                    out[key].append(lists[key][r] if lists[key] is not None else None)
                continue
            index, ids, first, _ = next(new)
            picked = {"rows": index, "next_tokens": first, "history": [],
                      "drafters": NgramDrafter(ids + [first]) if self.draft else None}
            for key in lists:
                out[key].append(picked[key])
        return {key: (None if lists[key] is None else value) for key, value in out.items()}


def add_stats(stats: dict, **work) -> None:
    """Add one call's work to ``stats``: ``prefill_seconds`` and ``decode_seconds`` (wall),
    ``prefill_tokens`` (prompt tokens run, the shared start once), ``prefill_attention_pairs``
    (query-key pairs its attention computed), ``decode_steps`` (decoding forwards),
    ``decode_token_rows`` (tokens their linears ran: each row's next token and its draft tokens,
    and the pads that fill a step's width, of which the packed linears run one a step for all),
    ``decode_pads_skipped`` (the pads they skipped; pads run attention and small ops either way)
    and ``decode_kv_slots`` (cached K/V slots their attention read, per layer: each row over the
    slots its length group spans)."""
    for key, value in work.items():
        stats[key] = stats.get(key, 0) + value


class NgramDrafter:
    """Guesses a row's next tokens by prompt lookup: the tokens that followed the latest earlier
    occurrence of its last ``max_n`` (then fewer) tokens, in its prompt and output so far. An
    aligner copies much of the answer it edits, and a looping row repeats itself; both are found."""

    def __init__(self, tokens: list[int], max_n: int = 3):
        self.tokens, self.max_n = list(tokens), max_n
        self.ends: dict[tuple[int, ...], int] = {}  # n-gram -> end of its latest occurrence
        self.indexed = 0  # n-grams ending before this index are in ``ends``

    def extend(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` guessed next tokens (none when no n-gram matches or ``k`` <= 0)."""
        tokens, end = self.tokens, len(self.tokens)
        for e in range(self.indexed, end):  # the suffix itself (ending at ``end``) stays out
            for n in range(1, min(self.max_n, e) + 1):
                self.ends[tuple(tokens[e - n:e])] = e
        self.indexed = end
        if k <= 0:
            return []
        for n in range(min(self.max_n, end), 0, -1):
            e = self.ends.get(tuple(tokens[end - n:]))
            if e is not None:
                return tokens[e:e + k]
        return []


class _DecodeState:
    """The rows decoded together: one buffer cache, the padding mask, each row's next position.
    Row r's ``positions[r]`` tokens fill slots from ``first[r]`` to ``filled``, all but the masked
    ones (rejected draft tokens leave masked holes until the next ``keep``). With ``grouped``
    attention, ``groups`` lists ``(first row, end row, first slot)`` per length group; slots do not
    move between ``keep`` calls, so a group's first slot holds until then."""

    def __init__(self, lengths: list[int], cache: Cache, device, pool: KVPool, draft: int = 0,
                 grouped: bool = False, skip_pads: bool = False):
        self.filled, self.draft, self.cache, self.pool = max(lengths), draft, cache, pool
        self.capacity = cache.layers[0].keys_buf.shape[2]
        self.mask = torch.zeros((len(lengths), self.capacity), dtype=torch.long, device=device)
        for row, length in enumerate(lengths):
            self.mask[row, self.filled - length:self.filled] = 1
        self.positions = torch.tensor([[n] for n in lengths], device=device)
        self.first = [self.filled - n for n in lengths]
        self.grouped = grouped  # attention in length groups (``length_groups``), planned here and in ``keep``
        self.groups = length_groups(self.first, self.filled, grouped)
        # forwards run, the tokens their linears ran, the pads they skipped and the KV slots
        # their attention read (for ``stats``)
        self.steps = self.token_rows = self.pads_skipped = self.kv_slots = 0
        self.skip_pads = skip_pads  # the linears run only the tokens that are not pads (``only_rows``)

    def fits(self, width: int) -> bool:
        return self.filled + width <= self.capacity

    def step(self, model, tokens: torch.Tensor, real: list[int] | None = None) -> list[list[int]]:
        """Run ``tokens`` (``[rows, n]``: each row's next token, then its draft, then pads) at the
        next slots; the greedy prediction after each. ``real``: how many of each row's tokens are
        not pads (default: all); with ``skip_pads`` the linears run only those (``only_rows``).
        ``accept`` must follow."""
        n = tokens.shape[1]
        self.mask[:, self.filled:self.filled + n] = 1
        extra = {"decode_groups": self.groups} if self.groups else {}
        positions = self.positions if n == 1 else self.positions + torch.arange(n, device=tokens.device)
        needed = _needed_rows(real, n) if self.skip_pads and real is not None else None
        with only_rows(needed, tokens.numel()):
            out = model(input_ids=tokens, attention_mask=self.mask[:, :self.filled + n], position_ids=positions,
                        cache=self.cache, use_cache=True, **extra)
        self.width = n
        self.steps += 1
        ran = tokens.numel() if needed is None else len(needed) + 1  # one pad runs for all pads
        self.token_rows += ran
        self.pads_skipped += tokens.numel() - ran
        self.kv_slots += sum((end - start) * (self.filled + n - slot)
                             for start, end, slot in self.groups or [(0, len(self.first), 0)])
        return out.logits.max(-1).indices.tolist()  # argmax, 3x faster on CPU (same first index)

    def accept(self, kept: list[int]) -> None:
        """Keep the first ``kept[r]`` of the slots row r just ran."""
        if all(k == self.width for k in kept):
            self.filled += self.width
            self.positions = self.positions + self.width
            return
        longest = max(kept)
        for row, k in enumerate(kept):
            self.mask[row, self.filled + k:self.filled + self.width] = 0
        self.filled += longest
        for layer in self.cache.layers:
            layer.truncate(self.filled)
        self.positions = self.positions + torch.tensor([[k] for k in kept], device=self.positions.device)

    def trim(self, live: list[int]) -> int:
        """Slots a re-pack of the ``live`` rows saves per row: left padding they all have and holes."""
        return self.filled - int(self.positions[live].max())

    def keep(self, live: list[int | None], room: int | None = None, joined: list[tuple[Cache, int]] = ()) -> None:
        """Only the ``live`` rows from now on, in that order, re-packed without holes so that the
        longest starts at slot 0, with ``room`` free slots after (default: the free slots there are
        now). A None in ``live`` takes the next of ``joined``: a prompt prefilled alone (its cache
        and length) that joins the batch here."""
        picks = iter(range(len(joined)))
        slots = [(r, _row_slots(self.mask[r, :self.filled])) if r is not None else (None, next(picks)) for r in live]
        extents = [_count(index) if r is not None else joined[index][1] for r, index in slots]
        width = max(extents)
        room = self.capacity - self.filled if room is None else room
        self.first = [width - n for n in extents]
        # the new rows' length groups: the padding they read is zeroed, the rest left alone
        self.groups = length_groups(self.first, width, self.grouped)
        read_from = _first_read(self.groups, len(live))
        for i, layer in enumerate(self.cache.layers):
            layer.gather_rows(slots, width, width + room, self.pool, read_from,
                              [(c.layers[i].keys[0], c.layers[i].values[0]) for c, _ in joined])
        self.mask = self.mask.new_zeros((len(live), width + room))
        for row, first in enumerate(self.first):
            self.mask[row, first:width] = 1
        position = self.positions[:, 0].tolist()
        self.positions = torch.tensor([[position[r] if r is not None else n] for r, n in zip(live, extents)],
                                      device=self.mask.device)
        self.filled, self.capacity = width, width + room


# A row's own matmul work in a decode step, in KV-slot reads (SmolLM2-135M, 1 thread: ~0.5 ms of
# matmul vs ~4.6 us to read one slot's K and V of 30 layers); and how many times over the saving
# must cover the copy, since live rows may stop before the budget's end (32x256 decode, 1 thread:
# margin 4 took 58 s, 1 took 65 s, 16 took 62 s, "half the rows dead" 65 s).
_ROW_SLOTS, _MARGIN = 128, 4


def _needed_rows(real: list[int], width: int) -> torch.Tensor | None:
    """Flat indices of the first ``real[r]`` tokens of each row of a ``[rows, width]`` step, or
    None when no row has pads."""
    if all(k == width for k in real):
        return None
    return torch.tensor([r * width + j for r, k in enumerate(real) for j in range(k)], dtype=torch.long)


def _compaction_pays(buffered: int, live: int, filled: int, trim: int, steps_left: int) -> bool:
    """Whether dropping the dead rows (and ``trim`` padding slots) now saves more KV reads over the
    ``steps_left`` remaining steps than the copy of the survivors (read + write) costs."""
    if live == buffered and trim == 0:
        return False
    kept = live * (filled - trim)
    saved = buffered * filled - kept + (buffered - live) * _ROW_SLOTS
    return saved * steps_left > _MARGIN * 2 * kept


def _emitted(draft: list[int], predicted: list[int], stop_ids: set[int], budget: int) -> list[int]:
    """A row's new tokens after a step: the draft tokens the model predicted too, then its own next
    prediction; cut after a stop id and at ``budget`` tokens."""
    accepted = 0
    while accepted < len(draft) and draft[accepted] == predicted[accepted]:
        accepted += 1
    new = draft[:accepted] + [predicted[accepted]]
    stop = next((i for i, t in enumerate(new) if t in stop_ids), None)
    return new[:min(budget, len(new) if stop is None else stop + 1)]


# The cost of a decode step in units of one row's own work (its KV reads and matmuls): a fixed part
# (reading the weights) and the part per extra draft token per row. SmolLM2-135M, 1 thread, ~600
# cached tokens: ~55 ms + ~8 ms per row, + ~2.5 ms per row and draft token (11 rows: 137 ms at 1
# token, 269 ms at 5). ``_pick_width`` weighs this against the tokens each width is expected to give.
_STEP_ROWS, _DRAFT_COST = 7.0, 0.31


def _pick_width(drafts: list[list[int]], history: list[list[tuple[int, int]]], buffered: int) -> int:
    """Tokens per row for the next step (1 + draft tokens checked) with the most expected tokens per
    unit of cost, for the live rows' ``drafts`` among ``buffered`` rows. A row's chance that a draft
    token is right is its recent acceptance rate (last 4 checks, prior 1 of 2); the j-th draft
    token counts only if all before it were right."""
    rates = [((sum(a for a, _ in h[-4:]) + 1) / (sum(n for _, n in h[-4:]) + 2), len(d))
             for d, h in zip(drafts, history)]
    best, width = 0.0, 1
    for w in range(1, 1 + max((len(d) for d in drafts), default=0) + 1):
        expected = sum(1 + sum(p ** j for j in range(1, min(w - 1, n) + 1)) for p, n in rates)
        value = expected / (_STEP_ROWS + buffered * (1 + _DRAFT_COST * (w - 1)))
        if value > best:
            best, width = value, w
    return width


def _decode(model, state: _DecodeState, rows: list[int], next_tokens: list[int], outputs: list[list[int]],
            max_new_tokens: int, stop_ids: set[int], pad_id: int, compact: bool,
            drafters: list[NgramDrafter] | None = None, ends: _RowEnds | None = None,
            joiner: _Joiner | None = None) -> None:
    """Extend ``outputs[rows[r]]`` step by step until every row stopped or spent the budget (or
    ``ends`` stopped it); ``ends`` hears of each row as it stops; ``joiner`` adds rows between steps."""
    done = [False] * len(rows)
    device = state.mask.device
    history = [[] for _ in rows]  # per row: (draft tokens accepted, checked) of its recent steps
    ends = ends or _RowEnds(outputs, None, None)
    while True:
        halted = [r for r in range(len(rows)) if not done[r] and ends.stop(rows[r])]
        for r in halted:
            done[r] = True
        ends.end([rows[r] for r in halted])
        joined = joiner.admit(state, {"rows": rows, "next_tokens": next_tokens, "drafters": drafters,
                                      "history": history}, done) if joiner is not None else None
        if joined is not None:
            rows, next_tokens, drafters, history = (joined[k] for k in ("rows", "next_tokens", "drafters", "history"))
            done = [False] * len(rows)
        if all(done):
            return
        budgets = [max_new_tokens - len(outputs[row]) for row in rows]
        drafts = [[] if drafters is None or done[r] else drafters[r].draft(min(state.draft, budgets[r] - 1))
                  for r in range(len(rows))]
        live = [r for r in range(len(rows)) if not done[r]]
        width = _pick_width([drafts[r] for r in live], [history[r] for r in live], len(rows))
        drafts = [d[:width - 1] for d in drafts]
        if not state.fits(width):  # holes used up the free slots: close them
            state.keep(list(range(len(rows))), room=max(budgets) + state.draft)
        # finished rows still in the buffer are fed pad tokens; their output is complete
        tokens = [[pad_id] * width if d else [t] + g + [pad_id] * (width - 1 - len(g))
                  for t, g, d in zip(next_tokens, drafts, done)]
        real = [0 if d else 1 + len(g) for g, d in zip(drafts, done)]
        predicted = state.step(model, torch.tensor(tokens, device=device), real)
        kept = []
        for r, row in enumerate(rows):
            new = [] if done[r] else _emitted(drafts[r], predicted[r], stop_ids, budgets[r])
            kept.append(max(len(new), 1))
            if drafts[r]:
                history[r].append((len(new) - 1, len(drafts[r])))
            if new:
                outputs[row].extend(new)
                next_tokens[r] = new[-1]
                done[r] = new[-1] in stop_ids or len(outputs[row]) >= max_new_tokens
                if done[r]:
                    ends.end([row])
                if drafters is not None:
                    drafters[r].extend(new)
        state.accept(kept)
        live = [r for r in range(len(rows)) if not done[r]]
        if not live:
            continue  # the loop's top ends the call, or admits rows that joined
        steps_left = max_new_tokens - min(len(outputs[rows[r]]) for r in live)
        if compact and _compaction_pays(len(rows), len(live), state.filled, state.trim(live), steps_left):
            state.keep(live)
            rows, next_tokens = [rows[r] for r in live], [next_tokens[r] for r in live]
            done = [False] * len(live)
            if drafters is not None:
                drafters, history = [drafters[r] for r in live], [history[r] for r in live]
