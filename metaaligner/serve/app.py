"""The HTTP service: an OpenAI-compatible aligning proxy (FastAPI).

Routes: ``POST /v1/chat/completions`` (policy, then aligner), ``POST /v1/align`` (the aligner alone),
``GET /v1/models`` (the policy's), ``GET /v1/objectives``, ``GET /health``, ``GET /metrics``,
``GET /`` (the playground page, ``static/playground.html``) and ``/static/*``. Errors are OpenAI's
shape ``{"error": {"message", "type", "code"}}``. See docs/serving.md.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from metaaligner.errors import MetaAlignerError
from metaaligner.io import redact_text, register_secret
from metaaligner.serve.batching import Batcher, QueueFull
from metaaligner.serve.config import CLIENT_KEY_ENV, POLICY_KEY_ENVS, ServeConfig
from metaaligner.serve.conversation import check_messages, query_format_for, to_query
from metaaligner.serve.engine import BaseEngine, ObjectiveError, Row, build_engine, default_objectives
from metaaligner.serve.metrics import Metrics
from metaaligner.serve.upstream import Upstream, UpstreamError

log = logging.getLogger("metaaligner.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
PLAYGROUND = "playground.html"
OUR_FIELDS = ("objectives", "align", "metaaligner")
REFUSED_FIELDS = ("tools", "tool_choice", "functions", "function_call")
ROUTES = ("/v1/chat/completions", "/v1/align", "/v1/models", "/v1/objectives", "/health", "/metrics", "/")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 502: "upstream_error", 503: "service_unavailable", 500: "server_error"}
RETRY_AFTER_S = 1
CLIENT_GONE = 499  # nginx's code for "the client closed the connection": only ever seen in /metrics


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(redact_text(message))
        self.status, self.code, self.headers = status, code, headers or {}


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def error_body(status: int, message: str, code: str | None = None) -> dict:
    return {"error": {"message": redact_text(message), "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "code": code}}


def error_response(status: int, message: str, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


class Service:
    """What the routes share: settings, the engine and its batcher, the policy client, the metrics."""

    def __init__(self, config: ServeConfig, engine: BaseEngine | None = None):
        self.config = config
        self.metrics = Metrics()
        self.client_key = os.environ.get(CLIENT_KEY_ENV, "") or None
        register_secret(self.client_key)
        self.upstreams: list[Upstream] = []
        self.engine = engine or build_engine(config, self.make_upstream)
        self.policy = self.make_upstream("policy", config.policy_base_url) if config.policy_base_url else None
        self.batcher = Batcher(self.engine, config.max_batch_size, config.batch_wait_ms, config.max_queue,
                               self.metrics, continuous=config.continuous)
        self.query_format = query_format_for(self.engine.template, config.query_format)
        self.defaults = default_objectives(config, self.engine)
        self.engine.objectives(self.defaults)  # an unknown default key fails at startup, not per request
        self.static_dir = Path(config.static_dir) if config.static_dir else STATIC_DIR

    def make_upstream(self, role: str, base_url: str) -> Upstream:
        from metaaligner.serve.config import ALIGNER_KEY_ENVS

        envs = POLICY_KEY_ENVS if role == "policy" else ALIGNER_KEY_ENVS
        upstream = Upstream(role, base_url, envs, self.config.upstream_timeout, self.config.upstream_retries)
        upstream.on_error = self.metrics.upstream_error
        self.upstreams.append(upstream)
        return upstream

    async def start(self) -> None:
        await self.batcher.start()
        if hasattr(self.engine, "load"):
            await self.batcher.run_in_worker(self.engine.load)

    async def stop(self) -> None:
        await self.batcher.stop()
        for upstream in self.upstreams:
            await upstream.close()

    # ------------------------------------------------------------------ helpers
    def objectives(self, value: Any) -> tuple[list[str], list[str]]:
        try:
            return self.engine.objectives(self.defaults if value is None else value)
        except ObjectiveError as exc:
            raise ApiError(400, str(exc), "unknown_objective") from None
        except MetaAlignerError as exc:
            raise ApiError(400, str(exc), "invalid_objective") from None

    def submit(self, row: Row, stream: bool = False):
        try:
            return self.batcher.submit(row, stream)
        except QueueFull as exc:
            raise ApiError(429, str(exc), "queue_full", {"Retry-After": str(RETRY_AFTER_S)}) from None

    async def align(self, row: Row):
        job = self.submit(row)
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self.batcher.cancel(job)
            raise
        except UpstreamError as exc:
            raise ApiError(exc.status, str(exc), "upstream_error") from None
        except MetaAlignerError as exc:
            raise ApiError(500, f"the aligner failed: {exc}", "aligner_error") from None

    def objective_list(self) -> list[dict]:
        """The objectives a request can name: the aligner's group, the user's, and the defaults' own."""
        registry, group = self.engine.registry, self.engine.group
        trained = set(self.engine.source.objectives)
        chosen = []
        for obj in registry.group("user") + (registry.group(group) if group else
                                             [o for g in registry.groups() for o in registry.group(g)]):
            chosen.append(obj)
        for key in self.defaults:
            try:
                obj = registry.get(key, group)
            except MetaAlignerError:
                continue
            chosen.append(obj)
        seen_keys, out = set(), []
        for obj in chosen:
            if (obj.group, obj.key) in seen_keys:
                continue
            seen_keys.add((obj.group, obj.key))
            seen = (obj.key in trained) if trained else not obj.unseen
            out.append({"key": obj.key, "name": obj.name, "description": obj.description, "group": obj.group,
                        "seen": seen, "default": obj.key in self.default_keys})
        return out

    @property
    def default_keys(self) -> list[str]:
        return self.engine.objectives(self.defaults)[0]


async def read_json(request: Request, limit: int) -> dict:
    """The request body as a JSON object: 413 over ``limit`` bytes, 400 when it is not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is over the limit of {limit} bytes (--max_body_bytes)",
                       "body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes (--max_body_bytes)",
                           "body_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ApiError(400, f"request body is not valid JSON{where}", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", "invalid_json")
    return body


async def until_disconnect(request: Request, coro):
    """``await coro``, cancelled (``ClientGone``) as soon as the client disconnects."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.1)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
                raise ClientGone()
    except asyncio.CancelledError:
        task.cancel()
        raise


def _flag(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false, got {json.dumps(value)}", f"invalid_{name}")
    return value


class _Observe:
    """Pure ASGI middleware: the client key check (``/v1/*`` and ``/metrics``), and per-route counts and latency."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path if path in ROUTES else ("/static" if path.startswith("/static/") else "other")
        start = time.perf_counter()
        status = {"code": 500}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if self.service.client_key and (path.startswith("/v1/") or path == "/metrics"):
                headers = dict(scope.get("headers") or [])
                given = headers.get(b"authorization", b"").decode("latin-1")
                token = given[7:].strip() if given[:7].lower() == "bearer " else ""
                if not hmac.compare_digest(token.encode(), self.service.client_key.encode()):
                    reason = ("wrong API key" if token else "no API key; send the server's METAALIGNER_API_KEY "
                              "as a bearer token in the Authorization header")
                    response = error_response(401, f"unauthorized: {reason}", "invalid_api_key",
                                              {"WWW-Authenticate": "Bearer"})
                    return await response(scope, receive, send_and_note)
            return await self.app(scope, receive, send_and_note)
        finally:
            m = self.service.metrics
            m.requests.labels(route=route, status=str(status["code"])).inc()
            m.request_seconds.labels(route=route).observe(time.perf_counter() - start)


def create_app(config: ServeConfig, engine: BaseEngine | None = None) -> FastAPI:
    service = Service(config, engine)

    @asynccontextmanager
    async def lifespan(_app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="MetaAligner", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _add_error_handlers(app)
    _add_info_routes(app, service)
    _add_align_route(app, service)
    _add_chat_route(app, service)
    _add_page_routes(app, service)
    return _Observe(app, service)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return error_response(exc.status, str(exc), exc.code, exc.headers)

    @app.exception_handler(ClientGone)
    async def _gone(_request, _exc):
        return Response(status_code=CLIENT_GONE)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return error_response(exc.status_code, message, "not_found" if exc.status_code == 404 else None)


def _add_info_routes(app: FastAPI, service: Service) -> None:
    """/health, /metrics, /v1/objectives and /v1/models (the policy's, passed through)."""
    config = service.config

    @app.get("/health")
    async def health():
        e = service.engine
        return {"status": "ok", "policy": service.policy is not None, "aligner": e.label,
                "template": e.template, "query_format": service.query_format, "objectives": service.default_keys,
                "guard": e.guard, "streams_live": e.streams_live, "max_batch_size": config.max_batch_size,
                "auth": service.client_key is not None}

    @app.get("/metrics")
    async def metrics():
        data, content_type = service.metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/v1/objectives")
    async def objectives():
        return {"objectives": service.objective_list(), "defaults": service.default_keys,
                "group": service.engine.group, "template": service.engine.template}

    @app.get("/v1/models")
    async def models():
        if service.policy is None:
            return {"object": "list", "data": []}
        try:
            return await service.policy.models()
        except UpstreamError as exc:
            raise ApiError(exc.status, str(exc), "upstream_error") from None


def _add_align_route(app: FastAPI, service: Service) -> None:
    """POST /v1/align: the aligner alone on a given question (or conversation) and answer."""
    @app.post("/v1/align")
    async def align(request: Request):
        body = await read_json(request, service.config.max_body_bytes)
        if "messages" in body and "query" not in body:  # a conversation: formatted as chat requests are
            try:
                body["query"] = to_query(body["messages"], service.query_format)
            except MetaAlignerError as exc:
                raise ApiError(400, str(exc), "invalid_messages") from None
        for name in ("query", "answer"):
            if not isinstance(body.get(name), str):
                raise ApiError(400, f"'{name}' is required and must be a string", f"missing_{name}")
        labels, descriptions = service.objectives(body.get("objectives"))
        start = time.perf_counter()
        outcome = await until_disconnect(request, service.align(Row(body["query"], body["answer"], labels,
                                                                    descriptions)))
        return {"aligned": outcome.text, "original": body["answer"], "objectives": labels,
                "guard_fallback": outcome.guard_fallback, "seconds": round(time.perf_counter() - start, 4),
                "aligner": service.engine.label, "guard": outcome.action}


def _check_chat_body(body: dict) -> list[dict]:
    """The request's messages; what the proxy cannot honour (n > 1, tools) refused in words."""
    try:
        messages = check_messages(body.get("messages"))
    except MetaAlignerError as exc:
        raise ApiError(400, str(exc), "invalid_messages") from None
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise ApiError(400, f"n={json.dumps(n)} is not supported: the proxy aligns exactly one answer per "
                       "request (send n requests)", "n_not_supported")
    refused = [f for f in REFUSED_FIELDS if body.get(f)]
    if refused:
        raise ApiError(400, f"{', '.join(refused)} not supported: the aligner edits text answers, not tool "
                       "calls (call the policy directly for tools)", "tools_not_supported")
    return messages


async def _ask_policy(service: Service, request: Request, body: dict) -> tuple[dict, str, str, float]:
    """The policy's completion for the request minus our fields, its text answer, the model that answered,
    and the seconds it took."""
    if service.policy is None:
        raise ApiError(503, "no policy is configured (start the server with --policy_base_url URL); "
                       "POST /v1/align aligns a given answer without one", "no_policy")
    forward = {k: v for k, v in body.items() if k not in OUR_FIELDS + ("stream", "stream_options")}
    if service.config.policy_model:
        forward["model"] = service.config.policy_model
    if not forward.get("model"):
        raise ApiError(400, "'model' is required (or start the server with --policy_model NAME)", "missing_model")
    started = time.perf_counter()
    try:
        answer = await until_disconnect(request, service.policy.chat(forward))
    except UpstreamError as exc:
        raise ApiError(exc.status, str(exc), "upstream_error") from None
    policy_s = time.perf_counter() - started
    service.metrics.policy_seconds.observe(policy_s)
    original = (answer["choices"][0].get("message") or {}).get("content")
    if not isinstance(original, str):
        raise ApiError(502, f"{service.policy.where}: answered without text content (tool calls or refusal)",
                       "upstream_error")
    return answer, original, answer.get("model") or forward["model"], policy_s


def _add_chat_route(app: FastAPI, service: Service) -> None:
    """POST /v1/chat/completions: the policy's answer, aligned (or passed through with align false)."""
    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_json(request, service.config.max_body_bytes)
        messages = _check_chat_body(body)
        do_align = _flag(body, "align", True)
        stream = _flag(body, "stream", False)
        labels, descriptions = service.objectives(body.get("objectives")) if do_align else ([], [])
        policy_answer, original, policy_model, policy_s = await _ask_policy(service, request, body)
        extra = {"original": original, "objectives": labels, "aligner": service.engine.label if do_align else None,
                 "guard_fallback": False, "policy_model": policy_model, "aligned": do_align}
        if not do_align:
            result = dict(policy_answer, metaaligner=extra)
            if stream:
                return StreamingResponse(_sse_whole(result, original), media_type="text/event-stream")
            return result
        row = Row(to_query(messages, service.query_format), original, labels, descriptions)
        completion_id = f"chatcmpl-ma{uuid.uuid4().hex[:20]}"
        created = int(time.time())
        if stream:
            job = service.submit(row, stream=True)
            return StreamingResponse(_sse_aligned(service, job, completion_id, created, policy_model, extra,
                                                  policy_s), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        a_start = time.perf_counter()
        outcome = await until_disconnect(request, service.align(row))
        extra.update(guard_fallback=outcome.guard_fallback, guard=outcome.action,
                     seconds={"policy": round(policy_s, 4), "aligner": round(time.perf_counter() - a_start, 4)})
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": policy_model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.text},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": policy_answer.get("usage"), "metaaligner": extra}


def _add_page_routes(app: FastAPI, service: Service) -> None:
    """GET / (the playground page) and /static/ (its script and style)."""
    @app.get("/", response_class=HTMLResponse)
    async def playground():
        page = service.static_dir / PLAYGROUND
        if not page.is_file():
            return HTMLResponse("<!doctype html><title>MetaAligner</title><h1>404: no playground page</h1>"
                                f"<p>{PLAYGROUND} is not installed beside the server (metaaligner/serve/static/). "
                                "The API works: see /health and /v1/objectives.</p>", status_code=404)
        return FileResponse(page, media_type="text/html")

    @app.get("/static/{name:path}")
    async def static(name: str):
        root = service.static_dir.resolve()
        path = (root / name).resolve()
        if not path.is_file() or root not in path.parents:
            raise ApiError(404, f"no static file {name!r}", "not_found")
        return FileResponse(path)


def _chunk(completion_id: str, created: int, model: str, delta: dict, finish: str | None = None,
           **extra) -> str:
    payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _sse_whole(result: dict, text: str):
    """A pass-through (``align: false``) answer as one content chunk."""
    cid, model = result.get("id", "chatcmpl-ma"), result.get("model")
    created = int(result.get("created") or time.time())
    yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
    yield _chunk(cid, created, model, {"content": text})
    yield _chunk(cid, created, model, {}, "stop", metaaligner=result["metaaligner"])
    yield "data: [DONE]\n\n"


async def _sse_aligned(service: Service, job, cid: str, created: int, model: str, extra: dict, policy_s: float):
    """The aligned answer as OpenAI chunks while the aligner writes it, the ``metaaligner`` field on the last
    chunk, then ``[DONE]``. Leading and trailing whitespace of the whole text is held back, so the chunks join
    to exactly the non-streamed answer. A client that leaves cancels the job (its generation stops)."""
    start = time.perf_counter()
    finished = False
    try:
        yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
        began, pending = False, ""
        while True:
            piece = await job.pieces.get()
            if piece is None:
                break
            pending += piece
            if not began:
                pending = pending.lstrip()
                began = bool(pending)
            cut = len(pending.rstrip())
            if cut:
                yield _chunk(cid, created, model, {"content": pending[:cut]})
                pending = pending[cut:]
        try:
            outcome = await job.future
        except UpstreamError as exc:
            yield f"data: {json.dumps(error_body(exc.status, str(exc), 'upstream_error'))}\n\n"
            finished = True
            return
        except Exception as exc:  # the aligner failed mid-stream: one error event, then the end
            log.error("aligner failed: %s", redact_text(f"{type(exc).__name__}: {exc}"))
            yield f"data: {json.dumps(error_body(500, f'the aligner failed: {type(exc).__name__}'))}\n\n"
            finished = True
            return
        extra = dict(extra, guard_fallback=outcome.guard_fallback, guard=outcome.action,
                     seconds={"policy": round(policy_s, 4), "aligner": round(time.perf_counter() - start, 4)})
        yield _chunk(cid, created, model, {}, "stop", metaaligner=extra)
        yield "data: [DONE]\n\n"
        finished = True
    finally:
        if not finished:
            service.batcher.cancel(job)
