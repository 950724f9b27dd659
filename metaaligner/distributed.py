"""How work is split, in one place: which rows a process handles (``shard_range``, with the ranks
from ``dist_env``), the merge of per-process results back into input order (``in_input_order``),
and the length-sorted batches inside one process (``length_sorted_batches``). Used by reward
labelling (``dataset.rewards``) and SePO token scoring (``methods.sepo``)."""
from __future__ import annotations

import os
from typing import Mapping, TypeVar

T = TypeVar("T")


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the variables ``torchrun``/``accelerate launch`` set."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def shard_range(n_rows: int, rank: int, world: int) -> range:
    """Contiguous row slice of ``rank`` among ``world`` processes (covers 0..n-1 exactly once)."""
    return range(rank * n_rows // world, (rank + 1) * n_rows // world)


def in_input_order(by_row: Mapping[int, T], n_rows: int) -> tuple[list[T], list[int]]:
    """(the results of rows 0..n-1 that are present, in order; the row ids that are missing)."""
    return [by_row[i] for i in range(n_rows) if i in by_row], [i for i in range(n_rows) if i not in by_row]


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory errors show early;
    equal lengths keep input order)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s:s + batch_size] for s in range(0, len(order), max(1, batch_size))]
