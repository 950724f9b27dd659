"""Clients of the OpenAI-compatible servers behind the proxy: the policy and a remote aligner.

Async (the event loop never blocks on them), with retries: a request that fails to connect, times
out, or gets 429 or a 5xx is tried again up to ``retries`` times, waiting 0.25 s, 0.5 s, 1 s, ...
(or the server's ``retry-after-ms`` / ``Retry-After``, at most 5 s). What still fails raises
``UpstreamError`` naming the upstream by its redacted URL (``metaaligner.io.redact_url``) and the
reason with every secret removed (``redact_text``): no key or credential-bearing URL reaches a
client, a log or a metric label.

Keys come from the environment only (``POLICY_API_KEY`` / ``ALIGNER_API_KEY``, else ``OPENAI_API_KEY``,
as ``metaaligner.generation.openai_backend.resolve_api_key`` reads it); without one a placeholder
is sent, which local servers accept.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import AsyncIterator

from metaaligner.io import redact_text, redact_url, register_secret

try:  # the openai client depends on httpx (or, in newer releases, its fork httpx2)
    import httpx
except ImportError:  # pragma: no cover - depends on the installed openai client
    import httpx2 as httpx

log = logging.getLogger("metaaligner.serve")

RETRY_STATUSES = (408, 409, 429, 500, 502, 503, 504)
# 4xx answers that are the client's own mistake (a bad model name, a bad field): passed on with the
# upstream's status; any other failure is the proxy's upstream failing, a 502.
CLIENT_STATUSES = (400, 404, 413, 422)
MAX_BACKOFF_S = 5.0


class UpstreamError(Exception):
    """An upstream request that failed for good. ``status``: the HTTP status the proxy answers with."""

    def __init__(self, message: str, status: int = 502, upstream_status: int | None = None):
        super().__init__(redact_text(message))
        self.status, self.upstream_status = status, upstream_status


def api_key(envs: tuple[str, ...]) -> str:
    """The first key set among ``envs`` (registered as a secret, so it is redacted everywhere), else a placeholder."""
    for name in envs:
        value = os.environ.get(name, "")
        if value:
            register_secret(value)
            return value
    return "EMPTY"


def _error_detail(response) -> str:
    """The upstream's error message (OpenAI's ``{"error": {"message"}}`` or the body's first line), redacted."""
    try:
        body = response.json()
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    if not message:
        message = (response.text or "").strip().splitlines()[0][:200] if (response.text or "").strip() else ""
    return redact_text(f"HTTP {response.status_code}" + (f": {message}" if message else ""))


def _retry_wait(response, attempt: int) -> float:
    wait = 0.25 * (2 ** attempt)
    if response is not None:
        ms = response.headers.get("retry-after-ms")
        seconds = response.headers.get("retry-after")
        try:
            if ms is not None:
                wait = float(ms) / 1000.0
            elif seconds is not None:
                wait = float(seconds)
        except ValueError:
            pass
    return max(0.0, min(wait, MAX_BACKOFF_S))


class Upstream:
    """One OpenAI-compatible server (``base_url`` ends in ``/v1``), called as ``role`` ("policy", "aligner")."""

    def __init__(self, role: str, base_url: str, key_envs: tuple[str, ...], timeout: float = 600.0,
                 retries: int = 2, max_connections: int = 256):
        self.role = role
        self.base_url = base_url.rstrip("/")
        self.shown_url = redact_url(self.base_url)
        self.retries = retries
        self._key = api_key(key_envs)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"Authorization": f"Bearer {self._key}"}, follow_redirects=False)
        self.on_error = None  # a callable(role) counting failures (metrics)

    @property
    def where(self) -> str:
        return f"{self.role} upstream {self.shown_url}"

    async def close(self) -> None:
        await self._client.aclose()

    def _fail(self, message: str, status: int = 502, upstream_status: int | None = None) -> UpstreamError:
        if self.on_error is not None:
            self.on_error(self.role)
        error = UpstreamError(f"{self.where}: {message}", status, upstream_status)
        log.warning("%s", error)  # redacted already; the root handler's filter redacts again
        return error

    async def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON answer of one request, retried as the module docstring says."""
        url = self.base_url + path
        response = None
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                response = await self._client.request(method, url, json=body)
            except httpx.TimeoutException:
                reason, response = "timed out", None
            except httpx.TransportError as exc:
                reason, response = f"unreachable ({type(exc).__name__})", None
            else:
                if response.status_code < 400:
                    try:
                        data = response.json()
                    except ValueError:
                        raise self._fail("answered with a body that is not JSON") from None
                    if not isinstance(data, dict):
                        raise self._fail("answered with JSON that is not an object")
                    return data
                reason = _error_detail(response)
                if response.status_code not in RETRY_STATUSES:
                    status = response.status_code if response.status_code in CLIENT_STATUSES else 502
                    raise self._fail(f"answered {reason}", status, response.status_code)
            if attempt + 1 < attempts:
                await asyncio.sleep(_retry_wait(response, attempt))
        tail = f" after {attempts} attempts" if attempts > 1 else ""
        verb = "answered " if response is not None else ""
        raise self._fail(f"failed{tail}: {verb}{reason}", 502, response.status_code if response is not None else None)

    async def chat(self, body: dict) -> dict:
        data = await self.request("POST", "/chat/completions", body)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._fail("answered without choices")
        return data

    async def models(self) -> dict:
        return await self.request("GET", "/models")

    async def complete(self, prompt: str, model: str, params: dict, api: str = "completions") -> str:
        """One aligner generation: the raw prompt to ``/completions``, or one user message to ``/chat/completions``."""
        if api == "chat":
            data = await self.chat({"model": model, "messages": [{"role": "user", "content": prompt}], **params})
            return str((data["choices"][0].get("message") or {}).get("content") or "").strip()
        data = await self.request("POST", "/completions", {"model": model, "prompt": prompt, **params})
        choices = data.get("choices") or [{}]
        return str(choices[0].get("text") or "").strip()

    async def stream(self, prompt: str, model: str, params: dict, api: str = "completions") -> AsyncIterator[str]:
        """The aligner's text pieces as the server sends them (``stream: true``). A server that answers a
        streamed request with one JSON body (some scripted or minimal servers) yields its text once.
        Only the connection is retried; once text has come, a failure ends the stream with an error."""
        if api == "chat":
            path, body = "/chat/completions", {"model": model, "messages": [{"role": "user", "content": prompt}]}
        else:
            path, body = "/completions", {"model": model, "prompt": prompt}
        body.update(params, stream=True)
        attempts = self.retries + 1
        sent = False
        for attempt in range(attempts):
            try:
                async with self._client.stream("POST", self.base_url + path, json=body) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        reason = _error_detail(response)
                        if response.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                            await asyncio.sleep(_retry_wait(response, attempt))
                            continue
                        raise self._fail(f"answered {reason}")
                    if "text/event-stream" not in response.headers.get("content-type", ""):
                        data = json.loads((await response.aread()) or b"{}")
                        choice = (data.get("choices") or [{}])[0]
                        text = choice.get("text") if api != "chat" else (choice.get("message") or {}).get("content")
                        if text:
                            sent = True
                            yield str(text).strip()
                        return
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == "[DONE]":
                            return
                        choice = (json.loads(payload).get("choices") or [{}])[0]
                        piece = choice.get("text") if api != "chat" else (choice.get("delta") or {}).get("content")
                        if piece:
                            sent = True
                            yield piece
                    return
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt + 1 < attempts and not sent:
                    await asyncio.sleep(_retry_wait(None, attempt))
                    continue
                raise self._fail(f"failed: {type(exc).__name__}" if sent else
                                 f"failed after {attempt + 1} attempts: {type(exc).__name__}") from None
            except ValueError:
                raise self._fail("sent a stream that is not JSON") from None
