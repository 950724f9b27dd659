"""transformers backend: batched, left-padded, prompts sorted by length to cut padding.

Sorting by token length (longest first, so an out-of-memory error shows up in the first batch)
means each batch pads to nearly its own length; results are put back in input order. Greedy
decoding gives the same text as one ``generate`` call per prompt (tested on a tiny LLaMA).
``decoding="checkpoint"`` decodes as a bare ``generate`` does with the model's generation config
(the fast engine when that config is plain argmax, else ``generate`` itself, seeded per batch).
"""
from __future__ import annotations

import logging
import time

from metaaligner.generation import GenerationParams, RowEvents

log = logging.getLogger(__name__)

ENGINES = ("fast", "generate")


class HFGenerator:
    name = "hf"
    row_events = True  # generate() takes RowEvents: per row on the fast engine

    def __init__(self, model: str | None = None, device: str | None = None, dtype: str | None = None,
                 lora_path: str | None = None, device_map: str | None = None, max_input_tokens: int | None = None,
                 chat_template: bool = False, trust_remote_code: bool = False, model_obj=None, tokenizer=None,
                 sort_by_length: bool = True, engine: str = "fast",
                 share_prefix: bool = True, pack_weights: bool = True, group_attention: bool = True,
                 ngram_speculation: int | None = None, reuse_buffers: bool = True,
                 merge_linears: bool = True):
        from metaaligner.generation.fast_greedy import NGRAM_SPECULATION
        from metaaligner.models import load_causal_lm, pick_device

        if model_obj is not None:  # an already-loaded model (tests, the Python API, benchmarks)
            self.model, self.tokenizer = model_obj, tokenizer
            self.device = str(next(model_obj.parameters()).device)
            self.tokenizer.padding_side = "left"
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        else:
            self.model, self.tokenizer, self.device = load_causal_lm(
                model, device=pick_device(device), dtype=dtype, lora_path=lora_path,
                device_map=device_map, trust_remote_code=trust_remote_code)
        self.max_input_tokens = max_input_tokens
        self.chat_template = chat_template
        self.sort_by_length = sort_by_length  # False only for ablations (benchmarks)
        if engine not in ENGINES:
            from metaaligner.errors import MetaAlignerError

            raise MetaAlignerError(f"unknown hf engine {engine!r}; choose one of {', '.join(ENGINES)}")
        # "fast": greedy rows prefilled alone, decoded together (fast_greedy.py); "generate": one
        # padded model.generate per batch (the previous path; sampling always takes it).
        self.engine = engine
        self.share_prefix = share_prefix  # fast engine: prefill the prompts' common start once
        self.pack_weights = pack_weights  # fast engine on CPU: prefill and decode on oneDNN-packed weights
        self.merge_linears = merge_linears  # packed q/k/v and gate/up projections run as one product each
        self.group_attention = group_attention  # fast engine: decode attention in length groups
        # fast engine: a step may check up to N tokens guessed by prompt lookup (0: off)
        self.ngram_speculation = NGRAM_SPECULATION if ngram_speculation is None else ngram_speculation
        # fast engine: KV buffers on memory kept from the previous batch (kv_pool.py), not fresh memory
        self.reuse_buffers = reuse_buffers
        self.truncated = 0
        # Counters over all calls: prompts, prompt tokens, generated tokens (up to EOS), seconds;
        # the fast engine adds where its time goes (fast_greedy.add_stats).
        self.stats = {"prompts": 0, "prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0}

    def prompt_budget(self, params: GenerationParams) -> int | None:
        """Prompt tokens that leave ``max_new_tokens`` inside the context (``max_input_tokens`` if set)."""
        if self.max_input_tokens:
            return self.max_input_tokens
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context and context > params.max_new_tokens:
            return context - params.max_new_tokens
        return None

    def _input_limit(self, params: GenerationParams) -> int | None:
        return None if params.long_prompts == "whole" else self.prompt_budget(params)

    def count_tokens(self, prompt: str) -> int:
        """The prompt's length in tokens as this backend feeds it (chat template and BOS included)."""
        return len(self._tokenize(prompt))

    def _tokenize(self, prompt: str) -> list[int]:
        if self.chat_template:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def _encode(self, prompt: str, limit: int | None) -> list[int]:
        ids = self._tokenize(prompt)
        if limit and len(ids) > limit:
            # A caller that did not fit its prompt (metaaligner.generation.fit): cut the middle, so the
            # instruction at the start and the cue at the end both stay.
            self.truncated += 1
            ids = ids[:limit - limit // 2] + (ids[-(limit // 2):] if limit // 2 else [])
        return ids

    def decoding_used(self, params: GenerationParams) -> dict:
        """What this backend did to decode (the run record): ours, or the checkpoint's config as applied."""
        from metaaligner.generation.decoding import effective_config, is_plain_greedy

        if params.decoding != "checkpoint":
            return {"decoding": "greedy" if params.greedy else "sample", "temperature": params.temperature,
                    "top_p": params.top_p}
        config = self.model.generation_config
        return {"decoding": "checkpoint", **effective_config(config), "plain_greedy": is_plain_greedy(config)}

    def _argmax(self, params: GenerationParams) -> bool:
        """Whether this run is plain argmax decoding (ours, or a checkpoint config that is only that)."""
        from metaaligner.generation.decoding import is_plain_greedy

        if params.decoding == "checkpoint":
            return is_plain_greedy(self.model.generation_config)
        return params.greedy

    def _count_new(self, row: list[int]) -> int:
        stop = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id} - {None}
        n = 0
        for token in row:
            if token in stop:
                break
            n += 1
        return n

    def _stop_ids(self) -> set[int]:
        """The ids ``generate`` stops at: the generation config's EOS (one or a list), else the tokenizer's."""
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}

    def _fast_batch(self, prompts: list[list[int]], params: GenerationParams, idx: list[int] | None = None,
                    events: RowEvents | None = None, joins: tuple[int, int | None] | None = None) -> list[list[int]]:
        """The fast engine on one chunk; ``events`` (of the whole call, ``idx`` its rows here) hear of
        each row as it stops and may stop rows between steps. With ``joins`` (the number the next
        joining prompt gets, and the prompt token limit), ``events.more`` adds rows between steps;
        ``idx`` grows with their numbers and the result has their tokens after the chunk's."""
        import torch

        from metaaligner.generation.fast_greedy import greedy_batch

        stopped = finished = more = None
        if events is not None:
            def stopped(r: int) -> bool:
                return events.is_stopped(idx[r])

            def finished(r: int, row: list[int]) -> None:
                events.finish(idx[r], self._text(row), self._count_new(row))
        if joins is not None and events is not None and events.more is not None:
            def more(live: int) -> list[list[int]]:
                texts = events.more(live)
                first = joins[0] + len(idx) - len(prompts)  # rows joined so far are numbered after the call's
                idx.extend(range(first, first + len(texts)))
                encoded = [self._encode(t, joins[1]) for t in texts]
                self.stats["prompts"] += len(texts)
                self.stats["prompt_tokens"] += sum(len(e) for e in encoded)
                return encoded
        with torch.inference_mode():
            return greedy_batch(self.model, prompts, params.max_new_tokens, self._stop_ids(),
                                self.tokenizer.pad_token_id, share_prefix=self.share_prefix,
                                pack_weights=self.pack_weights, group_attention=self.group_attention,
                                ngram_speculation=self.ngram_speculation, reuse_buffers=self.reuse_buffers,
                                merge_linears=self.merge_linears, stats=self.stats, stopped=stopped,
                                finished=finished, more=more)

    def _text(self, row: list[int]) -> str:
        return self.tokenizer.decode(row, skip_special_tokens=True).strip()

    def _generate_batch(self, prompts: list[list[int]], params: GenerationParams) -> list[list[int]]:
        """One left-padded ``model.generate`` call; new tokens per row (pads after EOS included)."""
        import torch

        from metaaligner.generation.decoding import batch_seed

        batch = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.model.device)
        kwargs = {"max_new_tokens": params.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if params.decoding == "greedy":  # "checkpoint": nothing more, the model's generation config decides
            kwargs["do_sample"] = not params.greedy
            if params.greedy:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            else:
                kwargs.update(temperature=params.temperature, top_p=params.top_p)
        if not self._argmax(params):  # a sampled batch: seeded from the run's seed and its own prompts
            torch.manual_seed(batch_seed(params.seed, prompts))
        with torch.inference_mode():
            out = self.model.generate(**batch, **kwargs)
        return out[:, batch["input_ids"].shape[1]:].tolist()

    def generate(self, prompts: list[str], params: GenerationParams, progress: bool = False,
                 events: RowEvents | None = None) -> list[str]:
        """One completion per prompt; ``events`` (``RowEvents``): per row as it stops on the fast
        engine, per chunk on ``generate``."""
        from tqdm.auto import tqdm

        if not prompts:
            return []
        start = time.time()
        truncated_before = self.truncated
        limit = self._input_limit(params)
        encoded = [self._encode(p, limit) for p in prompts]
        if self.truncated > truncated_before:
            log.warning("%d prompts were longer than %s tokens; kept their first %s and last %s tokens",
                        self.truncated - truncated_before, limit, limit - limit // 2, limit // 2)
        order = list(range(len(prompts)))
        if self.sort_by_length:
            order.sort(key=lambda i: len(encoded[i]), reverse=True)
        results: list[str | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc="generate", unit="row", disable=not progress)
        from metaaligner.generation.fast_greedy import fast_greedy_supported

        fast = self._argmax(params) and self.engine == "fast" and fast_greedy_supported(self.model)
        for begin in range(0, len(order), max(1, params.batch_size)):
            idx = order[begin:begin + max(1, params.batch_size)]
            last = begin + max(1, params.batch_size) >= len(order)
            rows = (self._fast_batch([encoded[i] for i in idx], params, idx, events,
                                     (len(prompts), limit) if last else None) if fast
                    else self._generate_batch([encoded[i] for i in idx], params))
            texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
            for i, row, text in zip(idx, rows, texts):  # idx: joined rows' numbers too (past len(prompts))
                if i < len(prompts):
                    results[i] = text.strip()
                self.stats["generated_tokens"] += self._count_new(row)
                if events is not None and not fast:
                    events.finish(i, results[i], self._count_new(row))
            bar.update(len(idx))
        bar.close()
        self.stats["prompts"] += len(prompts)
        self.stats["prompt_tokens"] += sum(len(e) for e in encoded)
        self.stats["seconds"] += time.time() - start
        return [r if r is not None else "" for r in results]
