"""Property-based tests (hypothesis) of the IO and prompt layer on arbitrary Unicode text.

- Every aligner prompt holds the question and the answer verbatim, at the places the template says,
  for every shipped template and both modes (so braces, pipes, quotes, newlines, RTL marks, emoji ...
  never change what the aligner sees).
- A table written by ``metaaligner.io`` (CSV, CSV.gz, JSONL, and the resumable writer used by every
  stage) re-reads to exactly the same cells.
"""
from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from metaaligner.aligner.inference import build_prompts
from metaaligner.io import ResumableWriter, read_records, write_csv, write_jsonl
from metaaligner.registry.templates import TEMPLATES, join_aspects, render

# Unicode text as it can appear in a UTF-8 file: every code point except lone surrogates (not encodable).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)
# Plus the characters that break naive formats: separators, quotes, braces, template-looking tokens.
TRICKY = st.lists(st.sampled_from(["{answer}", "{question}", "{aspects}", " | Edit: ", "\"", ",", "\n", "\r\n", "\r",
                                   "\t", "{", "}", "%s", "\\", "\x00", "\ufeff", "\u202e", "😀", "nan", "NaN", " "]),
                  max_size=6).map("".join)
CELL = st.one_of(TEXT, TRICKY, st.tuples(TEXT, TRICKY, TEXT).map("".join))
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _split_template(text: str) -> tuple[str, str, str, str]:
    """The template's literal text around {aspects}, {question}, {answer} (in that order)."""
    head, rest = text.split("{aspects}")
    mid1, rest = rest.split("{question}")
    mid2, tail = rest.split("{answer}")
    return head, mid1, mid2, tail


@PROPS
@given(question=CELL, answer=CELL, aspects=st.lists(CELL.filter(bool), min_size=1, max_size=3),
       name=st.sampled_from(sorted(n for n in TEMPLATES if "{aspects}" in TEMPLATES[n].better)),  # not Aligner-7B's
       mode=st.sampled_from(["better", "equal"]))
def test_prompt_round_trips_question_and_answer(question, answer, aspects, name, mode):
    prompt = render(name, question, answer, aspects, mode=mode)
    head, mid1, mid2, tail = _split_template(TEMPLATES[name].text(mode))
    joined = join_aspects(aspects)
    # read the pieces back by position: what the aligner sees is exactly the user's text
    assert prompt.startswith(head + joined + mid1)
    rest = prompt[len(head + joined + mid1):]
    assert rest[:len(question)] == question
    rest = rest[len(question):]
    assert rest.startswith(mid2)
    rest = rest[len(mid2):]
    assert rest[:len(answer)] == answer
    assert rest[len(answer):] == tail


@PROPS
@given(rows=st.lists(st.tuples(CELL, CELL.filter(lambda s: s.strip() != "")), min_size=1, max_size=4))
def test_build_prompts_keeps_non_empty_answers_verbatim(rows):
    """The batch builder used by the aligner (and the Python API) inserts answers unchanged; only
    empty/whitespace-only answers become '' (never 'nan')."""
    questions, answers = [q for q, _ in rows], [a for _, a in rows]
    prompts = build_prompts("hh-rlhf", questions, answers, ["Harmlessness: be kind"])
    for q, a, p in zip(questions, answers, prompts):
        assert p == render("hh-rlhf", q, a, ["Harmlessness: be kind"])
        assert f"| Context: {q} | Answer: {a} | Edit: " in p


COLUMNS = ["query", "goldens", "generated_text"]
ROWS = st.lists(st.fixed_dictionaries({c: CELL for c in COLUMNS}), min_size=1, max_size=8)


@PROPS
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".jsonl"])
@given(rows=ROWS)
def test_table_written_by_io_rereads_to_the_same_cells(tmp_path, suffix, rows):
    path = tmp_path / f"t{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    else:
        write_csv(path, rows, COLUMNS)
    assert read_records(path) == rows


@PROPS
@given(rows=ROWS, cut=st.integers(min_value=0, max_value=8))
def test_resumable_writer_rereads_to_the_same_cells(tmp_path, rows, cut):
    """The writer every stage uses for --resume: rows appended in two runs, then finished into a CSV,
    re-read cell for cell and in input order."""
    path = tmp_path / "out.csv"
    keyed = [{"row_id": i, **row} for i, row in enumerate(rows)]
    first = ResumableWriter(path, COLUMNS, resume=False)
    first.append(keyed[:cut])
    first.close()
    second = ResumableWriter(path, COLUMNS, resume=True)
    assert second.done == set(range(min(cut, len(rows))))
    second.append([r for r in keyed if r["row_id"] not in second.done])
    second.finish(order=list(range(len(rows))))
    assert read_records(path) == rows
    assert not second.partial.exists()


def test_tricky_alphabet_is_covered():
    """The strategies do reach the characters that broke the released code (commas, quotes, newlines,
    template tokens): a fixed example through both layers."""
    text = 'a,"b"\n{answer} | Edit: \r\nc\ufeff😀'
    assert render("imhi", text, text, [text]).count(text) == 3
    assert set(string.punctuation) & set(text)
