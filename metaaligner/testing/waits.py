"""Waits that hold on a busy machine: poll a readiness signal (a file's content, a port that opens, an
HTTP answer) until it comes, the process that should give it exits, or a generous deadline passes.

No test may depend on wall-clock speed: the deadline is there to stop a hang, not to measure, so it is
long (``DEADLINE_S``, 30 minutes by default; ``METAALIGNER_TEST_DEADLINE_S`` changes it), and a failure
says what was waited for, for how long, and why it stopped (the process's exit code and the end of its log).

    from metaaligner.testing.waits import wait_for, wait_for_http
    wait_for_http(f"http://127.0.0.1:{port}/health", "transformers serve to answer /health", process=server,
                  log=tmp_path / "serve.log")
    wait_for(lambda: partial.exists() and partial.read_text().count("\\n") >= 4, "4 rows in the partial file",
             process=proc)
"""
from __future__ import annotations

import os
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

DEADLINE_S = float(os.environ.get("METAALIGNER_TEST_DEADLINE_S", "1800"))


class WaitTimeout(AssertionError):
    """What was waited for did not come (an ``AssertionError``: a test failure, not an error)."""


def _tail(log: str | Path | None) -> str:
    text = ""
    if log is not None and Path(log).exists():
        text = Path(log).read_text(encoding="utf-8", errors="replace")
    return f"; its output ends: {text[-1500:]!r}" if text else ""


def wait_for(condition: Callable[[], bool], what: str, process: Any = None, deadline_s: float | None = None,
             interval: float = 0.05, log: str | Path | None = None) -> float:
    """Poll ``condition()`` until it is true and return the seconds waited. Fails (``WaitTimeout``) when
    ``process`` (a ``subprocess.Popen``) exits first or after ``deadline_s``, naming ``what``, the time
    waited and the deadline."""
    deadline_s = DEADLINE_S if deadline_s is None else deadline_s
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        waited = time.monotonic() - start
        if process is not None and process.poll() is not None:
            raise WaitTimeout(f"waited {waited:.1f} s for {what}, but the process exited first with code "
                              f"{process.returncode}{_tail(log)}")
        if waited > deadline_s:
            raise WaitTimeout(f"waited {waited:.0f} s (the deadline, METAALIGNER_TEST_DEADLINE_S) for {what}; it "
                              f"did not come{_tail(log)}")
        time.sleep(interval)


def http_ok(url: str, timeout: float = 5.0) -> bool:
    """True when ``url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


def port_open(host: str, port: int, timeout: float = 5.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wait_for_http(url: str, what: str | None = None, process: Any = None, deadline_s: float | None = None,
                  log: str | Path | None = None) -> float:
    """Wait until ``url`` answers 2xx (a server's readiness route, e.g. ``/health``)."""
    return wait_for(lambda: http_ok(url), what or f"{url} to answer", process, deadline_s, 0.2, log)
