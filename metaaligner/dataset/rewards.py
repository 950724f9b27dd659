"""Stage 1's rewards: which reward is scored by which model, and the scorers that load them.

- The reward registry ``REWARDS`` (name -> released classifier + objective key) and
  ``resolve_rewards`` (names + overrides -> ``RewardSpec`` list); ``build_scorers`` loads them. The
  scorer kinds live one per module: ``classifier_scorer`` (``pair``: sequence classifier on the
  (prompt, response) text pair, score = the single logit; ``response``: classifier on the response
  alone, score = logit of label 1), ``llm_scorer`` (``llm``: any causal LM; score = logit("Yes") -
  logit("No") after ``templates.llm_scorer_prompt``; the embedded SmolLM2 by default, so everything
  runs offline) and ``rule_scorer`` (``rule``: minus a check's violations). Their shared contract
  is ``scoring``; this module re-exports its names and the scorer classes.
- ``score_sequences`` (``scoring``): batched forward passes, sequences sorted by length and padded per batch.
- The labelling itself (input rows, one process's shard, merge, rounding and normalisation) is
  ``labelling``; its names are re-exported here, so ``from metaaligner.dataset.rewards import
  label_shard`` keeps working.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from metaaligner.dataset.classifier_scorer import ClassifierScorer, load_classifier
from metaaligner.dataset.labelling import (  # noqa: F401  (re-exported: the labelling's names, as before)
    ASSISTANT_CUE,
    EMPTY_RESPONSE,
    NAN_SCORE,
    NO_ASSISTANT_TURN,
    OK,
    TOO_LONG,
    TOO_SHORT,
    PreferenceRow,
    RewardStat,
    finalise,
    label_rows,
    label_shard,
    load_preference_rows,
    merge_shards,
    normalise_scores,
    output_columns,
    preference_row_hash,
    remove_shards,
    scorer_info,
    shard_files,
    shard_fingerprint,
    shard_path,
    split_transcript,
    stats_path_for,
)
from metaaligner.dataset.llm_scorer import LLMScorer, SharedLMScorer
from metaaligner.dataset.scoring import (  # noqa: F401  (re-exported: the stage-1 names in one place)
    KINDS,
    LLM,
    PAIR,
    RESPONSE,
    RULE,
    RewardSpec,
    Scorer,
    pad_right,
    score_sequences,
    transcript,
)
from metaaligner.errors import MetaAlignerError

# ---------------------------------------------------------------- the reward registry

@dataclass(frozen=True)
class RegisteredReward:
    name: str
    classifier: str            # the released reward model (hub name)
    input: str                 # PAIR or RESPONSE
    label: int | None          # None: the single logit; else the logit of this label
    objective: str             # objective key whose description the LLM scorer asks about


REWARDS: dict[str, RegisteredReward] = {
    "harmless": RegisteredReward("harmless", "Ray2333/gpt2-large-harmless-reward_model", PAIR, None,
                                 "hh-rlhf:harmlessness"),
    "helpful": RegisteredReward("helpful", "Ray2333/gpt2-large-helpful-reward_model", PAIR, None,
                                "hh-rlhf:helpfulness"),
    "humor": RegisteredReward("humor", "mohameddhiab/humor-no-humor", RESPONSE, 1, "hh-rlhf:humour"),
}
ALIASES = {"harmlessness": "harmless", "helpfulness": "helpful", "humour": "humor"}


def parse_overrides(specs: Iterable[str]) -> dict[str, tuple[str | None, str]]:
    """``name=path`` or ``name=pair:path`` / ``name=response:path`` -> {name: (kind or None, path)}."""
    out = {}
    for spec in specs:
        if "=" not in spec:
            raise MetaAlignerError(f"--reward_models expects name=path (or name=pair:path, name=response:path), "
                                   f"got {spec!r}")
        name, target = (s.strip() for s in spec.split("=", 1))
        kind = None
        for prefix in (PAIR, RESPONSE):
            if target.startswith(prefix + ":"):
                kind, target = prefix, target[len(prefix) + 1:]
        if not name or not target:
            raise MetaAlignerError(f"--reward_models: empty name or path in {spec!r}")
        out[ALIASES.get(name, name)] = (kind, target)
    return out


def resolve_rewards(names: list[str], scorer: str = LLM, model: str | None = None,
                    overrides: dict[str, tuple[str | None, str]] | None = None, registry=None,
                    objective_group: str | None = "hh-rlhf") -> list[RewardSpec]:
    """Reward names (in output-column order) -> specs.

    ``scorer="classifier"``: the registered classifier (hub name) unless overridden by a path.
    ``scorer="llm"``: the LLM yes/no scorer with ``model`` for every name without an override; a
    name is a registered reward (its objective's description) or any objective key of the registry.
    An override ``name=path`` always makes that name a classifier at ``path``.
    """
    from metaaligner.registry.objectives import ObjectiveRegistry

    if scorer not in ("llm", "classifier", RULE):
        raise MetaAlignerError(f"--scorer must be llm, classifier or rule, got {scorer!r}")
    if not names:
        raise MetaAlignerError("--reward_names is empty")
    overrides = overrides or {}
    registry = registry or ObjectiveRegistry.builtin()
    specs, seen = [], set()
    for raw in names:
        name = ALIASES.get(raw, raw)
        if name in seen:
            raise MetaAlignerError(f"reward {raw!r} is named twice in --reward_names")
        seen.add(name)
        registered = REWARDS.get(name)
        if scorer == RULE and name not in overrides:
            from metaaligner.dataset.rule_scorer import rule_key

            specs.append(RewardSpec(name, RULE, None, None, rule_key(raw)))
        elif name in overrides:
            kind, path = overrides[name]
            kind = kind or (registered.input if registered else PAIR)
            label = registered.label if registered and kind == registered.input else (1 if kind == RESPONSE else None)
            specs.append(RewardSpec(name, kind, path, label))
        elif scorer == "classifier":
            if registered is None:
                raise MetaAlignerError(f"no classifier registered for reward {raw!r}; registered: "
                                       f"{', '.join(sorted(REWARDS))}; give one with --reward_models {raw}=PATH "
                                       "or use --scorer llm")
            specs.append(RewardSpec(name, registered.input, registered.classifier, registered.label))
        else:
            key = registered.objective if registered else raw
            description = registry.get(key, objective_group).description
            specs.append(RewardSpec(name, LLM, model, None, description))
    return specs


# ---------------------------------------------------------------- scorers

def build_scorers(specs: list[RewardSpec], device: str | None = None, dtype: str | None = None,
                  max_length: int = 1024, chat_template: str = "auto", prefix_sharing: bool = True) -> list[Scorer]:
    """Load each distinct model once (several LLM-scored rewards share one model) on ``device``."""
    from metaaligner.models import load_causal_lm, pick_device, quiet_transformers

    device = pick_device(device)
    judges: dict[str | None, SharedLMScorer] = {}
    classifiers: dict[str, tuple] = {}
    scorers: list[Scorer] = []
    for spec in specs:
        if spec.kind == RULE:
            from metaaligner.dataset.rule_scorer import RuleScorer

            scorers.append(RuleScorer(spec.name, spec.description))
        elif spec.kind == LLM:
            if spec.model not in judges:
                with quiet_transformers():
                    model, tokenizer, dev = load_causal_lm(spec.model, device=device, dtype=dtype)
                use_chat = {"auto": bool(getattr(tokenizer, "chat_template", None)), "yes": True, "no": False}
                if chat_template not in use_chat:
                    raise MetaAlignerError(f"--chat_template must be auto, yes or no, got {chat_template!r}")
                if use_chat[chat_template] and not getattr(tokenizer, "chat_template", None):
                    raise MetaAlignerError(f"{spec.model}: the tokenizer has no chat template; use --chat_template no")
                name = str(spec.model) if spec.model else "embedded:SmolLM2-135M-Instruct"
                judges[spec.model] = SharedLMScorer(model, tokenizer, dev, name, _max_len(tokenizer, max_length),
                                                    use_chat[chat_template], prefix_sharing)
            scorers.append(LLMScorer(spec, judges[spec.model]))
        else:
            if spec.model not in classifiers:
                classifiers[spec.model] = load_classifier(spec.model, device, dtype)
            model, tokenizer = classifiers[spec.model]
            scorers.append(ClassifierScorer(spec, model, tokenizer, device, _max_len(tokenizer, max_length)))
    return scorers


def _max_len(tokenizer, max_length: int) -> int:
    limit = getattr(tokenizer, "model_max_length", None) or max_length
    return int(min(limit, max_length))
