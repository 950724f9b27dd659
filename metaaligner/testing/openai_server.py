"""A small scripted OpenAI-compatible HTTP server for tests and benchmarks (stdlib only).

It serves ``POST /v1/chat/completions``, ``GET /v1/models`` and ``GET /health`` on 127.0.0.1 (loopback
only) at a free port, answers every chat request with a reply computed by a Python function, and can
inject faults: HTTP errors (429 then OK, 500), delays longer than the client's timeout, malformed
bodies. It counts requests and keeps their JSON bodies, so a test can assert exactly what the client
sent (``GET /stats`` gives the counters of a server running in another process). It is bounded: it
shuts itself down after ``max_lifetime_s`` and idle keep-alive connections time out.

    from metaaligner.testing import ScriptedOpenAIServer, Fault, fail_first_per_prompt

    with ScriptedOpenAIServer(lambda req: "[[1]]", delay=0.01) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY")
        ...
        assert server.request_count == 3

Command line (a judge that always answers ``[[1]]``, for trying ``evaluation/judge.py`` without a model):

    python -m metaaligner.testing.openai_server --reply "[[1]]" --port 8011 --lifetime 600
"""
from __future__ import annotations

import json
import math
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Fault:
    """What to do instead of (or before) a normal reply.

    ``status``: send this HTTP error (e.g. 429, 500); ``delay``: sleep this long first (longer than the
    client's timeout = a timeout); ``body``: send this raw text as a 200 response body (malformed JSON);
    ``retry_after_ms``: the ``retry-after-ms`` header sent with an error (the openai client honours it,
    which keeps retry tests fast); ``content``: after ``delay``, answer 200 with this text instead of
    failing (a slow but successful reply); ``echo_auth``: the error message echoes the request's
    ``Authorization`` header, as some proxies' 401 pages do (a key must never reach logs or caches).
    """

    status: int | None = None
    delay: float = 0.0
    body: str | None = None
    retry_after_ms: float | None = 5.0
    content: str | None = None
    echo_auth: bool = False


Reply = Union[str, Fault, dict]
ReplyFn = Callable[[dict], Reply]


def user_text(request: dict) -> str:
    """The concatenated text of all messages of a chat request (what a scripted judge reads)."""
    return "\n".join(str(m.get("content", "")) for m in request.get("messages", []))


def last_user_text(request: dict) -> str:
    users = [m for m in request.get("messages", []) if m.get("role") == "user"]
    return str(users[-1].get("content", "")) if users else ""


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: one token per 4 UTF-8 bytes, at least 1."""
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def fail_first_per_prompt(reply: ReplyFn, n: int = 1, status: int = 429,
                          retry_after_ms: float | None = 5.0) -> ReplyFn:
    """Wrap ``reply`` so that the first ``n`` requests for each distinct message list fail with
    ``status`` ("429 then OK")."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def scripted(request: dict) -> Reply:
        key = json.dumps(request.get("messages", []), sort_keys=True)
        with lock:
            seen[key] = seen.get(key, 0) + 1
            count = seen[key]
        if count <= n:
            return Fault(status=status, retry_after_ms=retry_after_ms)
        return reply(request)

    return scripted


def fail_first_requests(reply: ReplyFn, n: int, status: int = 429, retry_after_ms: float | None = 5.0) -> ReplyFn:
    """Wrap ``reply`` so that the first ``n`` requests overall fail with ``status`` (a storm)."""
    counter = {"n": 0}
    lock = threading.Lock()

    def scripted(request: dict) -> Reply:
        with lock:
            counter["n"] += 1
            count = counter["n"]
        if count <= n:
            return Fault(status=status, retry_after_ms=retry_after_ms)
        return reply(request)

    return scripted


@dataclass
class RecordedRequest:
    path: str
    body: dict
    status: int
    reply: str | None
    headers: dict = field(default_factory=dict)


class ScriptedOpenAIServer:
    """An in-process OpenAI-compatible server on 127.0.0.1 with scripted replies.

    ``reply(request_json) -> str | Fault | dict``: a string is the assistant message; a dict may give
    ``content``, ``prompt_tokens``, ``completion_tokens``, ``finish_reason``; a ``Fault`` injects an error.
    ``delay``: seconds every chat request waits before answering (a fixed per-request latency).
    ``models``: ids listed by ``/v1/models``. The server stops by itself after ``max_lifetime_s``.
    """

    def __init__(self, reply: ReplyFn | str = "[[1]]", delay: float = 0.0, host: str = "127.0.0.1",
                 port: int = 0, models: list[str] | None = None, max_lifetime_s: float = 300.0,
                 keep_bodies: bool = True):
        if host not in LOOPBACK:
            raise ValueError(f"the scripted server binds loopback only, not {host!r}")
        self.reply = (lambda _req, _text=reply: _text) if isinstance(reply, str) else reply
        self.delay = float(delay)
        self.host, self.port = host, port
        self.models = list(models or ["scripted-judge"])
        self.max_lifetime_s = max_lifetime_s
        self.keep_bodies = keep_bodies
        self.requests: list[RecordedRequest] = []
        self.request_count = 0      # chat completion requests received, faults included
        self.ok_count = 0           # chat completion requests answered with 200 and a valid body
        self.fault_count = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "ScriptedOpenAIServer":
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _Server((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"scripted-openai-{self.port}", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.max_lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()

    def __enter__(self) -> "ScriptedOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.request_count = self.ok_count = self.fault_count = 0

    # ------------------------------------------------------------------ bookkeeping
    def _record(self, path: str, body: dict, status: int, reply: str | None, headers: dict) -> None:
        with self._lock:
            if path.endswith("/chat/completions"):
                self.request_count += 1
                if status == 200 and reply is not None:
                    self.ok_count += 1
                else:
                    self.fault_count += 1
            if self.keep_bodies:
                self.requests.append(RecordedRequest(path, body, status, reply, headers))

    def completion_body(self, request: dict, content: str, prompt_tokens: int | None = None,
                        completion_tokens: int | None = None, finish_reason: str = "stop") -> dict:
        prompt_tokens = count_tokens(user_text(request)) if prompt_tokens is None else prompt_tokens
        completion_tokens = count_tokens(content) if completion_tokens is None else completion_tokens
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", self.models[0]),
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


class _Server(ThreadingHTTPServer):
    # the stdlib's listen backlog is 5: 16 clients connecting at once overflowed it and the kernel retried
    # the rest after 1 s, a stall no real OpenAI-compatible server shows
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    owner: ScriptedOpenAIServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections close by themselves

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes; without TCP_NODELAY, Nagle + delayed ACK add ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send(self, status: int, payload: Any, headers: dict | None = None) -> None:
        data = payload.encode("utf-8") if isinstance(payload, str) else json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True  # the client gave up (timeout): nothing to do

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._send(200, {"status": "ok"})
        elif path == "/stats":  # request counters, for a server running in another process
            with self.owner._lock:
                stats = {"requests": self.owner.request_count, "ok": self.owner.ok_count,
                         "faults": self.owner.fault_count}
            self._send(200, stats)
        elif path in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "scripted"} for m in self.owner.models]})
        else:
            self._send(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    def do_POST(self) -> None:
        owner = self.owner
        path = self.path.split("?")[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()
                   if k.lower().startswith("x-stainless-retry") or k.lower() == "x-test"}
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw.decode("utf-8") or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            owner._record(path, {}, 400, None, headers)
            self._send(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
            return
        if owner.delay > 0:
            time.sleep(owner.delay)
        try:
            reply = owner.reply(body)
        except Exception as exc:  # a bug in the scripted function: report it as a 500 with the reason
            reply = Fault(status=500, body=None, retry_after_ms=None)
            reply_error = f"scripted reply raised {type(exc).__name__}: {exc}"
        else:
            reply_error = None
        if isinstance(reply, Fault):
            if reply.delay > 0:
                time.sleep(reply.delay)
            if reply.content is not None:
                reply = reply.content
            else:
                if reply.body is not None:
                    owner._record(path, body, 200, None, headers)
                    self._send(200, reply.body)
                    return
                status = reply.status or 500
                extra = {}
                if reply.retry_after_ms is not None:
                    extra["retry-after-ms"] = str(reply.retry_after_ms)
                if reply_error:
                    extra["x-should-retry"] = "false"
                owner._record(path, body, status, None, headers)
                message = reply_error or f"scripted fault {status}"
                if reply.echo_auth:
                    message = f"Incorrect API key provided. Authorization: {self.headers.get('Authorization')}"
                self._send(status, {"error": {"message": message, "type": "scripted_fault", "code": status}},
                           extra)
                return
        if isinstance(reply, dict):
            content = str(reply.get("content", ""))
            payload = owner.completion_body(body, content, reply.get("prompt_tokens"),
                                            reply.get("completion_tokens"), reply.get("finish_reason", "stop"))
        else:
            content = str(reply)
            payload = owner.completion_body(body, content)
        owner._record(path, body, 200, content, headers)
        self._send(200, payload)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="A scripted OpenAI-compatible server on 127.0.0.1 (for trials).")
    parser.add_argument("--reply", default="[[1]]", help="the fixed reply to every chat request")
    parser.add_argument("--port", type=int, default=8011, help="0 picks a free port")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--lifetime", type=float, default=600.0, help="stop after this many seconds")
    args = parser.parse_args(argv)
    server = ScriptedOpenAIServer(args.reply, delay=args.delay, port=args.port, max_lifetime_s=args.lifetime,
                                  keep_bodies=False).start()
    print(f"serving {server.base_url} for {args.lifetime:.0f} s (Ctrl-C stops)", flush=True)
    try:
        while server._httpd is not None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
