"""The ``rule`` scorer family of stage 1: a computable check as a reward (``--scorer rule``).

A rule reward is minus the number of violations of its objective's check
(``metaaligner.editbench.checks``): 0 when the response meets the objective, -k when it breaks it k
times. No model, no tokenizer, no length filter: every row with two non-empty responses is scored.
"""
from __future__ import annotations

from metaaligner.editbench import checks
from metaaligner.errors import MetaAlignerError

RULE = "rule"
# Reward names -> check keys (the release's reward spellings are accepted too).
RULE_ALIASES = {"harmless": "harmlessness", "repetition": "repeat", "length": "len"}


def rule_key(name: str) -> str:
    key = RULE_ALIASES.get(name, name).split(":")[-1]
    if key not in checks.CHECKS:
        raise MetaAlignerError(f"no rule check for reward {name!r}; rule checks: {', '.join(checks.CHECKS)}")
    return key


class RuleScorer:
    """Scores a response by its objective's check: ``-violations``."""

    kind = RULE
    tokenizer = None
    max_length = 0

    def __init__(self, name: str, key: str | None = None):
        self.name = name
        self.key = rule_key(key or name)
        self.model_name = f"rule:{self.key}"
        self.description = f"checks.{checks.CHECKS[self.key].__name__}"

    def score(self, prompt: str, response: str) -> float:
        return float(-checks.violations(self.key, response))
