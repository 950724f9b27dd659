"""A generation backend for tests: returns fixed outputs in order, one per prompt."""
from __future__ import annotations


class Scripted:
    """A backend that returns fixed outputs in order."""

    name = "scripted"

    def __init__(self, outputs):
        self.outputs = list(outputs)

    def generate(self, prompts, params, progress=False):
        out, self.outputs = self.outputs[: len(prompts)], self.outputs[len(prompts):]
        return out
