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

Linears of one block that read the same input (a Llama-style attention's q, k and v projections,
its MLP's gate and up projections: ``SIBLINGS``) are packed side by side as one weight and run as
one product, whose column slices each of them returns: one call in place of three, and wider
products, for the same result bit for bit (measured with the embedded SmolLM2-135M at 1 thread on
the Intel CPU with AMX: those five linears of 30 layers 6-9% faster at 11 to 35 rows, even at 242).

The packed copy costs as much memory as the linear weights (540 MB for SmolLM2-135M in float32),
so it is made only when that is at most half the memory available. Only float32 and bfloat16 CPU
models are packed; anything else runs unchanged.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
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


# Names of sibling linears in one parent module that read the same input, in the order the
# forward calls them (Llama, Mistral, Qwen2 and the like): packed and run as one product.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

# first module of a product -> (stamp of its members' weights and biases when packed, packed
# weight, bias of the product). Kept off the modules so that ``deepcopy`` and ``state_dict`` never
# meet the opaque packed tensor.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packing_supported(model, products: list[list[torch.nn.Linear]] | None = None) -> bool:
    """float32 or bfloat16 weights on a CPU with oneDNN (the cases measured to gain; bfloat16
    decode steps: 100 -> 80 ms at 4 rows, 148 -> 126 ms at 16), and room for the packed copy:
    at most half the memory available now (a large model on a small machine stays unpacked).
    ``products``: the products the caller will pack (default: the model's, siblings merged)."""
    if not (torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()):
        return False
    weight = next(model.parameters(), None)
    if weight is None or weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return False
    products = _products(model, _linears(model)) if products is None else products
    needed = sum(m.weight.numel() * m.weight.element_size() for group in products
                 if group[0] not in _PACKED for m in group)
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


def _products(model, linears: list[torch.nn.Linear]) -> list[list[torch.nn.Linear]]:
    """``linears`` as the products they run in: each group of ``SIBLINGS`` found in one parent
    (same input width, dtype and device; all with a bias or none) as one, every other alone."""
    grouped = {}
    for parent in model.modules():
        for names in SIBLINGS:
            members = [getattr(parent, name, None) for name in names]
            if all(type(m) is torch.nn.Linear for m in members) and _stackable(members):
                grouped.update({id(m): members for m in members})
    products, seen = [], set()
    for module in linears:
        group = grouped.get(id(module), [module])
        if id(group[0]) not in seen:
            seen.add(id(group[0]))
            products.append(group)
    return products


def _stackable(members: list[torch.nn.Linear]) -> bool:
    first = members[0].weight
    return (len({id(m) for m in members}) == len(members)
            and all(m.in_features == members[0].in_features and m.weight.dtype == first.dtype
                    and m.weight.device == first.device for m in members)
            and len({m.bias is None for m in members}) == 1)


# The token rows a forward really needs, set by the fast engine around a decode step whose rows
# are padded to one width (``only_rows``): pads' outputs are never read, so the linears skip them.
# Per thread: two threads may run the model at once.
_NEEDED = threading.local()


@contextlib.contextmanager
def only_rows(needed: torch.Tensor | None, total: int):
    """Within the block, a packed linear whose input holds ``total`` token rows computes only the
    rows in ``needed`` (flat indices) and one of the others, whose output every other row gets:
    the pads of a decode step, which nothing reads (a real row's output, not garbage, since a
    pad's K and V enter the cache where masked slots still meet sdpa's product with V).
    ``needed`` None, or every row: all rows as usual."""
    before = vars(_NEEDED).copy()
    if needed is not None and len(needed) < total:
        pads = torch.ones(total, dtype=torch.bool, device=needed.device).index_fill_(0, needed, False)
        first_pad = pads.nonzero()[0]
        _NEEDED.rows, _NEEDED.total = torch.cat([needed, first_pad]), total
        # each row's place in the product: its own for the needed ones, the one pad's for pads
        _NEEDED.spread = torch.full((total,), len(needed), dtype=torch.long, device=needed.device).index_copy_(
            0, needed, torch.arange(len(needed), device=needed.device))
    try:
        yield
    finally:
        vars(_NEEDED).clear()
        vars(_NEEDED).update(before)


def _packed_forward(first: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``_product``, on the rows ``only_rows`` names when it is on and ``x`` holds its token rows."""
    rows = getattr(_NEEDED, "rows", None)
    if rows is None or x.numel() != _NEEDED.total * x.shape[-1]:
        return _product(first, x)
    # index_select both ways: 2-4x faster than index_copy_ into a new tensor (1 and 2 threads)
    part = _product(first, x.reshape(-1, x.shape[-1]).index_select(0, rows))
    return part.index_select(0, _NEEDED.spread).view(*x.shape[:-1], part.shape[-1])


def _product(first: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The product of ``x`` with the packed weight held for ``first`` (alone, or its siblings side
    by side), or with ``first``'s own weight on MKL for fewer than ``min_rows()`` rows."""
    if x.numel() < min_rows() * x.shape[-1]:
        return torch.nn.functional.linear(x, first.weight, first.bias)
    _, weight, bias = _PACKED[first]
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _SharedProduct:
    """The product a group of siblings last computed, for the input it was computed from: the
    first member computes it (all members' columns), the others take their columns of it when
    called with that same, unchanged input (per thread: two threads may run the model at once)."""

    def __init__(self, members: list[torch.nn.Linear]):
        self.members, self.held = members, threading.local()
        self.ends = [sum(m.out_features for m in members[:i + 1]) for i in range(len(members))]

    def forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        held, member = self.held, self.members[index]
        if index == 0:
            out = _packed_forward(member, x)
            if out.shape[-1] != self.ends[-1]:  # fewer than min_rows: its own product on MKL
                held.input = held.output = None
                return out
            held.input, held.version, held.output = x, _version(x), out
        elif getattr(held, "input", None) is x and _version(x) == held.version:
            out = held.output
        else:  # another input than the first member's: its own product
            held.input = held.output = None
            return torch.nn.functional.linear(x, member.weight, member.bias)
        if index == len(self.members) - 1:
            held.input = held.output = None  # nothing held between forwards
        return out[..., self.ends[index - 1] if index else 0:self.ends[index]]


def _version(x: torch.Tensor) -> int:
    # An in-place change between the members' calls bumps it; inference tensors keep no count
    # (the siblings of ``SIBLINGS`` are called one after the other on the same input).
    return -1 if x.is_inference() else x._version


def _stamp(tensor: torch.Tensor | None) -> tuple[int, int]:
    # In-place updates (an optimizer step) bump ``_version``; a new tensor has a new address.
    return (0, 0) if tensor is None else (tensor.data_ptr(), tensor._version)


def pack(model) -> int:
    """Make a packed copy of every ``nn.Linear`` weight of ``model`` (held in ``_PACKED``; siblings
    that read the same input side by side, as one), again only for weights that changed since
    (training between generations); returns how many products were packed now."""
    return _pack(_products(model, _linears(model)))


def _pack(products: list[list[torch.nn.Linear]]) -> int:
    packed = 0
    with torch.no_grad():
        for group in products:
            for module in group[1:]:  # held alone before: now part of the first member's product
                _PACKED.pop(module, None)
            stamp = tuple(_stamp(t) for m in group for t in (m.weight, m.bias))
            held = _PACKED.get(group[0])
            # a product packed the other way (alone or merged) has another number of rows
            if held is None or held[0] != stamp or held[1].shape[0] != sum(m.out_features for m in group):
                weight = torch.cat([m.weight.detach() for m in group]) if len(group) > 1 else group[0].weight.detach()
                bias = group[0].bias
                if bias is not None and len(group) > 1:
                    bias = torch.cat([m.bias.detach() for m in group])
                _PACKED[group[0]] = (stamp, torch.ops.mkldnn._reorder_linear_weight(weight, None), bias)
                packed += 1
    return packed


@contextlib.contextmanager
def packed_linears(model, enabled: bool = True, merge_siblings: bool = True):
    """Within the block, ``model``'s linears of ``min_rows()`` or more rows run on packed weights
    (packed on first use), siblings that read the same input as one product when
    ``merge_siblings``. A no-op when ``enabled`` is False or ``packing_supported`` is not; yields which."""
    if not enabled:
        yield False
        return
    linears = _linears(model)
    products = _products(model, linears) if merge_siblings else [[m] for m in linears]
    if not packing_supported(model, products):
        yield False
        return
    _pack(products)
    for group in products:
        if len(group) == 1:
            group[0].forward = functools.partial(_packed_forward, group[0])
            continue
        shared = _SharedProduct(group)
        for index, module in enumerate(group):
            module.forward = functools.partial(shared.forward, index)
    try:
        yield True
    finally:
        for module in linears:
            module.__dict__.pop("forward", None)
