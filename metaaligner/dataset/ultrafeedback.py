"""UltraFeedback from its raw GPT-4 ratings: the stage-1 CSV and the test queries, as released.

What the released ``UltraFeedback_make_aligner_data.py`` does, and so what this module does:

- split by position: every record but the last ``test_size`` (15,000) trains, the last ones test;
- a record is ``instruction`` plus ``completions[]``, each with a ``response`` and
  ``annotations.<aspect>.Rating`` for the four aspects, ratings being strings (``"4"``, ``"N/A"``);
  a completion whose response is missing/NaN is skipped;
- training: a completion is used only when all four ratings are digits; every pair i < j of the
  used completions of one record is a preference pair (chosen = i, rejected = j, whichever is
  better: Algorithm 1 sorts the objectives out), its ratings are the scores (no reward model);
- test: the golden answer is the completion with the highest sum of its digit ratings (a non-digit
  rating counts 0; the first one wins a tie); the query is the instruction;
- ``completions.csv``: every used training completion once, with its record and position (what the
  released loops iterate over: ``UltraFeedback_make_sft_data.py`` makes one SFT item of each,
  ``UltraFeedback_make_aligner_data.py`` pairs them per record; ``rewards.csv`` has lost the records
  with a single used completion and the record boundaries).

Responses and instructions are kept verbatim (never stripped).
"""
from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaaligner.errors import DataError, MetaAlignerError

HUB_NAME = "openbmb/UltraFeedback"
DEFAULT_TEST_SIZE = 15000
# Score column order = metaaligner/data/datasets/ultrafeedback.yaml's objectives (checked by a test).
ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
# Why a completion is not used (counted in stats.json).
NAN_RESPONSE, NON_DIGIT_RATING, MISSING_RATING = "nan_response", "non_digit_rating", "missing_rating"
_HUB_FORM = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
_NOT_HUB = _FILE_SUFFIXES + (".csv", ".csv.gz", ".gz", ".arrow")


@dataclass(frozen=True)
class Completion:
    position: int                 # index in the record's ``completions``
    response: str | None          # None: missing/NaN (skipped)
    ratings: tuple[str | None, ...]  # raw ratings in ASPECTS order; None when absent


@dataclass
class Prepared:
    """What ``prepare_ultrafeedback`` writes: stage-1 rows, test rows and the counts."""
    rewards: list[dict[str, Any]] = field(default_factory=list)
    test: list[dict[str, str]] = field(default_factory=list)
    completions: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- reading

def is_hub_name(source: str) -> bool:
    """``owner/name`` that is not a local path and has no file suffix (e.g. ``openbmb/UltraFeedback``)."""
    return not Path(source).exists() and bool(_HUB_FORM.match(source)) \
        and not source.lower().endswith(_NOT_HUB)


def open_records(source: str) -> tuple[int, Iterator[dict[str, Any]]]:
    """(number of records, an iterator over them) from a JSONL/JSON(.gz) file, a parquet file or a
    folder of them, a ``datasets`` ``save_to_disk`` folder, or the hub (``openbmb/UltraFeedback``)."""
    path = Path(source)
    if is_hub_name(source):
        return _from_datasets(_load_hub(source))
    if not path.exists():
        raise DataError(path, "file not found (a hub dataset is named owner/name, e.g. openbmb/UltraFeedback)")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _from_datasets(_load_disk(path))
        files = sorted(p for p in path.iterdir() if p.name.lower().endswith(_FILE_SUFFIXES))
        if not files:
            raise DataError(path, "folder has no save_to_disk dataset and no .jsonl/.json/.parquet files")
        return _chain(files)
    return _chain([path])


def _chain(files: list[Path]) -> tuple[int, Iterator[dict[str, Any]]]:
    tables = [_read_parquet(f) if f.name.lower().endswith(".parquet") else _read_text_records(f) for f in files]
    return sum(len(t) for t in tables), (rec for t in tables for rec in t)


def _read_text_records(path: Path) -> list[dict[str, Any]]:
    from metaaligner.io import read_records

    return read_records(path)


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(path, f"not a readable parquet file ({str(exc).splitlines()[0]})") from None
    wanted = [c for c in ("instruction", "completions") if c in table.column_names]
    return table.select(wanted).to_pylist() if wanted else table.to_pylist()


def _load_disk(path: Path):
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        if "train" not in data:
            raise DataError(path, f"dataset has no 'train' split (splits: {', '.join(data)})")
        data = data["train"]
    return data


def _load_hub(name: str):
    import datasets

    try:
        return datasets.load_dataset(name, split="train")
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, no access: one line, no traceback
        raise MetaAlignerError(f"{name}: cannot load from the hub ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); give a local "
                               "JSONL / parquet / save_to_disk copy with --input") from None


def _from_datasets(data) -> tuple[int, Iterator[dict[str, Any]]]:
    keep = [c for c in ("instruction", "completions") if c in data.column_names]
    if keep:
        data = data.select_columns(keep)
    return len(data), iter(data)


# ---------------------------------------------------------------- one record

def parse_record(record: Any, source: str, row: int) -> tuple[str, list[Completion]]:
    """(instruction, completions) of one record; schema errors name the file, row and column."""
    if not isinstance(record, dict):
        raise DataError(source, "expected a JSON object", row=row)
    instruction = record.get("instruction")
    if not isinstance(instruction, str):
        raise DataError(source, f"expected text, got {type(instruction).__name__}", row=row, column="instruction")
    completions = record.get("completions")
    if not isinstance(completions, list):
        raise DataError(source, f"expected a list, got {type(completions).__name__}", row=row, column="completions")
    out = []
    for k, item in enumerate(completions):
        where = f"completions[{k}]"
        if not isinstance(item, dict):
            raise DataError(source, "expected an object", row=row, column=where)
        response = item.get("response")
        if response is not None and not isinstance(response, str):
            if not (isinstance(response, float) and math.isnan(response)):
                raise DataError(source, f"expected text, got {type(response).__name__}", row=row,
                                column=f"{where}.response")
            response = None
        annotations = item.get("annotations")
        if not isinstance(annotations, dict):
            raise DataError(source, "expected an object", row=row, column=f"{where}.annotations")
        out.append(Completion(k, response, tuple(_rating(annotations.get(a)) for a in ASPECTS)))
    return instruction, out


def _rating(annotation: Any) -> str | None:
    rating = annotation.get("Rating") if isinstance(annotation, dict) else None
    if rating is None or (isinstance(rating, float) and math.isnan(rating)):
        return None
    return str(rating)


def rating_value(raw: str | None) -> int | None:
    """``"4"`` -> 4; ``"N/A"``, ``""``, None -> None (the release's ``isdigit()`` test)."""
    return int(raw) if raw is not None and raw.isascii() and raw.isdigit() else None


def drop_reason(completion: Completion) -> str | None:
    """Why a training completion is not used, or None when it is."""
    if completion.response is None:
        return NAN_RESPONSE
    if any(r is None for r in completion.ratings):
        return MISSING_RATING
    if any(rating_value(r) is None for r in completion.ratings):
        return NON_DIGIT_RATING
    return None


def training_pairs(instruction: str, completions: list[Completion]) -> tuple[list[dict[str, Any]], Counter]:
    """Stage-1 rows for every pair i < j of the used completions, and the dropped ones by reason."""
    used, dropped = [], Counter()
    for c in completions:
        reason = drop_reason(c)
        if reason:
            dropped[reason] += 1
        else:
            used.append(c)
    rows = []
    for i in range(len(used)):
        for j in range(i + 1, len(used)):
            a, b = used[i], used[j]
            row = {"prompt": instruction, "chosen_response": a.response, "rejected_response": b.response}
            for n, (ra, rb) in enumerate(zip(a.ratings, b.ratings), start=1):
                row[f"chosen_score{n}"], row[f"rejected_score{n}"] = rating_value(ra), rating_value(rb)
            rows.append(row)
    return rows, dropped


def completion_rows(record: int, instruction: str, completions: list[Completion]) -> list[dict[str, Any]]:
    """``completions.csv`` rows of one training record: each used completion (all four ratings
    digits) once, ``record`` (the record's 1-based row), ``completion`` (its position in the record),
    ``prompt``, ``response``, ``score1..4``."""
    rows = []
    for c in completions:
        if drop_reason(c) is None:
            row = {"record": record, "completion": c.position, "prompt": instruction, "response": c.response}
            row.update({f"score{n}": rating_value(r) for n, r in enumerate(c.ratings, start=1)})
            rows.append(row)
    return rows


def completion_columns(n: int = len(ASPECTS)) -> list[str]:
    return ["record", "completion", "prompt", "response"] + [f"score{i}" for i in range(1, n + 1)]


def golden_answer(completions: list[Completion]) -> str | None:
    """The response with the highest sum of digit ratings (non-digit = 0), first on ties; None
    when no completion has a response."""
    best, best_sum = None, None
    for c in completions:
        if c.response is None:
            continue
        total = sum(rating_value(r) or 0 for r in c.ratings)
        if best_sum is None or total > best_sum:
            best, best_sum = c.response, total
    return best


# ---------------------------------------------------------------- the whole dataset

def prepare_ultrafeedback(source: str, test_size: int = DEFAULT_TEST_SIZE, progress: bool = True) -> Prepared:
    """Read ``source`` and build the training pairs (all but the last ``test_size`` records) and the
    test rows (the last ``test_size``)."""
    from tqdm.auto import tqdm

    if test_size < 0:
        raise MetaAlignerError(f"--test_size must be >= 0, got {test_size}")
    start = time.perf_counter()
    n, records = open_records(source)
    if n == 0:
        raise DataError(source, "no records")
    n_train = max(0, n - test_size)
    out = Prepared()
    train_drop, test_drop = Counter(), Counter()
    counts = Counter()
    for row, record in enumerate(tqdm(records, total=n, desc="ultrafeedback", unit="rec", disable=not progress),
                                 start=1):
        instruction, completions = parse_record(record, source, row)
        if row <= n_train:
            pairs, dropped = training_pairs(instruction, completions)
            train_drop.update(dropped)
            counts["train_completions"] += len(completions)
            counts["train_records_without_pairs"] += not pairs
            out.rewards.extend(pairs)
            out.completions.extend(completion_rows(row, instruction, completions))
            continue
        test_drop.update(NAN_RESPONSE for c in completions if c.response is None)
        golden = golden_answer(completions)
        if golden is None:
            counts["test_records_without_golden"] += 1
        else:
            out.test.append({"query": instruction, "goldens": golden})
    out.stats = _stats(source, test_size, n, n_train, out, counts, train_drop, test_drop,
                       time.perf_counter() - start)
    return out


def _stats(source: str, test_size: int, n: int, n_train: int, out: Prepared, counts: Counter,
           train_drop: Counter, test_drop: Counter, seconds: float) -> dict[str, Any]:
    return {
        "input": str(source),
        "test_size": test_size,
        "objectives": list(ASPECTS),
        "records": {"total": n, "train": n_train, "test": n - n_train},
        "train": {"completions": counts["train_completions"],
                  "completions_used": counts["train_completions"] - sum(train_drop.values()),
                  "dropped_completions": dict(sorted(train_drop.items())),
                  "records_without_pairs": counts["train_records_without_pairs"],
                  "pairs": len(out.rewards)},
        "completions": len(out.completions),
        "test": {"rows": len(out.test), "dropped_completions": dict(sorted(test_drop.items())),
                 "records_without_golden": counts["test_records_without_golden"]},
        "seconds": round(seconds, 3),
    }


def write_prepared(result: Prepared, output_dir: str | Path) -> dict[str, Path]:
    """``rewards.csv`` (stage-1 columns), ``test.csv`` (``query, goldens``), ``completions.csv`` (each used
    training completion once, ``completion_rows``) and ``stats.json``, built
    in a temporary sibling folder swapped in at the end (``io.atomic_folder``: the folder is whole or
    absent, an old one survives a failed run untouched); returns their paths."""
    from metaaligner.dataset.rewards import output_columns
    from metaaligner.io import atomic_folder, write_csv, write_json

    out = Path(output_dir)
    names = {"rewards": "rewards.csv", "test": "test.csv", "completions": "completions.csv", "stats": "stats.json"}
    with atomic_folder(out) as tmp:
        write_csv(tmp / names["rewards"], result.rewards, output_columns(len(ASPECTS)))
        write_csv(tmp / names["test"], result.test, ["query", "goldens"])
        write_csv(tmp / names["completions"], result.completions, completion_columns())
        write_json(tmp / names["stats"], result.stats)
    return {key: out / name for key, name in names.items()}
