"""The judge engine (the real ``openai`` client against any OpenAI-compatible endpoint) and cost metering.

Retries: the client's own ``max_retries`` does exponential backoff (0.5 s doubling to 8 s, jittered,
or the server's ``retry-after`` / ``retry-after-ms``) on 408/409/429/5xx, timeouts and connection
errors. A call that still fails raises ``JudgeCallError``: its row is left unjudged (and retried on the
next run), never filled with another call's reply.

The key comes from ``OPENAI_API_KEY`` only; it is never a flag and never logged. Local servers
(vLLM, llama.cpp, ``transformers serve``) get a placeholder key when the variable is unset.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from metaaligner.errors import MetaAlignerError
from metaaligner.generation.openai_backend import resolve_api_key  # the one key rule, shared with generation
from metaaligner.judge.cache import Completion


class JudgeCallError(Exception):
    """A judge call that failed after all retries. Its message (printed, and stored in the cache's
    failures table) goes through ``metaaligner.io.redact_text``: an upstream error body that echoes the
    key or the Authorization header never carries them further."""

    def __init__(self, message: str):
        from metaaligner.io import redact_text

        super().__init__(redact_text(message))


class _Malformed(Exception):
    """A 200 response that is not a valid chat completion."""


class BudgetExceeded(Exception):
    """The next call could push the spend past ``--max_cost``."""


# Reply tokens booked per call by the cost meter when no max_tokens is sent (API-default decoding).
UNSET_MAX_TOKENS_ESTIMATE = 64


@dataclass(frozen=True)
class Decoding:
    """What is sent with each request; None = not sent (the endpoint's default)."""

    temperature: float | None = 0.0
    seed: int | None = 0
    max_tokens: int | None = 32

    @property
    def reply_budget(self) -> int:
        """Reply tokens to book for a call: ``max_tokens``, or an estimate when none is sent."""
        return self.max_tokens if self.max_tokens else UNSET_MAX_TOKENS_ESTIMATE

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "seed": self.seed, "max_tokens": self.max_tokens}


class OpenAIChatEngine:
    """``complete(messages, decoding) -> Completion`` over ``client.chat.completions.create``; thread-safe."""

    def __init__(self, model: str, base_url: str | None = None, timeout: float = 60.0, max_retries: int = 6,
                 malformed_retries: int = 2):
        from openai import OpenAI

        self.model = model
        self.malformed_retries = malformed_retries
        self.base_url = base_url or None
        if self.base_url:
            check_reachable(self.base_url)
        self.client = OpenAI(base_url=self.base_url, api_key=resolve_api_key(self.base_url),
                             timeout=timeout, max_retries=max_retries)

    def complete(self, messages: list[dict[str, str]], decoding: Decoding) -> Completion:
        """One reply; a body that is not a valid completion (the client does not retry those) is
        re-requested up to ``malformed_retries`` times with exponential backoff."""
        for attempt in range(self.malformed_retries + 1):
            try:
                return self._complete_once(messages, decoding)
            except _Malformed as exc:
                if attempt == self.malformed_retries:
                    raise JudgeCallError(f"malformed response ({exc})") from None
                time.sleep(min(0.25 * 2 ** attempt, 4.0))
        raise AssertionError("unreachable")

    def _complete_once(self, messages: list[dict[str, str]], decoding: Decoding) -> Completion:
        import openai

        kwargs = {"model": self.model, "messages": messages}
        for name in ("temperature", "max_tokens", "seed"):  # None: not sent, the API's default applies
            if getattr(decoding, name) is not None:
                kwargs[name] = getattr(decoding, name)
        try:
            response = self.client.chat.completions.create(**kwargs)
        except openai.APIStatusError as exc:
            raise JudgeCallError(f"HTTP {exc.status_code}: {_short(exc.message)}") from None
        except openai.APITimeoutError:
            raise JudgeCallError("request timed out (after retries)") from None
        except openai.APIConnectionError as exc:
            from metaaligner.io import redact_text, redact_url

            where = redact_url(self.base_url) or "the OpenAI API"
            raise JudgeCallError(f"connection error to {where}: {redact_text(_short(str(exc)))}") from None
        except openai.APIResponseValidationError as exc:
            raise _Malformed(_short(str(exc), 120)) from None
        except openai.APIError as exc:
            raise JudgeCallError(f"{type(exc).__name__}: {_short(str(exc))}") from None
        except ValueError as exc:  # a 200 whose body is not JSON
            raise _Malformed(f"body is not JSON: {_short(str(exc), 120)}") from None
        choices = getattr(response, "choices", None) or []
        if not choices:
            raise _Malformed("no choices")
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None) or ""
        usage = getattr(response, "usage", None)
        return Completion(text=text, prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                          completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                          finish_reason=getattr(choices[0], "finish_reason", None))


def check_reachable(base_url: str, timeout: float = 5.0) -> None:
    """Fail at once, naming the URL, when nothing listens at ``base_url`` (the client would retry a
    refused connection with backoff for every row)."""
    import socket
    from urllib.parse import urlsplit

    from metaaligner.io import redact_url

    try:
        parts = urlsplit(base_url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise MetaAlignerError(f"--base_url {redact_url(base_url)!r} is not a URL ({exc})") from None
    if not host or parts.scheme not in ("http", "https"):
        raise MetaAlignerError(f"--base_url {redact_url(base_url)!r} is not an http(s) URL like http://127.0.0.1:8000/v1")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except ConnectionRefusedError:
        raise MetaAlignerError(f"{redact_url(base_url)}: connection refused; is the server running there? "
                               "(check --base_url)") from None
    except socket.gaierror as exc:
        raise MetaAlignerError(f"{redact_url(base_url)}: unknown host {host!r} ({exc.strerror}); "
                               "check --base_url") from None
    except OSError:
        pass  # slow or filtered: the client's timeout and retries decide


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def estimate_prompt_tokens(messages: list[dict[str, str]], bytes_per_token: float = 3.0) -> int:
    """A deliberately high estimate (English BPE averages ~4 bytes per token) plus chat overhead."""
    total = sum(len(str(m.get("content", "")).encode("utf-8")) for m in messages)
    return math.ceil(total / bytes_per_token) + 4 * len(messages) + 3


class CostMeter:
    """Running spend in USD with reservations, so ``max_cost`` is never exceeded by calls in flight.

    Before a call, ``reserve(estimate)`` books its upper estimate (prompt estimate + ``max_tokens``
    output); ``settle`` replaces the booking with the real cost from the response's usage.
    """

    def __init__(self, price_in: float = 0.0, price_out: float = 0.0, max_cost: float = 0.0):
        self.price_in, self.price_out, self.max_cost = float(price_in), float(price_out), float(max_cost)
        self.spent = 0.0
        self.reserved = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0
        self._lock = threading.Lock()

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens / 1000 * self.price_in + completion_tokens / 1000 * self.price_out

    def estimate(self, messages: list[dict[str, str]], max_tokens: int) -> float:
        return self.cost(estimate_prompt_tokens(messages), max_tokens)

    def reserve(self, amount: float) -> bool:
        with self._lock:
            if self.max_cost > 0 and self.spent + self.reserved + amount > self.max_cost:
                return False
            self.reserved += amount
            return True

    def release(self, amount: float) -> None:
        with self._lock:
            self.reserved = max(0.0, self.reserved - amount)

    def settle(self, amount: float, prompt_tokens: int, completion_tokens: int) -> float:
        actual = self.cost(prompt_tokens, completion_tokens)
        with self._lock:
            self.reserved = max(0.0, self.reserved - amount)
            self.spent += actual
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.calls += 1
        return actual


def make_engine(run) -> OpenAIChatEngine:
    """The ``openai`` engine of ``judge.engines``: ``run.judge_model`` at ``run.base_url``."""
    return OpenAIChatEngine(run.judge_model, base_url=run.base_url, timeout=run.timeout, max_retries=run.max_retries)
