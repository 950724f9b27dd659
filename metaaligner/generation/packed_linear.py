"""Linears of the fast engine on oneDNN weights packed once, for the CPU.

A decode step multiplies a few rows (the live batch) by every weight matrix. For such skinny
products MKL's sgemm, which ``nn.Linear`` calls on CPU, is 1.3-3.5x slower than oneDNN's inner
product on weights reordered once into its blocked layout, and most at odd row counts (measured
with the embedded SmolLM2-135M at 1 thread on an Intel CPU with AMX: the 49k-row lm_head takes
45.3 ms for 11 rows with MKL, 13.2 ms packed; a whole 11-row decode step 196 ms against 137 ms).
On other vendors' CPUs MKL runs a generic path at every size: on an AMD EPYC (Zen 5, AVX-512) at
1 thread its sgemm reaches 93 GFLOP/s and oneDNN's 219, at 240 rows (a prefill) as at 8. So the
prefill runs packed too (on the Intel CPU the two were even there). The packing depends only on
the weight, not on the row count, so it is done once per model and reused as rows finish. On
Intel CPUs one or two rows stay on MKL, whose matrix-vector path reads the weights faster there
(``min_rows``).

The packed copy costs as much memory as the linear weights (540 MB for SmolLM2-135M in float32),
so it is made only when that is at most half the memory available. Only float32 and bfloat16 CPU
models are packed; anything else runs unchanged.
"""
from __future__ import annotations

import contextlib
import functools
import os
import weakref

import torch

# Fewer rows than this stay on MKL on Intel CPUs (gemv-like, measured faster there for 1 and 2
# rows); elsewhere every row count runs packed (Zen 5, 1 thread, one decode step's linears: 1 row
# 15.2 ms on MKL, 11.4 packed; 2 rows 28.3 against 12.3).
MIN_ROWS = 3


@functools.cache
def min_rows() -> int:
    """Rows from which a linear runs on the packed weights: ``MIN_ROWS`` on an Intel CPU, else 1."""
    return MIN_ROWS if cpu_vendor() == "GenuineIntel" else 1


def cpu_vendor() -> str:
    """The CPU's vendor id from /proc/cpuinfo (``GenuineIntel``, ``AuthenticAMD``; "" if unknown)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# module -> (stamp of its weight when packed, packed weight). Kept off the module so that
# ``deepcopy`` and ``state_dict`` never meet the opaque packed tensor.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packing_supported(model, linears: list[torch.nn.Linear] | None = None) -> bool:
    """float32 or bfloat16 weights on a CPU with oneDNN (the cases measured to gain; bfloat16
    decode steps: 100 -> 80 ms at 4 rows, 148 -> 126 ms at 16), and room for the packed copy:
    at most half the memory available now (a large model on a small machine stays unpacked).
    ``linears``: the model's ``_linears``, when the caller has them already."""
    if not (torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()):
        return False
    weight = next(model.parameters(), None)
    if weight is None or weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return False
    linears = _linears(model) if linears is None else linears
    needed = sum(m.weight.numel() * m.weight.element_size() for m in linears if m not in _PACKED)
    return needed <= available_memory() / 2


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _linears(model) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


def _packed_forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.numel() < min_rows() * x.shape[-1]:
        return torch.nn.functional.linear(x, module.weight, module.bias)
    return torch.ops.mkldnn._linear_pointwise(x, _PACKED[module][1], module.bias, "none", [], "")


def _stamp(weight: torch.Tensor) -> tuple[int, int]:
    # In-place updates (an optimizer step) bump ``_version``; a new tensor has a new address.
    return weight.data_ptr(), weight._version


def pack(model) -> int:
    """Make a packed copy of every ``nn.Linear`` weight of ``model`` (held in ``_PACKED``), again
    only for weights that changed since (training between generations); returns how many were
    packed now."""
    return _pack(_linears(model))


def _pack(linears: list[torch.nn.Linear]) -> int:
    packed = 0
    with torch.no_grad():
        for module in linears:
            held = _PACKED.get(module)
            if held is None or held[0] != _stamp(module.weight):
                weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), None)
                _PACKED[module] = (_stamp(module.weight), weight)
                packed += 1
    return packed


@contextlib.contextmanager
def packed_linears(model, enabled: bool = True):
    """Within the block, ``model``'s linears of ``min_rows()`` or more rows run on packed weights
    (packed on first use). A no-op when ``enabled`` is False or ``packing_supported`` is not; yields which."""
    linears = _linears(model) if enabled else []
    if not enabled or not packing_supported(model, linears):
        yield False
        return
    _pack(linears)
    for module in linears:
        module.forward = functools.partial(_packed_forward, module)
    try:
        yield True
    finally:
        for module in linears:
            module.__dict__.pop("forward", None)
