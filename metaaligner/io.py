"""The one IO module: reading tables with clear errors, atomic writes, resumable outputs.

Errors name the file, the row (1-based data row, header excluded) and the column. Outputs are
either written atomically (temp file + rename) or built through a ``ResumableWriter`` that appends
JSON lines to ``<output>.partial.jsonl`` and only renames the finished table into place, so a file
at the output path is always complete.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import io as _io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from metaaligner.errors import DataError

TEXT_SUFFIXES = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".json", ".json.gz")
# The aligner output format, shared by the aligner, every baseline and SePO (what evaluation/ reads).
OUTPUT_COLUMNS = ["query", "goldens", "origin_responses", "aligned_responses"]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in TEXT_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(path, "file not found")
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except OSError as exc:
            raise DataError(path, f"not a valid gzip file ({exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(path, f"line {line}: bytes that are not UTF-8 at offset {exc.start}") from None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a CSV(.gz), JSONL(.gz) or JSON list file as dicts, with no schema check.

    CSV cells are kept as strings exactly (empty cells are ``""``, never NaN).
    """
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise DataError(path, "file is empty")
    suffix = _suffix(path)
    if suffix in (".csv", ".csv.gz"):
        reader = csv.DictReader(_io.StringIO(text, newline=""))
        if not reader.fieldnames:
            raise DataError(path, "file has no header")
        rows = []
        for i, row in enumerate(reader, start=1):
            if None in row:
                raise DataError(path, "more cells than header columns", row=i)
            rows.append({k: ("" if v is None else v) for k, v in row.items()})
        return rows
    if suffix in (".jsonl", ".jsonl.gz"):
        rows = []
        # split on \n only: str.splitlines() also splits inside JSON strings written with
        # ensure_ascii=False at U+2028/U+2029/U+0085/\x1c-\x1e, which corrupted such rows
        for i, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"invalid JSON ({exc.msg})", row=i) from None
            if not isinstance(obj, dict):
                raise DataError(path, "each line must be a JSON object", row=i)
            rows.append(obj)
        return rows
    if suffix in (".json", ".json.gz"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"invalid JSON at line {exc.lineno} ({exc.msg})") from None
        if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
            raise DataError(path, "expected a JSON list of objects")
        return data
    raise DataError(path, f"unsupported file type; use one of {', '.join(TEXT_SUFFIXES)}")


def read_table(path: str | Path, required: Iterable[str] = (), text_columns: Iterable[str] | None = None,
               numeric_columns: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows with the ``required`` columns checked; text columns must hold strings, numeric columns
    finite numbers (converted to float). Raises ``DataError`` naming file, row and column."""
    path = Path(path)
    rows = read_records(path)
    if not rows:
        raise DataError(path, "file has a header but no rows")
    required = list(required)
    columns = set(rows[0])
    for column in required:
        if column not in columns:
            raise DataError(path, f"missing column (found: {', '.join(sorted(columns)) or 'none'})",
                            column=column)
    numeric = list(numeric_columns)
    texts = [c for c in (required if text_columns is None else text_columns) if c not in numeric]
    for i, row in enumerate(rows, start=1):
        for column in required:
            if column not in row:
                raise DataError(path, "missing cell", row=i, column=column)
        for column in texts:
            if not isinstance(row.get(column), str):
                raise DataError(path, f"expected text, got {type(row.get(column)).__name__}", row=i, column=column)
        for column in numeric:
            row[column] = _to_float(path, row.get(column), i, column)
    return rows


def _to_float(path: Path, value: Any, row: int, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(path, f"expected a number, got {value!r}", row=row, column=column) from None
    if not math.isfinite(number):
        raise DataError(path, f"expected a finite number, got {value!r}", row=row, column=column)
    return number


# ---------------------------------------------------------------- atomic writes

@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None):
    """Open a temp file beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with opener(tmp, mode if "b" in mode or opener is open else mode.replace("w", "wt"), **kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    with atomic_open(path, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _cell(row.get(c, "")) for c in columns})


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    with atomic_open(path) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=indent)
        fh.write("\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- FastChat conversation JSON

def fastchat_item(item_id: str, prompt: str, target: str) -> dict[str, Any]:
    return {"id": item_id, "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": target}]}


def write_fastchat(path: str | Path, items: Iterable[dict[str, Any]]) -> None:
    write_json(path, list(items))


def read_fastchat(path: str | Path) -> list[dict[str, str]]:
    """FastChat conversation JSON -> ``[{"id", "prompt", "completion"}]`` (first human/gpt turns)."""
    path = Path(path)
    items = read_records(path)
    out = []
    for i, item in enumerate(items, start=1):
        turns = item.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2:
            raise DataError(path, "needs a 'conversations' list with a human and a gpt turn", row=i, column="conversations")
        human, gpt = turns[0], turns[1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise DataError(path, "turns must be human then gpt", row=i, column="conversations")
        if not isinstance(human.get("value"), str) or not isinstance(gpt.get("value"), str):
            raise DataError(path, "turn values must be text", row=i, column="conversations")
        out.append({"id": str(item.get("id", i)), "prompt": human["value"], "completion": gpt["value"]})
    return out


# ---------------------------------------------------------------- resumable outputs

class ResumableWriter:
    """Append finished rows to ``<path>.partial.jsonl`` (flushed and fsynced per call); ``finish``
    writes the complete table to ``path`` atomically, ordered by ``key``, and removes the partial file.

    A truncated last line (the process was killed mid-write) is ignored on resume, so every row ends
    up exactly once.
    """

    def __init__(self, path: str | Path, columns: list[str], key: str = "row_id", resume: bool = False):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial.jsonl")
        self.columns, self.key = columns, key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[Any, dict[str, Any]] = {}
        if resume and self.partial.exists():
            self._load_partial()
        elif self.partial.exists():
            self.partial.unlink()
        self._fh = None

    def _load_partial(self) -> None:
        good = 0
        with open(self.partial, "rb") as fh:
            data = fh.read()
        for line in data.split(b"\n"):
            try:
                row = json.loads(line.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                break  # a line cut short by a kill: everything after it is dropped
            self.rows[row[self.key]] = row
            good += len(line) + 1
        with open(self.partial, "r+b") as fh:
            fh.truncate(min(good, len(data)))

    @property
    def done(self) -> set:
        return set(self.rows)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        if self._fh is None:
            self._fh = open(self.partial, "a", encoding="utf-8")
        for row in rows:
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.rows[row[self.key]] = row
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finish(self, order: list | None = None) -> list[dict[str, Any]]:
        self.close()
        keys = order if order is not None else sorted(self.rows)
        rows = [self.rows[k] for k in keys if k in self.rows]
        suffix = _suffix(self.path)
        if suffix in (".jsonl", ".jsonl.gz"):
            write_jsonl(self.path, rows)
        else:
            write_csv(self.path, rows, self.columns)
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()
        return rows


def run_resumable(rows: list[dict[str, Any]], writer: ResumableWriter, generator: Any, make_rows, chunk: int,
                  desc: str, progress: bool = True) -> tuple[int, list[dict[str, Any]]]:
    """Feed the rows ``writer`` has not done yet (by ``writer.key``) to ``make_rows(backend, part)``
    in chunks of ``chunk`` rows and append each chunk's output rows (the resume granularity), under a
    tqdm bar. ``generator`` is the backend, or a zero-argument factory called only before the first
    chunk (nothing is loaded when every row is done). The writer is closed also on error. Returns
    (rows already done, the finished rows in the order of ``rows``)."""
    from tqdm.auto import tqdm

    todo = [r for r in rows if r[writer.key] not in writer.done]
    resumed = len(rows) - len(todo)
    backend = None
    bar = tqdm(total=len(rows), initial=resumed, desc=desc, unit="row", disable=not progress)
    try:
        for begin in range(0, len(todo), chunk):
            part = todo[begin:begin + chunk]
            if backend is None:
                backend = generator() if callable(generator) and not hasattr(generator, "generate") else generator
            writer.append(make_rows(backend, part))
            bar.update(len(part))
    finally:
        bar.close()
        writer.close()
    return resumed, writer.finish(order=[r[writer.key] for r in rows])


def iter_batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]
