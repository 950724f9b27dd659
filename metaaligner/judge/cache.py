"""An honest judge cache: SQLite, keyed on the full request, stored with the run's outputs.

The key is the SHA-256 of ``json.dumps({model, messages, decoding params, parser}, sort_keys=True)``,
so a changed prompt, model, temperature, seed, token limit or answer parser never reuses an old
reply. Only successful replies are stored as replies; failed calls go to a separate ``failures``
table (for diagnosis) and are never read back as verdicts.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


def request_key(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


OPEN_TRIES = 10  # opening a locked cache: tries, with pauses of 0.05 s doubling up to 1 s (about 6 s in all)


class JudgeCache:
    """Thread-safe SQLite store: ``get(key)`` -> ``Completion`` or None; ``put(key, request, completion)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._open_retrying()
        except sqlite3.Error as exc:  # sqlite names no path ("unable to open database file")
            from metaaligner.errors import MetaAlignerError

            raise MetaAlignerError(f"{self.path}: cannot open the judge cache ({exc}); make its folder writable, "
                                   "or pass --cache_path elsewhere (or --no_cache)") from None

    def _open_retrying(self, tries: int = OPEN_TRIES) -> None:
        """``_open``, again after a pause when the file is locked: ranks that open one new cache at once
        (torchrun) can meet SQLITE_BUSY while another switches it to WAL, where sqlite's busy timeout
        does not wait."""
        for attempt in range(tries):
            try:
                return self._open()
            except sqlite3.OperationalError as exc:
                if attempt == tries - 1 or not any(word in str(exc) for word in ("locked", "busy")):
                    raise
                with contextlib.suppress(Exception):
                    self._db.close()
                time.sleep(min(1.0, 0.05 * 2 ** attempt))

    def _open(self) -> None:
        from metaaligner.io import refuse_symlink

        if self.path.is_dir():
            raise sqlite3.OperationalError("a folder is where the cache file goes")
        for suffix in ("", "-wal", "-shm", "-journal"):  # sqlite follows links: a planted one is refused
            refuse_symlink(self.path.with_name(self.path.name + suffix))
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("""CREATE TABLE IF NOT EXISTS replies (
            key TEXT PRIMARY KEY, model TEXT, request TEXT, reply TEXT, prompt_tokens INTEGER,
            completion_tokens INTEGER, finish_reason TEXT, created REAL)""")
        self._db.execute("""CREATE TABLE IF NOT EXISTS failures (
            key TEXT, model TEXT, error TEXT, created REAL)""")
        self._db.commit()

    @contextlib.contextmanager
    def _failing(self):
        """A sqlite error while the run goes on (a full disk, ``ulimit -f``: "disk I/O error") is one line
        naming the cache file; the rows already written stay (``--resume`` continues)."""
        try:
            yield
        except sqlite3.Error as exc:
            from metaaligner.errors import MetaAlignerError

            raise MetaAlignerError(f"{self.path}: the judge cache failed ({exc}); free disk space or raise the file "
                                   "size limit, or pass --cache_path elsewhere (or --no_cache), then re-run with "
                                   "--resume") from None

    def get(self, key: str) -> Completion | None:
        with self._lock, self._failing():
            row = self._db.execute("SELECT reply, prompt_tokens, completion_tokens, finish_reason FROM replies "
                                   "WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return Completion(text=row[0], prompt_tokens=int(row[1] or 0), completion_tokens=int(row[2] or 0),
                          finish_reason=row[3])

    def __contains__(self, key: str) -> bool:
        with self._lock, self._failing():
            return self._db.execute("SELECT 1 FROM replies WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, request: dict[str, Any], completion: Completion) -> None:
        with self._lock, self._failing():
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (key, request.get("model"), json.dumps(request, sort_keys=True, ensure_ascii=False),
                              completion.text, completion.prompt_tokens, completion.completion_tokens,
                              completion.finish_reason, time.time()))
            self._db.commit()

    def record_failure(self, key: str, model: str, error: str) -> None:
        from metaaligner.io import redact_text

        with self._lock, self._failing():  # an upstream message may echo the key: never stored as it came
            self._db.execute("INSERT INTO failures VALUES (?, ?, ?, ?)",
                             (key, model, redact_text(error)[:2000], time.time()))
            self._db.commit()

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def failure_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM failures").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "JudgeCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
