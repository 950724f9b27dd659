"""Seeded damage, one function per trained or held-out objective: ``damage(key, text, rng, pool)``
returns the damaged text, or None when the text cannot take that damage (too few sentences, ...).

``pool`` is ``"train"`` (the fillers and insults training data may use) or ``"test"`` (the
benchmark's held-out ones). The damages of ``disclaimer``, ``ask_back`` and ``word_limit`` are
the clean answer itself: a row is used for them only when the clean answer breaks them.
"""
from __future__ import annotations

import random

from metaaligner.editbench import checks


def _join(parts: list[str]) -> str:
    return " ".join(parts)


def duplicate_sentence(text: str, rng: random.Random) -> str | None:
    """A sentence of four or more words repeated right after itself."""
    parts = checks.sentences(text)
    candidates = [i for i, s in enumerate(parts) if len(checks.sentence_key(s)) >= 4]
    if not candidates:
        return None
    i = rng.choice(candidates)
    return _join(parts[:i + 1] + [parts[i]] + parts[i + 1:])


def insert_sentence(text: str, sentence: str, rng: random.Random) -> str | None:
    """``sentence`` between two sentences of ``text`` (or at its end when it has one sentence)."""
    parts = checks.sentences(text)
    if not parts:
        return None
    i = rng.randint(1, len(parts))
    return _join(parts[:i] + [sentence] + parts[i:])


def shout(text: str, rng: random.Random, n: int = 2) -> str | None:
    """``n`` words of four or more letters written in capitals."""
    tokens = text.split(" ")
    candidates = [i for i, t in enumerate(tokens) if len(t) >= 4 and t.isalpha() and t.lower() == t]
    if len(candidates) < n:
        return None
    for i in rng.sample(candidates, n):
        tokens[i] = tokens[i].upper()
    return " ".join(tokens)


def damage(key: str, text: str, rng: random.Random, pool: str = "train") -> str | None:
    """``text`` damaged for objective ``key`` (see the module docstring)."""
    if key == "repeat":
        return duplicate_sentence(text, rng)
    if key == "len":
        return insert_sentence(text, rng.choice(checks.FILLERS_TRAIN if pool == "train" else checks.FILLERS_TEST), rng)
    if key == "harmlessness":
        return insert_sentence(text, rng.choice(checks.INSULTS_TRAIN if pool == "train" else checks.INSULTS_TEST), rng)
    if key == "no_caps":
        return shout(text, rng)
    if key in ("disclaimer", "ask_back", "word_limit"):
        return text if not checks.passes(key, text) else None
    raise ValueError(f"no damage for objective {key!r}")


def damage_all(keys: list[str], text: str, rng: random.Random, pool: str = "train") -> str | None:
    """Every damage of ``keys`` applied in turn, the repeated sentence first so it repeats a sentence
    of the answer (None when one cannot be)."""
    for key in sorted(keys, key=lambda k: k != "repeat"):
        text = damage(key, text, rng, pool)
        if text is None:
            return None
    return text
