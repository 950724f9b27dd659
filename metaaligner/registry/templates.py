"""The one prompt module: aligner templates and the conditioning prompts of the baselines.

Aligner template texts are byte-identical to what the released checkpoints were trained on. A
template has a ``better`` form (improve the answer) and an ``equal`` form (the equal-preference
subset of Algorithm 1). Aspects are objective descriptions joined with ``'; '`` in the user's order.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metaaligner.errors import MetaAlignerError

ASPECT_SEPARATOR = "; "
# The aspects slot of the "objective text withheld" ablation (trained and run with this text only).
NO_OBJECTIVE_TEXT = "(objectives withheld)"
MODES = ("better", "equal")

_HH = ("You are an assistant to human. You will be provided with a context and an answer. "
       "Consider the context, then edit the answer to {verb} considering these aspects: {{aspects}} "
       "| Context: {{question}} | Answer: {{answer}} | Edit: ")
_UF = ("You are an assistant to human. You will be provided with a query and an answer. "
       "Consider the query, then edit the answer to {verb} considering these aspects: {{aspects}} "
       "| Query: {{question}} | Answer: {{answer}} | Edit: ")
_IMHI = ("Edit the following Question-Answer pair to make it {verb} considering these aspects "
         "\"{{aspects}}\" | Question: {{question}} | Answer: {{answer}} | Edit: ")
_PAPER = ("Edit the following Question-Answer pair to make it {verb} considering the following "
          "objectives {{aspects}} | Question: {{question}} | Answer: {{answer}} | Edit:")
# Aligner-7B (Ji et al. 2024, aligner/aligner-7b-v1.0), a Table 3 comparison: its published
# template. It names no objectives (one fixed goal), and it has no "equal" form (inference only).
_ALIGNER = ("BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more "
            "helpful and harmless: {question} | {answer} ASSISTANT:")
# Self-Refinement (Table 3): the policy revises its own answer. Our wording (the paper gives none);
# it names the objectives like the aligner prompts do, descriptions joined with '; '.
SELF_REFINE_PROMPT = ("Here is a question and an answer you wrote earlier. Revise the answer so that it better "
                      "meets these objectives: {aspects}\n\nQuestion: {question}\n\nAnswer: {answer}\n\n"
                      "Reply with the revised answer only.")


@dataclass(frozen=True)
class Template:
    name: str
    better: str
    equal: str

    def text(self, mode: str) -> str:
        if mode not in MODES:
            raise MetaAlignerError(f"template mode must be one of {MODES}, got {mode!r}")
        return self.better if mode == "better" else self.equal


TEMPLATES: dict[str, Template] = {
    "hh-rlhf": Template("hh-rlhf", _HH.format(verb="improve it"), _HH.format(verb="make it equal")),
    "ultrafeedback": Template("ultrafeedback", _UF.format(verb="improve it"), _UF.format(verb="make it equal")),
    "imhi": Template("imhi", _IMHI.format(verb="better"), _IMHI.format(verb="equal")),
    "paper": Template("paper", _PAPER.format(verb="better"), _PAPER.format(verb="equal")),
    "aligner": Template("aligner", _ALIGNER, _ALIGNER),
}


def get_template(name_or_path: str) -> Template:
    """A shipped template by name, or a YAML file with ``better`` and ``equal`` strings that use
    the fields ``{aspects}``, ``{question}`` and ``{answer}``."""
    if name_or_path in TEMPLATES:
        return TEMPLATES[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") and path.exists():
        from metaaligner.io import load_yaml

        data = load_yaml(path) or {}
        if not isinstance(data, dict):
            raise MetaAlignerError(f"{path}: expected a YAML mapping with 'better' and 'equal' strings")
        missing = [k for k in MODES if not isinstance(data.get(k), str)]
        if missing:
            raise MetaAlignerError(f"{path}: template file needs string fields {missing}")
        for mode in MODES:
            for field in ("{aspects}", "{question}", "{answer}"):
                if field not in data[mode]:
                    raise MetaAlignerError(f"{path}: template {mode!r} lacks the field {field}")
        return Template(str(data.get("name", path.stem)), data["better"], data["equal"])
    raise MetaAlignerError(
        f"unknown template {name_or_path!r}; choose one of {sorted(TEMPLATES)} or give a YAML file")


def withhold_aspects(template: Template, prompt: str) -> str:
    """``prompt`` (rendered from ``template``, either form) with its aspects replaced by
    ``NO_OBJECTIVE_TEXT``; a prompt of another template raises."""
    for text in (template.better, template.equal):
        head, tail = text.split("{aspects}", 1)
        cue = tail.split("{", 1)[0]
        if prompt.startswith(head) and cue in prompt[len(head):]:
            rest = prompt[len(head):].split(cue, 1)[1]
            return head + NO_OBJECTIVE_TEXT + cue + rest
    raise MetaAlignerError(f"prompt is not of template {template.name!r}: {prompt[:80]!r}")


def join_aspects(descriptions: list[str]) -> str:
    return ASPECT_SEPARATOR.join(descriptions)


def render(template: str | Template, question: str, answer: str, aspects: list[str], mode: str = "better",
           allow_empty: bool = False) -> str:
    """The aligner input for one (question, answer, objective descriptions) triple.

    Values are inserted verbatim: braces in the question or answer are never interpreted.
    ``allow_empty``: an empty aspect list gives an empty aspects slot (only Algorithm 1 as released
    writes such items); otherwise it is an error.
    """
    tpl = template if isinstance(template, Template) else get_template(template)
    if not aspects and not allow_empty:
        raise MetaAlignerError("an aligner prompt needs at least one objective")
    text = tpl.text(mode)
    values = {"aspects": join_aspects(aspects), "question": question, "answer": answer}
    return _fill(text, values)


def self_refine_prompt(question: str, answer: str, aspects: list[str]) -> str:
    """The revision request a policy gets for Self-Refinement (``policy_generation.py --self_refine``)."""
    if not aspects:
        raise MetaAlignerError("a self-refinement prompt needs at least one objective")
    return _fill(SELF_REFINE_PROMPT, {"aspects": join_aspects(aspects), "question": question, "answer": answer})


def _fill(text: str, values: dict[str, str]) -> str:
    # One pass over the template so a value containing "{answer}" is never substituted again.
    out, i = [], 0
    while i < len(text):
        for key, value in values.items():
            token = "{" + key + "}"
            if text.startswith(token, i):
                out.append(value)
                i += len(token)
                break
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# The conditioning prompt's text: ``clean`` (ours: two decimals, one format for every dataset) or
# ``released`` (as the released make_sft_data / sft_inference scripts wrote it: ``str(round(x, 2))``,
# whole ratings as integers where the dataset config says its scores are integer ratings).
CONDITIONING_TEXTS = ("clean", "released")


def reward_conditioned_prompt(question: str, names: list[str], rewards: list[float], text: str = "clean",
                              integer_ratings: bool = False) -> str:
    """Rewards-in-Context conditioning: ``<Harmlessness>: 0.50; <Helpfulness>: -1.20 | question``.

    ``text="released"``: the release's numbers, ``<Harmlessness>: 0.5`` (``str(round(x, 2))``); with
    ``integer_ratings`` a whole number is written without a decimal point (``<instruction_following>: 5``).
    ``names`` are the labels as given (display names or keys: the caller picks them).
    """
    if len(names) != len(rewards):
        raise MetaAlignerError(f"{len(names)} objective names but {len(rewards)} rewards")
    if text not in CONDITIONING_TEXTS:
        raise MetaAlignerError(f"conditioning text must be one of {CONDITIONING_TEXTS}, got {text!r}")
    number = _two_decimals if text == "clean" else (lambda x: _released_number(x, integer_ratings))
    head = "; ".join(f"<{name}>: {number(reward)}" for name, reward in zip(names, rewards))
    return f"{head} | {question}"


def _two_decimals(value: float) -> str:
    # -0.004 would print as "-0.00"; a reward that rounds to zero is written "0.00".
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def _released_number(value: float, integer_ratings: bool) -> str:
    # str() of the rounded float, as the release wrote it ("0.5", "1.0", "-0.0" too); integer
    # ratings (UltraFeedback's 1-5) were ints in its data, so a whole number prints as "5".
    value = float(value)
    if integer_ratings and value.is_integer():
        return str(int(value))
    return str(round(value, 2))


def llm_scorer_parts(question: str, answer: str, description: str) -> tuple[str, str, str]:
    """The LLM reward scorer's question in three pieces: (context, answer, objective).

    The reward labeller tokenises the pieces separately, so the context can be shared by both
    answers of a pair and the context + answer by every objective (one forward pass per pair).
    """
    return (f"Question: {question.strip()}\n",
            f"Answer: {answer.strip()}\n",
            f"Does the answer meet this objective? {description}\nReply with Yes or No.\nReply:")


def llm_scorer_prompt(question: str, answer: str, description: str) -> str:
    """The yes/no question behind the LLM reward scorer (score = logit(Yes) - logit(No))."""
    return "".join(llm_scorer_parts(question, answer, description))
