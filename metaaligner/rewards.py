"""Stage 1 of the dataset pipeline: preference rows and reward scorers (filled in below)."""
from __future__ import annotations

import math
from typing import Any

from metaaligner.errors import DataError

ASSISTANT_CUE = "\n\nAssistant:"


def split_transcript(text: str) -> tuple[str, str] | None:
    """An HH-RLHF transcript -> (prompt, response): the prompt is everything up to and including the
    last ``\\n\\nAssistant:``, the response the text after it, stripped. ``None`` without that cue."""
    cut = text.rfind(ASSISTANT_CUE)
    if cut < 0:
        return None
    end = cut + len(ASSISTANT_CUE)
    return text[:end], text[end:].strip()
