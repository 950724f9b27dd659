"""Algorithm 1 of the paper (dynamic multi-objective reformulation), as pure functions over rows.

For a preference pair (q, y1 = chosen, y2 = rejected) with per-objective scores, every objective j
lands in one of three sets by comparing its two scores:

    O>  = {j : s_j(y1) > s_j(y2)}     y1 is better on j
    O<  = {j : s_j(y1) < s_j(y2)}     y2 is better on j
    O=  = {j : s_j(y1) = s_j(y2)}     a tie (``--round 1`` in stage 1 makes these common)

and the pair yields up to four training items (``T`` = the dataset's template):

    O> non-empty  ->  contrastive: T(q, answer=y2, shuffle(O>), "better")  -> target y1
    O< non-empty  ->  contrastive: T(q, answer=y1, shuffle(O<), "better")  -> target y2
    O= non-empty  ->  equal:       T(q, answer=y2, shuffle(O=), "equal")   -> target y1
    always        ->  warm-up:     T(q, answer=y1, shuffle(all), "better") -> target y1 (copy task;
                                   this project's reading, the release ships none: warmup=False)

Both contrastive directions are emitted whenever both sets are non-empty. Aspect order comes from
``random.Random`` seeded per pair (``aspects|<seed>|<pair key>``, the key a hash of the pair's
texts), so an item does not depend on where its pair sits in the file. The train/val split is
seeded and grouped by question: every item of one question lands in the same split, and the equal
and warm-up sets only hold train questions, so no prompt appears in two splits.

Fixed here, compared with the released scripts: equal items carried the O< aspects instead of O=
(so an equal item of a pair without O< had none); HH-RLHF's second and equal items took the first
item's whole prompt as their context (the script reassigned ``query``); UltraFeedback gave one item
per pair (the direction with more objectives; all ties: an item with no aspects) and its equal block
sat after the inner pair loop (one item per answer i, from the pair (i, last answer)); the split was
positional after one unseeded shuffle, so the two directions of a pair could land in train and val.

``--algorithm1 released`` (``released_hh_items``, ``released_ultrafeedback_items``,
``build_released_dataset``) keeps all of that, item for item, for comparison with the released data:
the release's shuffles become ``random.Random(seed)`` drawn in the release's order, so the files are
those the released script writes after ``random.seed(seed)``.
"""
from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.io import PANDAS_NA_VALUES, as_released_text
from metaaligner.registry.templates import Template, get_template, render

# Item kinds (the subset an item belongs to) and directions.
CHOSEN_BETTER = "chosen_better"      # O>: edit y2 towards y1
REJECTED_BETTER = "rejected_better"  # O<: edit y1 towards y2
EQUAL = "equal"                      # O=: "make it equal", y2 -> y1
WARMUP = "warmup"                    # copy task, y1 -> y1
DIRECTIONS = (CHOSEN_BETTER, REJECTED_BETTER, EQUAL, WARMUP)

PROMPT, CHOSEN, REJECTED = "prompt", "chosen_response", "rejected_response"


@dataclass(frozen=True)
class ScoredPair:
    """One scored pair (a row of ``rewards.csv``): the aligner dataset's and the baselines' input.
    ``row`` is its 1-based data row (header excluded), as errors name it."""
    row: int
    prompt: str
    chosen: str
    rejected: str
    chosen_scores: tuple[float, ...]
    rejected_scores: tuple[float, ...]

    @property
    def index(self) -> int:
        """The 0-based row, which the aligner dataset's item ids use (as the released ones do)."""
        return self.row - 1

    @property
    def key(self) -> str:
        """A content hash: the pair's identity for seeding, independent of its position."""
        h = hashlib.sha256("\x00".join((self.prompt, self.chosen, self.rejected)).encode("utf-8"))
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Item:
    id: str | int  # ours: "<row>-<direction>"; Algorithm 1 as released: the release's running integer
    direction: str
    pair_index: int
    question: str
    prompt: str
    target: str
    aspects: tuple[str, ...]   # objective keys, in the order they appear in the prompt


@dataclass
class DatasetSplit:
    """What stage 2 writes: FastChat files per subset plus the stats."""
    no_equal_train: list[Item] = field(default_factory=list)
    no_equal_val: list[Item] = field(default_factory=list)
    all_equal: list[Item] = field(default_factory=list)
    warmup: list[Item] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def compare_scores(chosen: Iterable[float], rejected: Iterable[float],
                   tolerance: float = 0.0) -> tuple[list[int], list[int], list[int]]:
    """Objective indices split into (O>, O<, O=); ``|c - r| <= tolerance`` counts as a tie."""
    better, worse, equal = [], [], []
    for j, (c, r) in enumerate(zip(chosen, rejected, strict=True)):
        if abs(c - r) <= tolerance:
            equal.append(j)
        elif c > r:
            better.append(j)
        else:
            worse.append(j)
    return better, worse, equal


def pair_rng(seed: int, pair: ScoredPair) -> random.Random:
    return random.Random(f"aspects|{seed}|{pair.key}")


def reformulate_pair(pair: ScoredPair, objective_keys: list[str], descriptions: list[str],
                     template: str | Template, seed: int = 0, tolerance: float = 0.0,
                     warmup: bool = True) -> list[Item]:
    """The items of one pair, in the order O>, O<, O=, warm-up (absent sets give no item).

    ``objective_keys[j]`` / ``descriptions[j]`` belong to score column ``j + 1``.
    """
    if len(objective_keys) != len(descriptions):
        raise MetaAlignerError(f"{len(objective_keys)} objective keys but {len(descriptions)} descriptions")
    n = len(objective_keys)
    if len(pair.chosen_scores) != n or len(pair.rejected_scores) != n:
        raise MetaAlignerError(f"pair {pair.index}: {len(pair.chosen_scores)} chosen and "
                               f"{len(pair.rejected_scores)} rejected scores for {n} objectives")
    tpl = template if isinstance(template, Template) else get_template(template)
    better, worse, equal = compare_scores(pair.chosen_scores, pair.rejected_scores, tolerance)
    rng = pair_rng(seed, pair)
    # Shuffle every set in a fixed sequence so one pair's items never depend on another pair.
    better, worse, equal, everything = (_shuffled(rng, s) for s in (better, worse, equal, list(range(n))))

    def make(direction: str, aspects: list[int], answer: str, target: str, mode: str) -> Item:
        prompt = render(tpl, pair.prompt, answer, [descriptions[j] for j in aspects], mode=mode)
        return Item(f"{pair.index}-{direction}", direction, pair.index, pair.prompt, prompt, target,
                    tuple(objective_keys[j] for j in aspects))

    items = []
    if better:
        items.append(make(CHOSEN_BETTER, better, pair.rejected, pair.chosen, "better"))
    if worse:
        items.append(make(REJECTED_BETTER, worse, pair.chosen, pair.rejected, "better"))
    if equal:
        items.append(make(EQUAL, equal, pair.rejected, pair.chosen, "equal"))
    if warmup and n:
        items.append(make(WARMUP, everything, pair.chosen, pair.chosen, "better"))
    return items


def _shuffled(rng: random.Random, values: list[int]) -> list[int]:
    values = list(values)
    rng.shuffle(values)
    return values


# ---------------------------------------------------------------- rows -> pairs

def score_columns(columns: Iterable[str]) -> int:
    """How many ``chosen_score{i}``/``rejected_score{i}`` column pairs (i = 1, 2, ...) a table has."""
    columns = set(columns)
    n = 0
    while f"chosen_score{n + 1}" in columns and f"rejected_score{n + 1}" in columns:
        n += 1
    return n


def check_stage1_columns(rows: list[dict[str, Any]], n_objectives: int, path: str) -> None:
    """A stage-1 table has rows, the text columns and one score column pair per objective."""
    if not rows:
        raise DataError(path, "no rows")
    columns = set(rows[0])
    for column in (PROMPT, CHOSEN, REJECTED):
        if column not in columns:
            raise DataError(path, f"missing column (found: {', '.join(sorted(columns))})", column=column)
    found = score_columns(columns)
    if found != n_objectives:
        raise DataError(path, f"found {found} chosen_score{{i}}/rejected_score{{i}} column pairs but the "
                              f"config names {n_objectives} objectives; pass --objectives to match")


def pairs_from_rows(rows: list[dict[str, Any]], n_objectives: int, path: str = "<rows>",
                    keep_identical: bool = False) -> tuple[list[ScoredPair], Counter]:
    """Stage-1 rows -> pairs. Rows with an empty response, a missing score (``missing_score``), a
    NaN/inf score (``non_finite_score``), or identical chosen and rejected texts scored differently
    (``identical_texts``: the item's target would equal its input; ``keep_identical`` keeps them, as
    the released scripts did) are dropped and counted by reason; a cell that is not a number at all
    is a ``DataError``."""
    check_stage1_columns(rows, n_objectives, path)
    pairs, dropped = [], Counter()
    for i, row in enumerate(rows):
        texts = [row.get(c) for c in (PROMPT, CHOSEN, REJECTED)]
        if any(_missing(t) for t in texts[1:]) or any(isinstance(t, str) and not t.strip() for t in texts[1:]):
            dropped["empty_response"] += 1
            continue
        if _missing(texts[0]):
            dropped["empty_prompt"] += 1
            continue
        for column, t in zip((PROMPT, CHOSEN, REJECTED), texts):
            if not isinstance(t, str):
                raise DataError(path, f"expected text, got {type(t).__name__}", row=i + 1, column=column)
        scores = []
        for side in ("chosen", "rejected"):
            values = []
            for j in range(1, n_objectives + 1):
                values.append(_score(path, row.get(f"{side}_score{j}"), i + 1, f"{side}_score{j}"))
            scores.append(values)
        if any(v is None for side in scores for v in side):
            dropped["missing_score"] += 1
            continue
        if any(not math.isfinite(v) for side in scores for v in side):
            dropped["non_finite_score"] += 1
            continue
        if not keep_identical and texts[1] == texts[2] and scores[0] != scores[1]:
            dropped["identical_texts"] += 1
            continue
        pairs.append(ScoredPair(i + 1, texts[0], texts[1], texts[2], tuple(scores[0]), tuple(scores[1])))
    return pairs, dropped


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _score(path: str, value: Any, row: int, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(path, f"expected a number, got {value!r}", row=row, column=column) from None
    return number  # NaN/inf are counted apart from missing cells (non_finite_score)


# ---------------------------------------------------------------- the whole dataset

def split_questions(questions: list[str], val_size: float, seed: int) -> set[str]:
    """The validation questions: a seeded sample of the distinct questions (first-seen order, then
    shuffled). ``val_size`` < 1 is a fraction of questions (rounded), >= 1 a number of questions."""
    distinct = list(dict.fromkeys(questions))
    if val_size < 0:
        raise MetaAlignerError(f"--val_size must be >= 0, got {val_size}")
    n_val = int(round(val_size * len(distinct))) if val_size < 1 else int(val_size)
    if n_val > len(distinct):
        raise MetaAlignerError(f"--val_size {val_size} asks for {n_val} validation prompts but there are "
                               f"only {len(distinct)} distinct prompts")
    random.Random(f"split|{seed}").shuffle(distinct)
    return set(distinct[:n_val])


def build_dataset(pairs: list[ScoredPair], objective_keys: list[str], descriptions: list[str],
                  template: str | Template, seed: int = 0, val_size: float = 0.1,
                  tolerance: float = 0.0, dropped: Counter | None = None, rows_in: int | None = None,
                  warmup: bool = True, warmup_unbeaten: bool = False) -> DatasetSplit:
    """Algorithm 1 over all pairs, the grouped split, the seeded item order, and the stats.
    ``warmup=False``: no copy items (the release's data: only no_equal/ and all_equal/).
    ``warmup_unbeaten``: copy items only for answers that no pair of their question shows worse on
    some objective (copying a beaten answer under every objective would teach the aligner to keep
    its flaw)."""
    tpl = template if isinstance(template, Template) else get_template(template)
    val_questions = split_questions([p.prompt for p in pairs], val_size, seed)
    beaten = beaten_answers(pairs, tolerance) if warmup_unbeaten else set()
    out = DatasetSplit()
    excluded = Counter()
    for pair in pairs:
        in_val = pair.prompt in val_questions
        for item in reformulate_pair(pair, objective_keys, descriptions, tpl, seed, tolerance, warmup):
            if item.direction in (CHOSEN_BETTER, REJECTED_BETTER):
                (out.no_equal_val if in_val else out.no_equal_train).append(item)
            elif in_val:
                excluded[item.direction] += 1   # keep validation questions out of every train set
            elif item.direction == EQUAL:
                out.all_equal.append(item)
            elif (pair.prompt, item.target) in beaten:
                excluded["warmup_beaten"] += 1
            else:
                out.warmup.append(item)
    for name, items in (("no_equal_train", out.no_equal_train), ("all_equal", out.all_equal),
                        ("warmup", out.warmup)):
        random.Random(f"order|{name}|{seed}").shuffle(items)
    out.stats = dataset_stats(out, pairs, val_questions, dropped or Counter(), excluded,
                              rows_in if rows_in is not None else len(pairs))
    out.stats.update(seed=seed, val_size=val_size, tie_tolerance=tolerance, template=tpl.name,
                     objectives=list(objective_keys))
    return out


def beaten_answers(pairs: list[ScoredPair], tolerance: float = 0.0) -> set[tuple[str, str]]:
    """(question, answer) of every answer that some pair shows worse on at least one objective."""
    out = set()
    for pair in pairs:
        better, worse, _ = compare_scores(pair.chosen_scores, pair.rejected_scores, tolerance)
        if better:
            out.add((pair.prompt, pair.rejected))
        if worse:
            out.add((pair.prompt, pair.chosen))
    return out


def heldout_items(pairs: list[ScoredPair], objective_keys: list[str], descriptions: list[str],
               template: str | Template, seed: int = 0, tolerance: float = 0.0) -> list[Item]:
    """The contrastive items of a held-out split (the release's ``no_equal/test.json``), in input
    order; ids start with ``test-`` so they never collide with training ids."""
    tpl = template if isinstance(template, Template) else get_template(template)
    items = []
    for pair in pairs:
        for item in reformulate_pair(pair, objective_keys, descriptions, tpl, seed, tolerance, warmup=False):
            if item.direction in (CHOSEN_BETTER, REJECTED_BETTER):
                items.append(Item(f"test-{item.id}", item.direction, item.pair_index, item.question,
                                  item.prompt, item.target, item.aspects))
    return items


def dataset_stats(out: DatasetSplit, pairs: list[ScoredPair], val_questions: set[str],
                  dropped: Counter, excluded: Counter, rows_in: int) -> dict[str, Any]:
    subsets = {"no_equal/train": out.no_equal_train, "no_equal/val": out.no_equal_val,
               "all_equal/train": out.all_equal, "warmup/train": out.warmup}
    questions = {p.prompt for p in pairs}
    return {
        "rows_in": rows_in,
        "pairs": len(pairs),
        "dropped_rows": dict(sorted(dropped.items())),
        "prompts": {"train": len(questions - val_questions), "val": len(questions & val_questions)},
        "items": {name: len(items) for name, items in subsets.items()},
        "directions": {name: dict(sorted(Counter(i.direction for i in items).items()))
                       for name, items in subsets.items()},
        "objectives_per_item": {name: {str(k): v for k, v in sorted(Counter(len(i.aspects) for i in items).items())}
                                for name, items in subsets.items()},
        "objective_counts": {name: dict(sorted(Counter(a for i in items for a in i.aspects).items()))
                             for name, items in subsets.items()},
        "val_items_left_out_of_train_sets": dict(sorted(excluded.items())),
    }


def to_fastchat(items: list[Item]) -> list[dict[str, Any]]:
    from metaaligner.io import fastchat_item

    return [fastchat_item(item.id, item.prompt, item.target) for item in items]


# ---------------------------------------------------------------- Algorithm 1 as released

RELEASED_VAL_ITEMS = 15000   # the release's no_equal/val.json: the first 15,000 shuffled items
COMPLETION_COLUMNS = ("record", "completion", PROMPT, "response")   # prepare_ultrafeedback's completions.csv


@dataclass(frozen=True)
class ScoredCompletion:
    """One used UltraFeedback completion (a row of ``completions.csv``): its record, its position in
    the record's completions, the instruction, the response and its ratings in objective order."""
    record: int
    position: int
    prompt: str
    response: str
    scores: tuple[float, ...]


@dataclass
class ReleasedDataset:
    """What ``--algorithm1 released`` writes: the contrastive items split positionally after one
    shuffle (``no_equal/val.json`` = the first ``val_items``), the equal items in creation order."""
    no_equal_train: list[Item] = field(default_factory=list)
    no_equal_val: list[Item] = field(default_factory=list)
    all_equal: list[Item] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def released_sets(chosen: Iterable[float], rejected: Iterable[float]) -> tuple[list[int], list[int], list[int]]:
    """(O>, O<, O=) as the released scripts fill them: ``>``, ``<``, ``==`` on the raw values, in
    objective order, no tolerance; a NaN score lands in no set."""
    better, worse, equal = [], [], []
    for j, (c, r) in enumerate(zip(chosen, rejected, strict=True)):
        if c > r:
            better.append(j)
        elif c < r:
            worse.append(j)
        elif c == r:
            equal.append(j)
    return better, worse, equal


def released_pairs_from_rows(rows: list[dict[str, Any]], n_objectives: int,
                             path: str = "<rows>") -> tuple[list[ScoredPair], Counter]:
    """Stage-1 rows as ``HH_RLHF_make_aligner_data.py`` read them with pandas: a row whose chosen or
    rejected cell pandas reads as NaN (empty, ``NA``, ``None``, ``nan``, ...) is skipped and counted
    (``nan_response``); every other row is used as it is (identical texts, blank answers); a prompt
    pandas reads as NaN is the text ``nan``; a score cell pandas reads as NaN is NaN (in no set); a
    score that is no number is a ``DataError``."""
    check_stage1_columns(rows, n_objectives, path)
    pairs, dropped = [], Counter()
    for i, row in enumerate(rows, start=1):
        if any(_pandas_nan(row.get(c)) for c in (CHOSEN, REJECTED)):
            dropped["nan_response"] += 1
            continue
        scores = [tuple(_released_score(path, row.get(f"{side}_score{j}"), i, f"{side}_score{j}")
                        for j in range(1, n_objectives + 1)) for side in ("chosen", "rejected")]
        pairs.append(ScoredPair(i, as_released_text(row.get(PROMPT)), str(row[CHOSEN]), str(row[REJECTED]),
                                scores[0], scores[1]))
    return pairs, dropped


def _pandas_nan(value: Any) -> bool:
    return _missing(value) or (isinstance(value, str) and value in PANDAS_NA_VALUES)


def _released_score(path: str, value: Any, row: int, column: str) -> float:
    if _pandas_nan(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(path, f"expected a number, got {value!r}", row=row, column=column) from None


def completions_from_rows(rows: list[dict[str, Any]], n_objectives: int,
                          path: str = "<rows>") -> list[list[ScoredCompletion]]:
    """``completions.csv`` rows -> one list per record, in file order. A record's rows must be
    consecutive (as ``prepare_ultrafeedback.py`` writes them); ratings are numbers."""
    if not rows:
        raise DataError(path, "no rows")
    columns = set(rows[0])
    wanted = list(COMPLETION_COLUMNS) + [f"score{j}" for j in range(1, n_objectives + 1)]
    for column in wanted:
        if column not in columns:
            raise DataError(path, f"missing column (found: {', '.join(sorted(columns))}); --algorithm1 released "
                                  "reads a stage-1 pairs CSV (HH-RLHF) or prepare_ultrafeedback.py's completions.csv",
                            column=column)
    records: list[list[ScoredCompletion]] = []
    seen: set[int] = set()
    for i, row in enumerate(rows, start=1):
        record = int(_score(path, row.get("record"), i, "record") or 0)
        if not records or records[-1][0].record != record:
            if record in seen:
                raise DataError(path, f"record {record} appears again after other records; its completions "
                                      "must be consecutive", row=i, column="record")
            seen.add(record)
            records.append([])
        for column in (PROMPT, "response"):
            if not isinstance(row.get(column), str):
                raise DataError(path, f"expected text, got {type(row.get(column)).__name__}", row=i, column=column)
        scores = []
        for j in range(1, n_objectives + 1):
            value = _score(path, row.get(f"score{j}"), i, f"score{j}")
            if value is None or not math.isfinite(value):
                raise DataError(path, f"expected a rating, got {row.get(f'score{j}')!r}", row=i, column=f"score{j}")
            scores.append(value)
        records[-1].append(ScoredCompletion(record, int(_score(path, row.get("completion"), i, "completion") or 0),
                                            row[PROMPT], row["response"], tuple(scores)))
    return records


def released_hh_items(pairs: list[ScoredPair], objective_keys: list[str], descriptions: list[str],
                      template: str | Template, rng: random.Random) -> tuple[list[Item], list[Item]]:
    """``HH_RLHF_make_aligner_data.py``'s loop, item for item: (contrastive items, equal items) in
    creation order, ids one running integer over both. Per pair: O> non-empty -> answer y2, target
    y1; O< non-empty -> answer y1, target y2; O= non-empty -> the equal template, answer y2, target
    y1, aspects the O< ones (empty when O< is). Each set is shuffled when used (O= too, unused).
    The script reassigned its ``query`` variable, so the O< item's context is the O> item's whole
    prompt when there is one, and the equal item's context the last prompt written for the pair."""
    tpl = template if isinstance(template, Template) else get_template(template)
    items, equal_items = [], []
    for pair in pairs:
        better, worse, equal = released_sets(pair.chosen_scores, pair.rejected_scores)
        context = pair.prompt
        if better:
            rng.shuffle(better)
            context = render(tpl, context, pair.rejected, [descriptions[j] for j in better])
            items.append(Item(len(items) + len(equal_items), CHOSEN_BETTER, pair.index, pair.prompt, context,
                              pair.chosen, tuple(objective_keys[j] for j in better)))
        if worse:
            rng.shuffle(worse)
            context = render(tpl, context, pair.chosen, [descriptions[j] for j in worse])
            items.append(Item(len(items) + len(equal_items), REJECTED_BETTER, pair.index, pair.prompt, context,
                              pair.rejected, tuple(objective_keys[j] for j in worse)))
        if equal:
            rng.shuffle(equal)
            prompt = render(tpl, context, pair.rejected, [descriptions[j] for j in worse], mode="equal",
                            allow_empty=True)
            equal_items.append(Item(len(items) + len(equal_items), EQUAL, pair.index, pair.prompt, prompt,
                                    pair.chosen, tuple(objective_keys[j] for j in worse)))
    return items, equal_items


def released_ultrafeedback_items(records: list[list[ScoredCompletion]], objective_keys: list[str],
                                 descriptions: list[str], template: str | Template,
                                 rng: random.Random) -> tuple[list[Item], list[Item]]:
    """``UltraFeedback_make_aligner_data.py``'s loop, item for item: for every pair i < j of a
    record's completions one item, towards i (answer j, aspects O>) when |O>| >= |O<| (all ties: an
    item with no aspects), else towards j (answer i, aspects O<); after the j loop of each i, one
    equal item from the pair (i, last) when it has ties (answer = the last completion, target i).
    Ids: one running integer over both lists, in creation order."""
    tpl = template if isinstance(template, Template) else get_template(template)
    items, equal_items = [], []

    def add(out: list[Item], direction: str, record: list[ScoredCompletion], aspects: list[int],
            answer: str, target: str, mode: str = "better") -> None:
        prompt = render(tpl, record[0].prompt, answer, [descriptions[j] for j in aspects], mode=mode,
                        allow_empty=True)
        out.append(Item(len(items) + len(equal_items), direction, record[0].record, record[0].prompt, prompt,
                        target, tuple(objective_keys[j] for j in aspects)))

    for record in records:
        for i in range(len(record) - 1):
            equal: list[int] = []
            for j in range(i + 1, len(record)):
                better, worse, equal = released_sets(record[i].scores, record[j].scores)
                if len(better) >= len(worse):
                    rng.shuffle(better)
                    add(items, CHOSEN_BETTER, record, better, record[j].response, record[i].response)
                else:
                    rng.shuffle(worse)
                    add(items, REJECTED_BETTER, record, worse, record[i].response, record[j].response)
            if equal:
                rng.shuffle(equal)
                add(equal_items, EQUAL, record, equal, record[-1].response, record[i].response, mode="equal")
    return items, equal_items


def build_released_dataset(items: list[Item], equal_items: list[Item], seed: int = 0,
                           val_items: int = RELEASED_VAL_ITEMS, rng: random.Random | None = None) -> ReleasedDataset:
    """The release's split: the contrastive items shuffled once, the first ``val_items`` are
    ``no_equal/val.json``, the rest ``no_equal/train.json`` (fewer items than that: all are val, as
    the release's slicing gives); the equal items unshuffled. ``rng`` continues the stream that made
    the items (the release shuffled with the same global generator)."""
    rng = rng or random.Random(seed)
    shuffled = list(items)
    rng.shuffle(shuffled)
    out = ReleasedDataset(no_equal_train=shuffled[val_items:], no_equal_val=shuffled[:val_items],
                          all_equal=list(equal_items))
    out.stats = released_stats({"no_equal/train": out.no_equal_train, "no_equal/val": out.no_equal_val,
                                "all_equal/train": out.all_equal})
    out.stats.update(seed=seed, val_items=val_items)
    return out


def released_stats(subsets: dict[str, list[Item]]) -> dict[str, Any]:
    """Items per file, per direction, without aspects, with another item's prompt as their context,
    objectives per item and objective counts."""
    return {
        "items": {name: len(items) for name, items in subsets.items()},
        "directions": {name: dict(sorted(Counter(i.direction for i in items).items()))
                       for name, items in subsets.items()},
        "items_without_aspects": {name: sum(not i.aspects for i in items) for name, items in subsets.items()},
        "items_with_nested_prompt": {name: sum(_nested(i) for i in items) for name, items in subsets.items()},
        "objectives_per_item": {name: {str(k): v for k, v in sorted(Counter(len(i.aspects) for i in items).items())}
                                for name, items in subsets.items()},
        "objective_counts": {name: dict(sorted(Counter(a for i in items for a in i.aspects).items()))
                             for name, items in subsets.items()},
    }


def _nested(item: Item) -> bool:
    """The item's context is another item's prompt (HH-RLHF as released), not its question."""
    return item.prompt.count(" | Answer: ") > 1 and item.question.count(" | Answer: ") == 0
