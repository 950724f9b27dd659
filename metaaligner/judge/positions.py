"""Position swapping for pairwise judging, seeded per item so results never depend on row order.

The candidate (aligned or original answer) sits in position 1 or 2 next to the golden answer. The
position comes from ``random.Random(f"swap|{item_id}|{seed}")``, where ``item_id`` is a hash of the
row's query and golden answer: the same row gets the same position for every target (aligned and
original), objective and policy, so Table 2's difference compares like with like.
"""
from __future__ import annotations

import hashlib
import random

WIN, TIE, LOSS, INVALID = "win", "tie", "loss", "invalid"
VERDICTS = (WIN, TIE, LOSS, INVALID)


def item_id(query: str, golden: str) -> str:
    """A stable id of a (query, golden) pair: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(f"{query}\x1f{golden}".encode("utf-8")).hexdigest()[:16]


def candidate_position(item: str, seed: int) -> int:
    """1 or 2: where the candidate sits for this item and seed."""
    return random.Random(f"swap|{item}|{seed}").choice((1, 2))


def place(candidate: str, golden: str, position: int) -> tuple[str, str]:
    """(output1, output2) with the candidate in ``position``."""
    if position == 1:
        return candidate, golden
    if position == 2:
        return golden, candidate
    raise ValueError(f"position must be 1 or 2, got {position!r}")


def unplace(output1: str, output2: str, position: int) -> tuple[str, str]:
    """The inverse of ``place``: (candidate, golden)."""
    if position == 1:
        return output1, output2
    if position == 2:
        return output2, output1
    raise ValueError(f"position must be 1 or 2, got {position!r}")


def verdict_from_choice(choice: int | None, position: int) -> str:
    """The judge chose response ``choice`` (1, 2, or 0 for a tie); the candidate sat in ``position``."""
    if choice is None or choice not in (0, 1, 2):
        return INVALID
    if choice == 0:
        return TIE
    return WIN if choice == position else LOSS


def combine_orders(first: str, swapped: str) -> str:
    """MT-Bench convention for a pair judged in both orders: a win (loss) only when both orders say
    so; any disagreement is a tie; invalid if either order is invalid."""
    if INVALID in (first, swapped):
        return INVALID
    if first == swapped:
        return first
    return TIE


def released_verdict(reply: str | None, position: int) -> str:
    """The released ``*_GPT4_score.py`` reading of a reply, checks in this order: the candidate's
    position digit anywhere in the reply -> win; else '0' anywhere -> tie; else loss. Never invalid.

    The order is the precedence: "10" with the candidate at 1 is a win; "Response 1 is better than
    Response 2" is a win wherever the candidate sat (both digits occur); "I cannot decide" and an
    empty reply are losses.
    """
    if position not in (1, 2):
        raise ValueError(f"position must be 1 or 2, got {position!r}")
    text = reply or ""
    if str(position) in text:
        return WIN
    if "0" in text:
        return TIE
    return LOSS
