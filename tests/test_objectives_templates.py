"""Every objective description and template, byte for byte (the released checkpoints were trained on
these exact strings), plus user objectives and the one-line errors."""
from __future__ import annotations

import pytest

from metaaligner.errors import MetaAlignerError
from metaaligner.registry.objectives import ObjectiveRegistry, build_registry
from metaaligner.registry.templates import TEMPLATES, render, self_refine_prompt

EXPECTED = {
    "hh-rlhf": {
        "harmlessness": "Harmlessness: The response should avoid content that is offensive, discriminatory, or harmful",
        "helpfulness": "Helpfulness: The response should provide useful resources and suggestions to the user",
        "humour": "Humour: The response should be cheerful and amusing",
    },
    "ultrafeedback": {
        "instruction_following": "Instruction following: the response should follow the instructions of the query",
        "honesty": "Honesty: the response should not tell lies",
        "truthfulness": "Truthfulness: the response should actively making known all the full truth of a matter",
        "helpfulness": "Helpfulness: the response should provide useful resources and suggestions to the user",
        "speci": "Specificity: the response should refer to facts and details and avoid vague arguments.",
        "factual": "Factuality: the response should be factually correct and avoid hallucinated statements.",
        "read": "Readability: the response should be easy to read and understand, not too technical for laymen.",
        "fair": "Fairness: the response should avoid biased or one-sided arguments and consider different points of view.",
        "repeat": "Repetition: the response should avoid repetitive statements of one point.",
        "len": "Length: the response should be concise and avoid redundant content.",
    },
    "imhi": {
        "correct": "Correctness: the explanations should make correct predictions",
        "informative": "Informative: the response should express clear logic and provide consistent evidence",
        "professional": "Professional: the response should provide evidence with high quality and reliability",
    },
    # ours, not the release's: the edit bench's held-out objectives (each has a computed check)
    "edit-bench": {
        "disclaimer": "Disclaimer: the response should end with the sentence 'Please consult a professional.'",
        "no_caps": "Capitalisation: the response should not write any word in capital letters only.",
        "ask_back": "Engagement: the response should end with a question to the user.",
        "word_limit": "Brevity: the response should be at most 25 words long.",
    },
}
UNSEEN = {"speci", "factual", "read", "fair", "repeat", "len", "disclaimer", "no_caps", "ask_back", "word_limit"}

Q = "How do I {bake} bread?"  # braces must pass through untouched
A = "Mix flour and water. {answer}"


def test_every_builtin_objective_byte_exact():
    registry = ObjectiveRegistry.builtin()
    for group, entries in EXPECTED.items():
        assert [o.key for o in registry.group(group)] == list(entries)  # order kept: score order
        for key, text in entries.items():
            obj = registry.get(key, group)
            assert obj.description.encode("utf-8") == text.encode("utf-8")
            assert obj.name == text.split(":")[0]
            assert obj.unseen == (key in UNSEEN)
    assert sorted(registry.groups()) == ["edit-bench", "hh-rlhf", "imhi", "ultrafeedback"]


def test_hh_rlhf_template_byte_exact():
    aspects = [EXPECTED["hh-rlhf"]["harmlessness"], EXPECTED["hh-rlhf"]["humour"]]
    expected = ("You are an assistant to human. You will be provided with a context and an answer. Consider the "
                "context, then edit the answer to improve it considering these aspects: Harmlessness: The response "
                "should avoid content that is offensive, discriminatory, or harmful; Humour: The response should be "
                "cheerful and amusing | Context: How do I {bake} bread? | Answer: Mix flour and water. {answer} | Edit: ")
    assert render("hh-rlhf", Q, A, aspects) == expected


def test_ultrafeedback_template_byte_exact():
    aspects = [EXPECTED["ultrafeedback"]["truthfulness"], EXPECTED["ultrafeedback"]["len"]]
    expected = ("You are an assistant to human. You will be provided with a query and an answer. Consider the "
                "query, then edit the answer to improve it considering these aspects: Truthfulness: the response "
                "should actively making known all the full truth of a matter; Length: the response should be concise "
                "and avoid redundant content. | Query: How do I {bake} bread? | Answer: Mix flour and water. {answer} | Edit: ")
    assert render("ultrafeedback", Q, A, aspects) == expected


def test_imhi_template_byte_exact():
    aspects = [EXPECTED["imhi"]["correct"], EXPECTED["imhi"]["informative"], EXPECTED["imhi"]["professional"]]
    expected = ('Edit the following Question-Answer pair to make it better considering these aspects "Correctness: '
                'the explanations should make correct predictions; Informative: the response should express clear '
                'logic and provide consistent evidence; Professional: the response should provide evidence with high '
                'quality and reliability" | Question: How do I {bake} bread? | Answer: Mix flour and water. {answer} | Edit: ')
    assert render("imhi", Q, A, aspects) == expected


@pytest.mark.parametrize("mode", ["better", "equal"])
def test_paper_template_byte_exact(mode):
    expected = (f"Edit the following Question-Answer pair to make it {mode} considering the following objectives "
                "Honesty: the response should not tell lies | Question: How do I {bake} bread? | "
                "Answer: Mix flour and water. {answer} | Edit:")
    assert render("paper", Q, A, [EXPECTED["ultrafeedback"]["honesty"]], mode=mode) == expected


def test_aspects_keep_user_order_and_empty_answer_is_empty():
    registry = ObjectiveRegistry.builtin()
    descs = registry.descriptions("humour,harmlessness", "hh-rlhf")
    prompt = render("hh-rlhf", "Q?", "", descs)
    assert "aspects: Humour: The response should be cheerful and amusing; Harmlessness:" in prompt
    assert prompt.endswith("| Context: Q? | Answer:  | Edit: ")
    assert set(TEMPLATES) == {"hh-rlhf", "ultrafeedback", "imhi", "paper", "aligner"}


def test_user_objectives_from_file_and_inline(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("safety: 'Safety: the response should not endanger anyone'\n"
                    "brevity:\n  description: 'Brevity: the response should be short'\n  name: Short\n")
    registry = build_registry(str(path), ["kind=Kindness: the response should be kind, warm"])
    assert registry.descriptions("safety,kind,brevity") == [
        "Safety: the response should not endanger anyone", "Kindness: the response should be kind, warm",
        "Brevity: the response should be short"]
    assert registry.get("brevity").name == "Short"
    # hh-rlhf and ultrafeedback both define helpfulness: a group (or group:key) disambiguates
    assert registry.get("helpfulness", "ultrafeedback").description.startswith("Helpfulness: the response")
    assert registry.get("hh-rlhf:helpfulness").description.startswith("Helpfulness: The response")


def test_unknown_and_ambiguous_keys_are_one_line_errors():
    registry = ObjectiveRegistry.builtin()
    with pytest.raises(MetaAlignerError) as err:
        registry.resolve("harmlessness,politeness", "hh-rlhf")
    message = str(err.value)
    assert "\n" not in message and message.startswith("unknown objective 'politeness'; known keys: ")
    assert "hh-rlhf:humour" in message and "ultrafeedback:speci" in message
    with pytest.raises(MetaAlignerError, match="ambiguous"):
        registry.get("helpfulness")
    with pytest.raises(MetaAlignerError, match="key=description"):
        build_registry(None, ["no-equals-sign"])


def test_aligner_7b_template_byte_exact():
    # Ji et al. 2024's published template: no objectives in it, one form for both modes
    expected = ("BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
                "harmless: How do I {bake} bread? | Mix flour and water. {answer} ASSISTANT:")
    for mode in ("better", "equal"):
        assert render("aligner", Q, A, [EXPECTED["hh-rlhf"]["humour"]], mode=mode) == expected


def test_self_refine_prompt_byte_exact():
    expected = ("Here is a question and an answer you wrote earlier. Revise the answer so that it better meets these "
                "objectives: Honesty: the response should not tell lies; Length: the response should be concise and "
                "avoid redundant content.\n\nQuestion: How do I {bake} bread?\n\nAnswer: Mix flour and water. {answer}"
                "\n\nReply with the revised answer only.")
    assert self_refine_prompt(Q, A, [EXPECTED["ultrafeedback"]["honesty"], EXPECTED["ultrafeedback"]["len"]]) == expected
    with pytest.raises(MetaAlignerError, match="needs at least one objective"):
        self_refine_prompt(Q, A, [])


# The spellings of the released README (`humor`), reward names (`harmless`, `helpful`) and judges
# (UltraFeedback_GPT4_score.py: `specificity` ... `length`; UltraFeedback_GPT4_rate.py: `IF`, `truthful`).
ALIASES = {("hh-rlhf", "humor"): "humour", ("hh-rlhf", "harmless"): "harmlessness", ("hh-rlhf", "helpful"): "helpfulness",
           ("ultrafeedback", "specificity"): "speci", ("ultrafeedback", "factuality"): "factual",
           ("ultrafeedback", "readability"): "read", ("ultrafeedback", "fairness"): "fair",
           ("ultrafeedback", "repetition"): "repeat", ("ultrafeedback", "length"): "len",
           ("ultrafeedback", "IF"): "instruction_following", ("ultrafeedback", "truthful"): "truthfulness",
           ("ultrafeedback", "helpful"): "helpfulness"}


def test_release_spellings_are_aliases_of_our_keys():
    registry = ObjectiveRegistry.builtin()
    for (group, alias), key in ALIASES.items():
        obj = registry.get(alias, group)
        assert (obj.group, obj.key, obj.description) == (group, key, EXPECTED[group][key])
        assert registry.get(f"{group}:{alias}").key == key
    # unique aliases resolve without a group; "helpful" exists in two groups
    assert [o.key for o in registry.resolve("humor,specificity,length")] == ["humour", "speci", "len"]
    with pytest.raises(MetaAlignerError, match=r"^objective 'helpful' is ambiguous; name one of: "
                                               r"hh-rlhf:helpfulness, ultrafeedback:helpfulness$"):
        registry.get("helpful")
    # aliases are not keys: the registry lists only ours, and a user objective of that name wins
    assert {"humor", "length"}.isdisjoint(registry.keys())
    mine = build_registry(None, ["length=Length: at most three sentences"])
    assert mine.get("length", "ultrafeedback").description == "Length: at most three sentences"
