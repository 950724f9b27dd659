"""Memory for the fast engine's KV buffers, kept for the next buffers instead of handed back.

Memory a process writes for the first time is slow to fault in on some machines: on a shared
2-core AMD EPYC VM, zeroing a fresh 1.2 GB tensor (the 32x256 KV buffer of SmolLM2-135M) ran at
0.3-2 GB/s, against 14-23 GB/s for memory already written once. A new buffer per batch, and a new
one per compaction (``_DecodeState.keep``), paid that each time. A ``KVPool`` keeps the flat
tensors behind finished buffers and hands them out again (the smallest that fits), so after the
first batch a buffer costs only its own writes; ``pool_for`` keeps one per model, for as long as
the model lives, as the packed weights are kept (``packed_linear.py``).
"""
from __future__ import annotations

import math
import threading
import weakref

import torch

from metaaligner.generation.packed_linear import available_memory


class KVPool:
    """Flat tensors free for reuse, at most ``limit`` bytes of them (default: a quarter of the
    memory available when the pool is made); the smallest are let go first."""

    def __init__(self, limit: int | None = None):
        self.limit = available_memory() // 4 if limit is None else limit
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()
        self.fresh_bytes = 0  # allocated new by ``take`` (the rest came from the pool)

    def take(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device, on the smallest
        free tensor that holds it, else on new memory."""
        numel = math.prod(shape)
        writable = torch.is_inference_mode_enabled()  # else an inference-mode tensor can't be written
        with self._lock:
            fits = [i for i, t in enumerate(self._free) if t.numel() >= numel and t.dtype == like.dtype
                    and t.device == like.device and (writable or not t.is_inference())]
            flat = self._free.pop(min(fits, key=lambda i: self._free[i].numel())) if fits else None
        if flat is None:
            flat = like.new_empty(numel)
            self.fresh_bytes += flat.numel() * flat.element_size()
        return flat[:numel].view(shape)

    def give(self, tensor: torch.Tensor) -> None:
        """Hand back a tensor from ``take`` that nothing reads or writes any more (a second
        hand-back is ignored). The pool keeps only what is handed back: a buffer given up on (an
        exception mid-batch) is freed as usual."""
        if tensor.storage_offset():
            return
        # the whole memory behind the view (inference mode drops ``_base``, the storage stays)
        flat = tensor.new_empty(0).set_(tensor.untyped_storage())
        with self._lock:
            if any(t.data_ptr() == flat.data_ptr() for t in self._free):
                return
            self._free.append(flat)
            self._free.sort(key=torch.Tensor.numel, reverse=True)
            while self._free and self.free_bytes() > self.limit:
                self._free.pop()

    def free_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._free)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


_POOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pool_for(model) -> KVPool:
    """The pool of ``model``'s KV buffers (made on first use, gone with the model)."""
    pool = _POOLS.get(model)
    if pool is None:
        pool = _POOLS[model] = KVPool()
    return pool


def release(model) -> None:
    """Let go of the memory kept for ``model``'s KV buffers."""
    pool = _POOLS.pop(model, None)
    if pool is not None:
        pool.clear()
