"""Fake generation backends for tests: no model, deterministic text."""
from __future__ import annotations


class EchoGenerator:
    """A backend answering ``aligned[<answer>]`` for an aligner prompt (the text between ``| Answer: ``
    and `` | Edit:``) that records every prompt; raises KeyboardInterrupt on call ``fail_on_call``
    (what a kill looks like from inside)."""

    name = "fake"

    def __init__(self, fail_on_call: int | None = None):
        self.prompts: list[str] = []
        self.calls = 0
        self.fail_on_call = fail_on_call

    def generate(self, prompts, params, progress=False):
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise KeyboardInterrupt
        self.prompts += prompts
        return [f"aligned[{p.split('| Answer: ')[1].split(' | Edit:')[0]}]" for p in prompts]


class Scripted:
    """A backend that returns fixed outputs in order, one per prompt."""

    name = "scripted"

    def __init__(self, outputs):
        self.outputs = list(outputs)

    def generate(self, prompts, params, progress=False):
        out, self.outputs = self.outputs[: len(prompts)], self.outputs[len(prompts):]
        return out
