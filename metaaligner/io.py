"""The one IO module: reading tables with clear errors, atomic writes, resumable outputs.

Errors name the file, the row (1-based data row, header excluded) and the column. Outputs are
either written atomically (temp file + rename) or built through a ``ResumableWriter`` that appends
JSON lines to ``<output>.partial.jsonl`` and only renames the finished table into place, so a file
at the output path is always complete.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import gzip
import hashlib
import io as _io
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from metaaligner.errors import DataError, MetaAlignerError

log = logging.getLogger(__name__)

# A 5 MB cell is legal CSV (and works in JSONL); the csv module's default limit is 128 kB.
csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))

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
        except EOFError:  # cut short: the end-of-stream marker never came
            raise DataError(path, "truncated gzip file (it ends before its end-of-stream marker); download or "
                                  "copy it again") from None
        except (OSError, zlib.error) as exc:
            raise DataError(path, f"not a valid gzip file or corrupted ({exc}); download or copy it again") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        row = _row_of_offset(path, raw[: exc.start].decode("utf-8-sig", errors="replace"), line)
        raise DataError(path, f"bytes that are not UTF-8 at offset {exc.start} (line {line}); "
                              "re-save the file as UTF-8", row=row) from None


def _row_of_offset(path: Path, prefix: str, line: int) -> int | None:
    """The 1-based data row (header excluded for CSV) holding the first character after ``prefix``."""
    suffix = _suffix(path)
    if suffix in (".jsonl", ".jsonl.gz"):
        return line
    if suffix not in (".csv", ".csv.gz"):
        return None
    try:  # records before the bad byte, counting one cut short by it (cells may span lines)
        records = sum(1 for _ in csv.reader(_io.StringIO(prefix, newline="")))
    except csv.Error:
        return max(1, line - 1)
    if not prefix or prefix.endswith(("\n", "\r")):
        records += 1
    return max(1, records - 1)


class DuplicateKey(ValueError):
    """A JSON object that names one key twice (``json.loads`` would keep the last value silently)."""

    def __init__(self, key: str):
        super().__init__(f"duplicated key {key!r}")
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def json_loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses an object naming a key twice (raises ``DuplicateKey``), as the CSV
    reader refuses a header naming a column twice."""
    return json.loads(text, object_pairs_hook=_unique_pairs)


def _read_csv(path: Path, text: str) -> list[dict[str, Any]]:
    """CSV rows as dicts of strings. A quoted cell never closed, a stray quote, or a row with more or
    fewer cells than the header is an error naming the data row (never a silently merged or padded row)."""
    reader = csv.reader(_io.StringIO(text, newline=""), strict=True)
    records, start = 0, 1
    try:
        header = next(reader, None)
        if not header:
            raise DataError(path, "file has no header")
        seen: set[str] = set()
        for name in header:
            if name in seen:  # a dict would silently keep the last one
                raise DataError(path, "the header names this column twice; rename or drop one", column=name)
            seen.add(name)
        rows = []
        start = reader.line_num + 1
        for records, cells in enumerate(reader, start=1):
            if not cells:  # a blank line (csv.DictReader skipped them too)
                records -= 1
            elif len(cells) > len(header):
                raise DataError(path, "more cells than header columns", row=records)
            elif len(cells) < len(header):
                raise DataError(path, f"fewer cells than header columns ({len(cells)} of {len(header)}, line "
                                      f"{start}); a cell is missing or a line break split the row", row=records)
            else:
                rows.append(dict(zip(header, cells)))
            start = reader.line_num + 1
        return rows
    except csv.Error as exc:
        row, line = records + 1, reader.line_num
        if "unexpected end of data" in str(exc):
            raise DataError(path, f"a quoted cell is never closed (a '\"' opened on line {start} or later runs to "
                                  "the end of the file); close or double the quote", row=row) from None
        raise DataError(path, f"malformed CSV on line {line} ({exc}); quote cells that hold quotes, commas or "
                              "line breaks, doubling inner quotes", row=row) from None


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
        return _read_csv(path, text)
    if suffix in (".jsonl", ".jsonl.gz"):
        rows = []
        # split on \n only: str.splitlines() also splits inside JSON strings written with
        # ensure_ascii=False at U+2028/U+2029/U+0085/\x1c-\x1e, which corrupted such rows
        for i, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json_loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"invalid JSON ({exc.msg})", row=i) from None
            except DuplicateKey as exc:
                raise DataError(path, "the object names this key twice; rename or drop one", row=i,
                                column=exc.key) from None
            if not isinstance(obj, dict):
                raise DataError(path, "each line must be a JSON object", row=i)
            rows.append(obj)
        return rows
    if suffix in (".json", ".json.gz"):
        try:
            data = json_loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"invalid JSON at line {exc.lineno} ({exc.msg})") from None
        except DuplicateKey as exc:
            raise DataError(path, "an object names this key twice; rename or drop one", column=exc.key) from None
        if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
            raise DataError(path, "expected a JSON list of objects")
        return data
    raise DataError(path, f"unsupported file type; use one of {', '.join(TEXT_SUFFIXES)}")


# The cells pandas.read_csv reads as NaN by default (pandas' STR_NA_VALUES). The released scripts
# read tables with pandas and put cells into prompts with str(), so each of these became "nan".
PANDAS_NA_VALUES = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                              "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


def as_released_text(value: Any) -> str:
    """A cell as the released scripts put it into a prompt: ``str()`` of what pandas read, so a missing
    cell or one pandas reads as NaN (``""``, ``NA``, ``None``, ...) is the text ``nan``."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in PANDAS_NA_VALUES:
        return "nan"
    return str(value)


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

def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide and racy with threads)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_OPEN_FLAGS = {"a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
               "r": os.O_RDONLY, "rb": os.O_RDONLY, "r+b": os.O_RDWR}


def symlink_error(path: str | Path) -> MetaAlignerError:
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:
        target = ""
    return MetaAlignerError(f"{path}: is a symbolic link{target}; refusing to write through a link this run did not "
                            "create; remove it, or choose another output path")


def refuse_symlink(path: str | Path) -> Path:
    """``path``, refused (one line) when it is a symbolic link: a side file (partial rows, lock,
    fingerprint, cache) planted as a link must not make a run create or truncate a file elsewhere."""
    path = Path(path)
    if path.is_symlink():
        raise symlink_error(path)
    return path


def open_no_follow(path: str | Path, mode: str = "a", encoding: str = "utf-8"):
    """``open(path, mode)`` for side files (``a``, ``ab``, ``r``, ``rb``, ``r+b``) that never follows a
    symbolic link at ``path`` (``O_NOFOLLOW``: no window between a check and the open); a link is a
    one-line ``MetaAlignerError``."""
    path = Path(path)
    try:
        fd = os.open(path, _OPEN_FLAGS[mode] | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise symlink_error(path) from None
        raise
    if "b" in mode:
        return os.fdopen(fd, mode)
    return os.fdopen(fd, mode, encoding=encoding)


def name_os_error(exc: OSError, path: str | Path) -> OSError:
    """``exc`` naming ``path`` when it names no file (a write that fails with ``File too large`` or
    ``No space left`` names none), so its one error line says which file."""
    if getattr(exc, "filename", None) is None:
        exc.filename = str(path)
    return exc


def check_output_file(path: str | Path) -> Path:
    """``path`` as a Path, refused (one line, naming it) when a folder sits where the file goes."""
    path = Path(path)
    if path.is_dir():
        raise MetaAlignerError(f"{path}: is a folder, but an output file goes there; remove it or choose "
                               "another output path")
    return path


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None):
    """Open a temp file beside ``path``; rename it into place only if the block succeeds. The file
    gets the mode a plain ``open`` would give it (0666 minus the umask), not mkstemp's 0600."""
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        opener = gzip.open if path.name.endswith(".gz") else open
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with opener(tmp, mode if "b" in mode or opener is open else mode.replace("w", "wt"), **kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    except OSError as exc:  # a full disk or `ulimit -f` names no file: name the output
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise name_os_error(exc, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path, drop: tuple[str, ...] = ()):
    """Build a multi-file output in a temporary sibling folder (yielded) and swap it in for ``path``
    only when the block succeeds, so the folder is whole (all files from one run) or absent.

    Entries of an old ``path`` that the new run did not write are carried over as copies (hard links
    where the file system has them), except the top-level names in ``drop`` (outputs of another
    setting that must not survive); the old folder is never emptied. The swap renames whole folders:
    the finished build becomes ``.<name>.new``, the old folder ``.<name>.old``, the new one ``path``,
    then the old one is deleted. A run killed at any point leaves either folder whole, and the next
    ``atomic_folder`` (or ``recover_folder``) on ``path`` finishes or undoes the swap and reports
    what it did; on an exception the old folder is left exactly as it was."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MetaAlignerError(f"{path}: is a file, but an output folder goes there; remove it or choose "
                               "another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if path.exists():
            for entry in path.iterdir():
                if not os.path.lexists(tmp / entry.name) and not entry.name.startswith(f".{path.name}.") \
                        and entry.name not in drop:
                    _carry(entry, tmp / entry.name)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_names(path: Path) -> tuple[Path, Path]:
    return path.with_name(f".{path.name}.new"), path.with_name(f".{path.name}.old")


def _carry(src: Path, dst: Path) -> None:
    """Copy one entry of the old folder into the new one (hard links where possible, links as links)."""
    def link_or_copy(a, b):
        try:
            os.link(a, b, follow_symlinks=False)
        except OSError:
            shutil.copy2(a, b, follow_symlinks=False)

    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)
    else:
        link_or_copy(src, dst)


def _swap_in(tmp: Path, path: Path) -> None:
    new, old = _swap_names(path)
    for leftover in (new, old):  # recover_folder ran first: these are not another run's
        if os.path.lexists(leftover):
            shutil.rmtree(leftover)
    os.rename(tmp, new)             # the build is complete
    if path.exists():
        os.rename(path, old)        # the old folder, whole, until the new one is in place
    os.rename(new, path)
    if os.path.lexists(old):
        shutil.rmtree(old)


def recover_folder(path: str | Path) -> list[str]:
    """Finish or undo a folder swap of ``atomic_folder`` that a kill interrupted, and clear its
    leftovers; returns (and logs as warnings) one line per thing done.

    ``.<name>.new`` is a complete build: swapped in when ``path`` is missing or still the old folder.
    ``.<name>.old`` is the previous folder: put back when nothing else is there, else deleted.
    ``.<name>.<pid>.*.tmp`` of a dead process is an unfinished build (the old folder's files were
    copied into it, never moved): deleted. Other hidden ``.<name>.*`` siblings (left by an older
    version, which moved the old folder's files into its build folder) are reported, never deleted:
    they may hold files of the old folder."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    done: list[str] = []
    new, old = _swap_names(path)
    if new.is_dir():
        if path.exists():
            if os.path.lexists(old):
                shutil.rmtree(old)
            os.rename(path, old)
        os.rename(new, path)
        done.append(f"{path}: finished swapping in the complete output of an interrupted run ({new.name})")
    if old.is_dir():
        if path.exists():
            shutil.rmtree(old)
            done.append(f"{path}: removed the previous output ({old.name}) an interrupted run left beside it")
        else:
            os.rename(old, path)
            done.append(f"{path}: put back the previous output ({old.name}) an interrupted run had moved aside")
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^/]*\.tmp")
    for sibling in sorted(parent.glob(f".{glob_escape(path.name)}.*")):
        if sibling in (new, old):
            continue
        match = pattern.fullmatch(sibling.name)
        if match and sibling.is_dir():
            if _pid_alive(int(match.group(1))) and int(match.group(1)) != os.getpid():
                continue  # another run is building it now
            shutil.rmtree(sibling, ignore_errors=True)
            done.append(f"{path}: removed {sibling.name}, the unfinished build of an interrupted run")
        elif sibling.is_dir() and (sibling.name.endswith(".tmp") or ".old-" in sibling.name):
            done.append(f"{sibling}: left by an interrupted run of an older version; it may hold files of "
                        f"{path}: move back what you need, then delete it")
    for line in done:
        log.warning("%s", line)
    return done


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


# ---------------------------------------------------------------- secrets and names

_SECRET_PARAM = re.compile(r"(api[_-]?key|key|token|access[_-]?token|secret|password|passwd|sig|signature|auth)",
                           re.IGNORECASE)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_QUERY_SECRET = re.compile(r"(?P<k>[?&](?:api[_-]?key|key|token|access[_-]?token|secret|password|passwd|sig|"
                           r"signature|auth)=)[^&\s#'\"]+", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """``url`` without credentials: userinfo becomes ``***@`` and api_key-like query values ``***``."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_PARAM.fullmatch(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# Secrets in free text that are not URL credentials: an Authorization header or a bearer token echoed
# by an upstream error page, an OpenAI-style key, a "key": "value" pair in a JSON body.
_AUTH_HEADER = re.compile(r"(?P<k>\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,}]+", re.IGNORECASE)
# a token: 6+ characters with a digit in them, or 20+ (so "Basic authentication failed" stays)
_BEARER = re.compile(r"(?P<k>\b(?:bearer|basic)\s+)(?:(?=[A-Za-z._~+/=-]*[0-9])[A-Za-z0-9._~+/=-]{6,}|"
                     r"[A-Za-z0-9._~+/=-]{20,})", re.IGNORECASE)
_KEY_VALUE = re.compile(r"(?P<k>\b(?:api[_-]?key|access[_-]?token|secret|password|passwd)\b[\"']?\s*[:=]\s*[\"']?)"
                        r"[^\s\"',;&}]+", re.IGNORECASE)
_OPENAI_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{6,}")
SECRET_ENV = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """A secret this process holds (an API key, a token): ``redact_text`` removes it wherever it shows up
    verbatim, whatever surrounds it. Values under 6 characters (placeholders like ``EMPTY``) are ignored."""
    if value and len(value) >= 6 and value != "EMPTY":
        _SECRETS.add(value)


def normalise_space(text: str) -> str:
    """``text`` with every run of whitespace made one space, stripped: how two texts are compared
    "whitespace aside" (a copy, a tie, a query seen in training)."""
    return " ".join(str(text).split())


def redact_text(text: str) -> str:
    """Free text (an error line, a log record, an upstream's error body) with every secret replaced by
    ``***``: URL credentials, Authorization headers, bearer/basic tokens, OpenAI-style keys, key=value
    pairs named like a key, and the verbatim value of every registered secret and of ``SECRET_ENV``.
    The one redaction helper: whatever prints or stores an upstream message goes through it."""
    text = str(text)
    for value in sorted(_SECRETS | {v for v in (os.environ.get(n) for n in SECRET_ENV) if v and len(v) >= 6
                                    and v != "EMPTY"}, key=len, reverse=True):
        text = text.replace(value, "***")
    text = _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)
    text = _QUERY_SECRET.sub(lambda m: m.group("k") + "***", text)
    text = _AUTH_HEADER.sub(lambda m: m.group("k") + "***", text)
    text = _BEARER.sub(lambda m: m.group("k") + "***", text)
    text = _KEY_VALUE.sub(lambda m: m.group("k") + "***", text)
    return _OPENAI_KEY.sub("sk-***", text)


def inside(root: str | Path, name: str, what: str) -> Path:
    """``root / name``, refused when ``name`` is absolute or resolves outside ``root`` (``..``)."""
    root = Path(root)
    candidate = root / name
    if Path(name).is_absolute() or not candidate.resolve().is_relative_to(root.resolve()):
        raise MetaAlignerError(f"{what} {name!r} resolves outside {root}; give a plain name inside it")
    return candidate


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
            raise DataError(path, "needs a 'conversations' list with a human and a gpt turn", row=i,
                            column="conversations")
        human, gpt = turns[0], turns[1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise DataError(path, "turns must be human then gpt", row=i, column="conversations")
        if not isinstance(human.get("value"), str) or not isinstance(gpt.get("value"), str):
            raise DataError(path, "turn values must be text", row=i, column="conversations")
        out.append({"id": str(item.get("id", i)), "prompt": human["value"], "completion": gpt["value"]})
    return out


# ---------------------------------------------------------------- resumable outputs

INPUT_HASH = "__input__"              # per journal row: the hash of the input row that made it


def row_hash(row: dict[str, Any]) -> str:
    """A short content hash of one input row (its identity for resume)."""
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str))


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``key: old -> new`` for every setting that differs (values cut to 60 characters)."""
    def short(value: Any) -> str:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
        return text if len(text) <= 60 else text[:57] + "..."

    keys = sorted(set(old) | set(new))
    return "; ".join(f"{k}: {short(old.get(k))} -> {short(new.get(k))}" for k in keys if old.get(k) != new.get(k))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """``<output>.lock`` holding the writer's pid: a second run on the same output stops at once; a
    lock left by a dead process (kill -9) is taken over."""

    def __init__(self, target: Path):
        self.target = target
        self.path = target.with_name(target.name + ".lock")
        self.held = False

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW, 0o666)
            except FileExistsError:
                pid = self._owner()
                # this process's own lock (a writer dropped without close) never blocks it
                if pid is not None and pid != os.getpid() and _pid_alive(pid):
                    raise MetaAlignerError(
                        f"{self.target}: another run (pid {pid}) is writing this output (lock {self.path}); wait "
                        "for it to finish, or give another output path") from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self.held = True
            return
        raise MetaAlignerError(f"{self.path}: could not take the output lock; delete it if no run is writing")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text(encoding="ascii").strip() or "0") or None
        except (OSError, ValueError):
            return None  # half-written by a process killed right after creating it

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.held = False


class ResumableWriter:
    """Append finished rows to ``<path>.partial.jsonl`` (flushed and fsynced per call); ``finish``
    writes the complete table to ``path`` atomically, ordered by ``key``, and removes the partial file.

    A truncated last line (the process was killed mid-write) is ignored on resume, so every row ends
    up exactly once. With a ``fingerprint`` (a JSON-able dict of everything that decides the rows),
    ``.<name>.fingerprint.json`` beside the output records the partial file's fingerprint and the
    finished output's (with each row's key and input hash; partial rows carry theirs as
    ``__input__``): ``resume`` continues only a run with the same fingerprint (and, on a finished
    output, takes its rows back), a finished output made with another fingerprint is an error
    naming what differs unless ``overwrite``; rows whose input hash changed are not done.
    ``<path>.lock`` keeps a second run off the same output until ``finish`` or ``close``.
    """

    def __init__(self, path: str | Path, columns: list[str], key: str = "row_id", resume: bool = False,
                 fingerprint: dict[str, Any] | None = None, overwrite: bool = False, lock: bool = True):
        self.path = check_output_file(path)
        self.partial = self.path.with_name(self.path.name + ".partial.jsonl")
        self.meta_path = self.path.with_name(f".{self.path.name}.fingerprint.json")
        self.columns, self.key = columns, key
        self.fingerprint = None if fingerprint is None else _canonical(fingerprint)
        self.from_output = False  # rows were taken back from a finished output
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for side in (self.partial, self.meta_path, self.path.with_name(self.path.name + ".lock")):
            refuse_symlink(side)  # planted links are never followed (the opens below use O_NOFOLLOW too)
        self.rows: dict[Any, dict[str, Any]] = {}
        self._fh = None
        self._lock = OutputLock(self.path)
        if lock:  # lock=False: only reading what is there (a dry run)
            self._lock.acquire()
        try:
            self._open(resume, overwrite)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, resume: bool, overwrite: bool) -> None:
        if self.fingerprint is not None and not overwrite:
            self._check_finished_output()
        if resume and self.partial.exists():
            self._load_partial(overwrite)
        elif self.partial.exists():
            self.partial.unlink()
        if resume and not self.partial.exists() and self.fingerprint is not None and not overwrite:
            self._load_finished_output()

    def _meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def _stored_meta(self) -> dict[str, Any] | None:
        """What the sidecar says about the finished output (None: no record)."""
        meta = self._meta().get("output")
        return meta if isinstance(meta, dict) and isinstance(meta.get("fingerprint"), dict) else None

    def _write_meta(self, **parts: Any) -> None:
        write_json(self.meta_path, {**self._meta(), **parts}, indent=None)

    def _check_finished_output(self) -> None:
        meta = self._stored_meta() if self.path.exists() else None
        if meta is not None and meta["fingerprint"] != self.fingerprint:
            raise MetaAlignerError(f"{self.path}: a finished output made with other settings "
                                   f"({fingerprint_diff(meta['fingerprint'], self.fingerprint)}); give another "
                                   "output path, or pass --overwrite to replace it")

    def _load_finished_output(self) -> None:
        meta = self._stored_meta() if self.path.exists() else None
        if meta is None:
            return  # no record of how it was made: nothing is taken back, every row is redone
        # (key, input hash) per output row, in file order: the key need not be an output column
        rows, keys = read_records(self.path), meta.get("rows") or []
        if len(rows) != len(keys):
            return
        for row, (key, input_hash) in zip(rows, keys):
            row[self.key] = key
            row[INPUT_HASH] = input_hash
            self.rows[key] = row
        self.from_output = True

    def _load_partial(self, overwrite: bool = False) -> None:
        good = 0
        with open_no_follow(self.partial, "rb") as fh:
            data = fh.read()
        stored = self._meta().get("partial")
        if self.fingerprint is not None and stored is None:
            log.warning("%s records no settings (an older version wrote it); its rows are reused", self.partial)
        elif self.fingerprint is not None and stored != self.fingerprint:
            if overwrite:
                self.partial.unlink()
                return
            raise MetaAlignerError(f"{self.partial}: an interrupted run made with other settings "
                                   f"({fingerprint_diff(stored, self.fingerprint)}); resume with the same "
                                   "settings, or run without --resume to start over")
        for line in data.split(b"\n"):
            try:
                row = json.loads(line.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                break  # a line cut short by a kill: everything after it is dropped
            good += len(line) + 1
            self.rows[row[self.key]] = row
        with open_no_follow(self.partial, "r+b") as fh:
            fh.truncate(min(good, len(data)))

    @property
    def done(self) -> set:
        return set(self.rows)

    def is_done(self, key: Any, input_hash: str | None = None) -> bool:
        """Whether row ``key`` is written, and (when ``input_hash`` is given) from that same input."""
        row = self.rows.get(key)
        if row is None:
            return False
        if input_hash is None or self.fingerprint is None or INPUT_HASH not in row:
            return True  # no hash to compare (a row from an older version)
        return row[INPUT_HASH] == input_hash

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        if self._fh is None:
            fresh = not self.partial.exists() or self.partial.stat().st_size == 0
            if fresh and self.fingerprint is not None:  # recorded before the first row lands
                self._write_meta(partial=self.fingerprint)
            self._fh = open_no_follow(self.partial, "a")
            if self.from_output:  # the rows taken back from the finished output go first
                for row in self.rows.values():
                    self._write_line(json.dumps(row, ensure_ascii=False, default=str))
        for row in rows:
            self._write_line(json.dumps(row, ensure_ascii=False))
            self.rows[row[self.key]] = row
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise name_os_error(exc, self.partial)

    def _write_line(self, line: str) -> None:
        try:
            self._fh.write(line + "\n")
        except OSError as exc:  # a full disk or `ulimit -f`: name the file
            raise name_os_error(exc, self.partial)

    def write_record(self, **facts: Any) -> None:
        """Facts about how this run made its rows (counts, the decoding the backend applied) beside the
        fingerprint under ``record``; never compared on resume."""
        self._write_meta(record=_canonical(facts))

    def close(self) -> None:
        """Close the partial file and release the lock (the rows stay for ``--resume``)."""
        self._close_partial()
        self._lock.release()

    def _close_partial(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            with contextlib.suppress(OSError):  # every append flushed; only a failed write's bytes remain
                fh.close()

    def finish(self, order: list | None = None) -> list[dict[str, Any]]:
        self._close_partial()
        try:
            keys = order if order is not None else sorted(self.rows)
            rows = [self.rows[k] for k in keys if k in self.rows]
            keys = [[r[self.key], r.get(INPUT_HASH)] for r in rows]
            clean = [{k: v for k, v in r.items() if k != INPUT_HASH} for r in rows]
            if _suffix(self.path) in (".jsonl", ".jsonl.gz"):
                write_jsonl(self.path, clean)
            else:
                write_csv(self.path, clean, self.columns)
            if self.fingerprint is not None:
                self._write_meta(output={"fingerprint": self.fingerprint, "key": self.key, "rows": keys},
                                 partial=None)
            with contextlib.suppress(FileNotFoundError):
                self.partial.unlink()
        finally:
            self._lock.release()
        return clean


def run_resumable(rows: list[dict[str, Any]], writer: ResumableWriter, generator: Any, make_rows, chunk: int,
                  desc: str, progress: bool = True) -> tuple[int, list[dict[str, Any]]]:
    """Feed the rows ``writer`` has not done yet (by ``writer.key`` and the input row's hash) to
    ``make_rows(backend, part)`` in chunks of ``chunk`` rows and append each chunk's output rows (the
    resume granularity), under a tqdm bar. ``generator`` is the backend, or a zero-argument factory
    called only before the first chunk (nothing is loaded when every row is done). The writer is
    closed (lock released) also on error. Returns (rows already done, the finished rows in the
    order of ``rows``)."""
    hashes = {r[writer.key]: row_hash(r) for r in rows}
    resumed = append_missing(rows, writer, generator, make_rows, chunk, desc, progress, hashes)
    return resumed, writer.finish(order=[r[writer.key] for r in rows])


def append_missing(rows: list[dict[str, Any]], writer: ResumableWriter, generator: Any, make_rows, chunk: int,
                   desc: str, progress: bool, hashes: dict[Any, str]) -> int:
    """``run_resumable``'s loop, with the input hashes given (a shard's rows are hashed with the whole
    input's); the writer is left open for the caller to finish. Returns the rows already done."""
    from tqdm.auto import tqdm

    todo = [r for r in rows if not writer.is_done(r[writer.key], hashes[r[writer.key]])]
    backend = None
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=desc, unit="row", disable=not progress)
    try:
        for begin in range(0, len(todo), chunk):
            part = todo[begin:begin + chunk]
            if backend is None:
                backend = generator() if callable(generator) and not hasattr(generator, "generate") else generator
            out = make_rows(backend, part)
            for row in out:
                row[INPUT_HASH] = hashes.get(row[writer.key])
            writer.append(out)
            bar.update(len(part))
    except BaseException:
        writer.close()
        raise
    finally:
        bar.close()
    return len(rows) - len(todo)


def iter_batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]


_DATA_LOADER = None


def _data_loader():
    """``yaml.SafeLoader`` that refuses aliases (``*name``, ``<<: *name``): data files never need them, and
    they make alias bombs (billion laughs: a few lines that expand to 10^9 items) and alias loops."""
    global _DATA_LOADER
    if _DATA_LOADER is None:
        import yaml

        class DataLoader(yaml.SafeLoader):
            def compose_node(self, parent, index):
                if self.check_event(yaml.AliasEvent):
                    event = self.peek_event()
                    raise yaml.composer.ComposerError(
                        None, None, f"an alias (*{event.anchor}); aliases are not allowed in data files, write "
                                    "the value out", event.start_mark)
                return super().compose_node(parent, index)

        _DATA_LOADER = DataLoader
    return _DATA_LOADER


def load_yaml(path: str | Path, text: str | None = None) -> Any:
    """A YAML data file's content, loaded safely (no Python objects, no aliases); malformed YAML, an
    alias, nesting too deep or bytes that are not UTF-8 are a ``DataError`` naming the file (line and
    column where there are some)."""
    import yaml

    path = Path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(path, f"bytes that are not UTF-8 at offset {exc.start}; re-save the file as "
                                  "UTF-8") from None
    try:
        return yaml.load(text, Loader=_data_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise DataError(path, f"{where}malformed YAML ({problem}); fix the file") from None
    except RecursionError:
        raise DataError(path, "YAML nested too deeply to be data; fix the file") from None


def check_types(path: str | Path, where: str, data: dict[str, Any], types: dict[str, Any]) -> None:
    """Each key of ``data`` named in ``types`` holds a value of that type (a type, a tuple of types, or
    ``list[str]`` / ``dict[str, str]`` spelled ``(list, str)`` / ``(dict, str)``); else a ``DataError``
    naming the file, the entry and the key, so a list never becomes text where a string belongs."""
    def fits(value, kind) -> bool:
        if isinstance(kind, tuple) and len(kind) == 2 and kind[0] in (list, dict):
            container, item = kind
            if not isinstance(value, container):
                return False
            items = value.values() if container is dict else value
            keys = value.keys() if container is dict else ()
            return all(isinstance(v, item) for v in items) and all(isinstance(k, str) for k in keys)
        return isinstance(value, kind) and not (kind in (int, float, (int, float)) and isinstance(value, bool))

    def name(kind) -> str:
        if isinstance(kind, tuple) and len(kind) == 2 and kind[0] in (list, dict):
            return f"a list of {kind[1].__name__}" if kind[0] is list else f"a mapping of str to {kind[1].__name__}"
        kinds = kind if isinstance(kind, tuple) else (kind,)
        words = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
                 dict: "a mapping", type(None): "empty"}
        return " or ".join(words.get(k, k.__name__) for k in kinds)

    for key, kind in types.items():
        if key in data and not fits(data[key], kind):
            got = type(data[key]).__name__
            raise DataError(path, f"{where}{key} must be {name(kind)}, got {got} {_short_repr(data[key])}")


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def folder_identity(path: str | Path | None) -> str | None:
    """A cheap identity of a local model or adapter folder (a hash of its files' names, sizes and
    modification times), so retrained weights under the same path count as another model. None
    for a hub name or nothing."""
    if not path:
        return None
    folder = Path(path)
    if not folder.is_dir():
        return None
    entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    return hashlib.sha256(json.dumps(entries).encode("utf-8")).hexdigest()[:16]


def remove_output(path: str | Path) -> None:
    """Delete an output written through ``ResumableWriter`` with its fingerprint sidecar."""
    path = Path(path)
    for p in (path, path.with_name(f".{path.name}.fingerprint.json")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
