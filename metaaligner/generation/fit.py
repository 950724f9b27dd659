"""``--long_prompts shorten``: fit a prompt into the context by cutting its fields in the middle.

A prompt whose tokens plus ``max_new_tokens`` exceed the model's context is rebuilt from shorter
fields: the first field (the aligner's answer) is cut in the middle as little as needed, then, if that
is not enough, the next (the question). The template's own text, i.e. the instruction, the objectives
and the trailing ``Edit:`` cue, is never cut. Cutting the left end instead, as a plain truncation
does, removes the instruction and the objectives first.

``--long_prompts whole`` (the paper profile) feeds every prompt whole, as the release did.
"""
from __future__ import annotations

from typing import Callable, Sequence

MARKER = "[...]"  # stands where a field's middle was cut out


def cut_middle(text: str, keep: int) -> str:
    """``text`` with ``keep`` of its characters left, half from each end, and MARKER between them."""
    if keep >= len(text):
        return text
    keep = max(0, keep)
    head = keep - keep // 2
    tail = text[len(text) - keep // 2:] if keep // 2 else ""
    return f"{text[:head].rstrip()} {MARKER} {tail.lstrip()}".strip()


def fit_fields(render: Callable[[list[str]], str], fields: Sequence[str], count: Callable[[str], int],
               budget: int) -> tuple[str, bool]:
    """``(prompt, shortened)``: ``render(fields)`` when its ``count`` is within ``budget``; else the
    fields are cut in the middle in their order, each as little as needed (binary search on the
    characters kept), until it fits. When even empty fields do not fit (the template alone is over
    the budget) the prompt with every field cut comes back, still over the budget."""
    fields = [str(f) for f in fields]
    prompt = render(fields)
    if count(prompt) <= budget:
        return prompt, False
    for i, original in enumerate(fields):
        fields[i] = cut_middle(original, 0)
        if count(render(fields)) > budget:
            continue  # not enough even without this field: cut the next one too
        fits, over = 0, len(original)  # keeping `fits` characters fits, keeping `over` does not
        while over - fits > 1:
            mid = (fits + over) // 2
            fields[i] = cut_middle(original, mid)
            if count(render(fields)) <= budget:
                fits = mid
            else:
                over = mid
        fields[i] = cut_middle(original, fits)
        return render(fields), True
    return render(fields), True


def prompt_budget(generator, params) -> int | None:
    """Prompt tokens a backend can take with ``params.max_new_tokens`` left (None: no limit known, or
    ``long_prompts == "whole"``). Backends without a tokenizer (openai) have none."""
    if params.long_prompts == "whole" or not hasattr(generator, "prompt_budget"):
        return None
    return generator.prompt_budget(params)


def fit_prompts(generator, params, rows: Sequence[Sequence[str]],
                render: Callable[[list[str]], str]) -> tuple[list[str], list[bool]]:
    """Each row's fields rendered and fitted to the backend's budget: ``(prompts, shortened)``."""
    budget = prompt_budget(generator, params)
    if budget is None:
        return [render(list(r)) for r in rows], [False] * len(rows)
    pairs = [fit_fields(render, r, generator.count_tokens, budget) for r in rows]
    return [p for p, _ in pairs], [s for _, s in pairs]
