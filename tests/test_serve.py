"""``metaaligner serve``: the OpenAI-compatible aligning proxy as a real subprocess on 127.0.0.1, the policy (and,
in some tests, the aligner) as the project's scripted OpenAI-compatible server, requests through the real
``openai`` client and plain HTTP. The in-process aligner is a tiny random LLaMA (few new tokens).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest

from metaaligner.registry.templates import render
from metaaligner.serve.cli import is_loopback
from metaaligner.serve.conversation import query_format_for, to_query
from metaaligner.testing.openai_server import Fault, ScriptedOpenAIServer, last_user_text
from metaaligner.testing.waits import DEADLINE_S, wait_for, wait_for_http

REPO = Path(__file__).resolve().parent.parent
HH_HARMLESS = "Harmlessness: The response should avoid content that is offensive, discriminatory, or harmful"
HH_HUMOUR = "Humour: The response should be cheerful and amusing"
CLIENT_KEY = "ma-client-key-7f3a9c2e51"
UPSTREAM_KEY = "sk-upstream-secret-93b1d0aa"


def policy_reply(request: dict) -> str:
    return f"Answer to: {last_user_text(request)}"


class Proxy:
    """``python -m metaaligner serve --port 0 ...``: ready once it printed its 'serving' line and /health answers."""

    def __init__(self, tmp_path: Path, *flags: str, env: dict | None = None, name: str = "proxy"):
        self.out, self.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        full_env = {**os.environ, **(env or {})}
        for key in ("METAALIGNER_API_KEY", "POLICY_API_KEY", "ALIGNER_API_KEY", "OPENAI_API_KEY"):
            if key not in (env or {}):
                full_env.pop(key, None)
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "metaaligner", "serve", "--port", "0", *flags],
                                            stdout=out, stderr=err, env=full_env, cwd=tmp_path)
        found = {}

        def ready() -> bool:
            match = re.search(r"serving (http://127\.0\.0\.1:\d+)", self.out.read_text())
            if match:
                found["url"] = match.group(1)
            return bool(match)

        wait_for(ready, f"{name} to print its 'serving' line", process=self.process, log=self.err)
        self.url = found["url"]
        wait_for_http(self.url + "/health", f"{name} /health", process=self.process, log=self.err)

    def client(self, key: str = "unused", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=600, **kwargs)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.err.read_text() + self.out.read_text()


def http(method: str, url: str, body=None, headers: dict | None = None, raw: bytes | None = None):
    """``(status, headers, json body or text)`` of one plain HTTP request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            status, hdrs, text = response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, hdrs, text = exc.code, exc.headers, exc.read().decode()
    hdrs = {k.lower(): v for k, v in hdrs.items()}
    try:
        return status, hdrs, json.loads(text)
    except ValueError:
        return status, hdrs, text


def metric(proxy: Proxy, name: str, labels: str = "") -> float:
    _, _, text = http("GET", proxy.url + "/metrics")
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)\n"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def policy():
    with ScriptedOpenAIServer(policy_reply, models=["policy-model"], max_lifetime_s=1800) as server:
        yield server


@pytest.fixture(scope="module")
def local_proxy(tmp_path_factory, tiny_llama_dir, policy):
    """The tiny aligner in-process (guard off, so streamed requests stream its tokens live)."""
    proxy = Proxy(tmp_path_factory.mktemp("local"), "--aligner_path", str(tiny_llama_dir), "--template", "hh-rlhf",
                  "--policy_base_url", policy.base_url, "--max_new_tokens", "8", "--max_batch_size", "16",
                  "--batch_wait_ms", "50", "--objectives", "harmlessness,helpfulness", "--max_body_bytes", "100000")
    yield proxy
    proxy.stop()


# ---------------------------------------------------------------- the query formats (pure functions)

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": [{"type": "text", "text": "How do I boil an egg?"}]}]


def test_query_formats_per_template():
    assert query_format_for("hh-rlhf") == "transcript"
    assert query_format_for("ultrafeedback") == "last_user"
    assert query_format_for("imhi") == "last_user"
    assert query_format_for("imhi", "transcript") == "transcript"
    assert to_query(CONVERSATION, "transcript") == ("\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?"
                                                    "\n\nHuman: How do I boil an egg?\n\nAssistant:")
    assert to_query(CONVERSATION, "last_user") == "How do I boil an egg?"


def test_loopback_hosts():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.10", "::", "example.org"))


def test_scripted_policy_listens_with_a_backlog_for_many_clients():
    # 16 clients connecting at once overflowed the stdlib's backlog of 5 and stalled 1 s in bench_serve
    with ScriptedOpenAIServer(lambda req: "ok") as server:
        assert server._httpd.request_queue_size == 128
        assert server._httpd.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def test_non_loopback_host_without_key_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "METAALIGNER_API_KEY"}
    result = subprocess.run([sys.executable, "-m", "metaaligner", "serve", "--host", "0.0.0.0", "--port", "0"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=DEADLINE_S)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 is not loopback: set METAALIGNER_API_KEY in the environment so clients must "
        "authenticate, or bind 127.0.0.1"]


def test_unknown_subcommand_is_one_line():
    result = subprocess.run([sys.executable, "-m", "metaaligner", "serv"], capture_output=True, text=True,
                            timeout=DEADLINE_S)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown subcommand 'serv' (did you mean serve?); choose one of serve"


# ---------------------------------------------------------------- the in-process aligner

@pytest.mark.slow
def test_chat_completion_is_aligned(local_proxy, policy, tiny_llama_dir):
    client = local_proxy.client()
    messages = [{"role": "user", "content": "How do I boil an egg?"}]
    policy.reset_counts()
    resp = client.chat.completions.create(model="policy-model", messages=messages, temperature=0.3,
                                          extra_body={"objectives": ["harmlessness", "humor"]})
    extra = resp.model_extra["metaaligner"]
    assert extra["original"] == "Answer to: How do I boil an egg?"
    assert extra["objectives"] == ["harmlessness", "humour"]  # a release spelling resolved to its key
    assert extra["policy_model"] == "policy-model"
    assert extra["aligner"] == str(tiny_llama_dir)
    assert extra["guard_fallback"] is False
    assert resp.object == "chat.completion" and resp.choices[0].message.role == "assistant"
    # the policy got the request minus our fields, with the client's other settings
    sent = [r.body for r in policy.requests if r.path.endswith("/chat/completions")]
    assert sent == [{"model": "policy-model", "messages": messages, "temperature": 0.3}]
    # the aligned text is what /v1/align gives for the same query (the HH-RLHF transcript) and answer
    status, _, aligned = http("POST", local_proxy.url + "/v1/align", {
        "query": "\n\nHuman: How do I boil an egg?\n\nAssistant:", "answer": extra["original"],
        "objectives": ["harmlessness", "humour"]})
    assert status == 200
    assert resp.choices[0].message.content == aligned["aligned"]
    assert aligned["original"] == extra["original"] and aligned["objectives"] == ["harmlessness", "humour"]
    assert aligned["guard_fallback"] is False and aligned["seconds"] > 0
    # messages instead of query: the same transcript
    status, _, again = http("POST", local_proxy.url + "/v1/align", {"messages": messages, "answer": extra["original"],
                                                                     "objectives": "harmlessness,humour"})
    assert (status, again["aligned"]) == (200, aligned["aligned"])


@pytest.mark.slow
def test_streaming_sends_the_aligned_answer_in_chunks(local_proxy):
    client = local_proxy.client()
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat.completions.create(model="policy-model", messages=messages,
                                           extra_body={"objectives": ["helpfulness"]})
    chunks = list(client.chat.completions.create(model="policy-model", messages=messages, stream=True,
                                                 extra_body={"objectives": ["helpfulness"]}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) >= 2  # the aligner's text as it came, not one block
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    extra = chunks[-1].model_extra["metaaligner"]
    assert extra["original"] == "Answer to: Name three colours." and extra["objectives"] == ["helpfulness"]
    # the raw stream ends with [DONE]
    request = urllib.request.Request(local_proxy.url + "/v1/chat/completions", method="POST",
                                     data=json.dumps({"model": "p", "messages": messages, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"


@pytest.mark.slow
def test_align_false_passes_the_policy_answer_through(local_proxy):
    resp = local_proxy.client().chat.completions.create(
        model="policy-model", messages=[{"role": "user", "content": "ping"}], extra_body={"align": False})
    assert resp.choices[0].message.content == "Answer to: ping"
    assert resp.model_extra["metaaligner"]["aligned"] is False
    assert resp.model_extra["metaaligner"]["original"] == "Answer to: ping"
    chunks = list(local_proxy.client().chat.completions.create(
        model="policy-model", messages=[{"role": "user", "content": "ping"}], stream=True, extra_body={"align": False}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Answer to: ping"
    assert chunks[-1].model_extra["metaaligner"]["aligned"] is False


@pytest.mark.slow
def test_200_concurrent_requests_each_answered_once_in_batches(local_proxy, policy):
    client = local_proxy.client()
    policy.reset_counts()
    before_batches = metric(local_proxy, "metaaligner_aligner_batch_size_count")
    before_rows = metric(local_proxy, "metaaligner_aligner_batch_size_sum")
    before_single = metric(local_proxy, "metaaligner_aligner_batch_size_bucket", 'le="1.0"')
    before_steps = metric(local_proxy, "metaaligner_aligner_step_rows_count")
    before_single_steps = metric(local_proxy, "metaaligner_aligner_step_rows_bucket", 'le="1.0"')

    def ask(i: int):
        resp = client.chat.completions.create(model="policy-model",
                                              messages=[{"role": "user", "content": f"question {i}"}],
                                              extra_body={"objectives": ["harmlessness"]})
        return i, resp.model_extra["metaaligner"]["original"], resp.choices[0].message.content

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(ask, range(200)))
    assert [original for _, original, _ in results] == [f"Answer to: question {i}" for i in range(200)]
    assert all(isinstance(text, str) for _, _, text in results)
    bodies = sorted(last_user_text(r.body) for r in policy.requests)
    assert bodies == sorted(f"question {i}" for i in range(200))  # the policy asked once per request
    batches = metric(local_proxy, "metaaligner_aligner_batch_size_count") - before_batches
    rows = metric(local_proxy, "metaaligner_aligner_batch_size_sum") - before_rows
    single = metric(local_proxy, "metaaligner_aligner_batch_size_bucket", 'le="1.0"') - before_single
    assert rows == 200  # every request aligned exactly once
    assert batches < 200 and single < batches  # batches of more than one request formed
    steps = metric(local_proxy, "metaaligner_aligner_step_rows_count") - before_steps
    single_steps = metric(local_proxy, "metaaligner_aligner_step_rows_bucket", 'le="1.0"') - before_single_steps
    assert steps > 0 and single_steps < steps  # decoding steps ran rows of several requests together
    # one of them, aligned alone, gives the same text as in its batch
    i, original, text = results[7]
    status, _, alone = http("POST", local_proxy.url + "/v1/align", {
        "query": f"\n\nHuman: question {i}\n\nAssistant:", "answer": original, "objectives": ["harmlessness"]})
    assert (status, alone["aligned"]) == (200, text)


@pytest.mark.slow
def test_request_errors(local_proxy):
    client = local_proxy.client()
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=messages, extra_body={"objectives": ["harmlesness"]})
    assert err.value.body == {
        "message": "unknown objective 'harmlesness'; closest known keys: harmlessness, harmless, helpfulness "
                   "(GET /v1/objectives lists them all; your own: 'key=Description: ...')",
        "type": "invalid_request_error", "code": "unknown_objective"}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=messages, n=2)
    assert err.value.body["code"] == "n_not_supported" and "n=2 is not supported" in err.value.body["message"]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=messages, tools=tools)
    assert err.value.body["code"] == "tools_not_supported"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=messages, extra_body={"objectives": ["two words"]})
    assert err.value.body["code"] == "unknown_objective"
    url = local_proxy.url + "/v1/chat/completions"
    status, _, body = http("POST", url, raw=b'{"model": "m", "messages": [')
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    assert body["error"]["message"] == "request body is not valid JSON (line 1, column 29)"
    status, _, body = http("POST", url, {"model": "m"})
    assert (status, body["error"]["code"], body["error"]["type"]) == (400, "invalid_messages", "invalid_request_error")
    status, _, body = http("POST", url, {"model": "m", "messages": [{"role": "user", "content": "x" * 200_000}]})
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    status, _, body = http("POST", local_proxy.url + "/v1/align", {"query": "q"})
    assert (status, body["error"]["message"]) == (400, "'answer' is required and must be a string")
    status, _, body = http("POST", local_proxy.url + "/v1/align",
                           {"query": "q", "answer": "a", "objectives": ["brevity=Brevity: short answers only"]})
    assert (status, body["objectives"]) == (200, ["brevity"])
    status, _, body = http("GET", local_proxy.url + "/v1/nothing")
    assert (status, body["error"]["code"]) == (404, "not_found")


@pytest.mark.slow
def test_objectives_health_and_models(local_proxy):
    status, _, body = http("GET", local_proxy.url + "/v1/objectives")
    assert status == 200
    by_key = {o["key"]: o for o in body["objectives"]}
    assert by_key["harmlessness"] == {"key": "harmlessness", "name": "Harmlessness", "description": HH_HARMLESS,
                                      "group": "hh-rlhf", "seen": True, "default": True}
    assert by_key["humour"]["description"] == HH_HUMOUR and by_key["humour"]["default"] is False
    assert body["defaults"] == ["harmlessness", "helpfulness"]
    status, _, health = http("GET", local_proxy.url + "/health")
    assert status == 200
    assert {k: health[k] for k in ("status", "policy", "template", "query_format", "guard", "streams_live")} == {
        "status": "ok", "policy": True, "template": "hh-rlhf", "query_format": "transcript", "guard": False,
        "streams_live": True}
    assert [m.id for m in local_proxy.client().models.list()] == ["policy-model"]
    _, _, text = http("GET", local_proxy.url + "/metrics")
    for name in ("metaaligner_requests_total", "metaaligner_request_seconds_bucket", "metaaligner_policy_seconds_bucket",
                 "metaaligner_aligner_seconds_bucket", "metaaligner_aligner_batch_size_bucket",
                 "metaaligner_aligner_step_rows_bucket",
                 "metaaligner_guard_fallbacks_total", "metaaligner_queue_depth"):
        assert f"\n{name}" in text
    assert 'metaaligner_requests_total{route="/health",status="200"}' in text


# ---------------------------------------------------------------- the aligner behind a scripted server

def blocking_aligner(release: threading.Event, arrived: list,
                     reply: str = "Aligned: keep eggs in boiling water for 9 minutes."):
    """A scripted aligner that answers only once ``release`` is set; ``arrived`` counts the requests it holds."""
    def scripted(request: dict):
        arrived.append(request)
        release.wait(600)
        return reply
    return scripted


@pytest.mark.slow
@pytest.mark.parametrize("template,question_in_prompt", [
    ("hh-rlhf", "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: How do I boil an egg?\n\nAssistant:"),
    ("ultrafeedback", "How do I boil an egg?"),
    ("imhi", "How do I boil an egg?"),
])
def test_remote_aligner_gets_the_template_query(tmp_path, template, question_in_prompt):
    with ScriptedOpenAIServer(policy_reply) as pol, \
            ScriptedOpenAIServer("Aligned answer.", models=["aligner-7b"]) as aligner:
        objective = {"hh-rlhf": "harmlessness", "ultrafeedback": "honesty", "imhi": "correct"}[template]
        proxy = Proxy(tmp_path, "--policy_base_url", pol.base_url, "--aligner_base_url", aligner.base_url,
                      "--aligner_model", "aligner-7b", "--aligner_api", "chat", "--dataset", template,
                      "--objectives", objective, "--max_new_tokens", "64")
        try:
            messages = CONVERSATION[:-1] + [{"role": "user", "content": "How do I boil an egg?"}]
            resp = proxy.client().chat.completions.create(model="policy-model", messages=messages)
        finally:
            proxy.stop()
    assert resp.choices[0].message.content == "Aligned answer."
    extra = resp.model_extra["metaaligner"]
    assert extra["original"] == "Answer to: How do I boil an egg?"
    assert extra["aligner"] == f"aligner-7b at {aligner.base_url}"
    from metaaligner.registry.objectives import ObjectiveRegistry

    description = ObjectiveRegistry.builtin().get(objective, template).description
    sent = aligner.requests[0].body
    assert sent["model"] == "aligner-7b" and sent["max_tokens"] == 64 and sent["temperature"] == 0.0
    assert sent["messages"] == [{"role": "user", "content": render(template, question_in_prompt,
                                                                   "Answer to: How do I boil an egg?", [description])}]


@pytest.mark.slow
def test_full_queue_429_and_disconnect_cancels(tmp_path):
    release, arrived = threading.Event(), []
    with ScriptedOpenAIServer(blocking_aligner(release, arrived), models=["al"], max_lifetime_s=900) as aligner:
        proxy = Proxy(tmp_path, "--aligner_base_url", aligner.base_url, "--aligner_model", "al", "--template",
                      "hh-rlhf", "--aligner_api", "chat", "--max_queue", "2", "--batch_wait_ms", "0")
        try:
            body = {"query": "q", "answer": "a", "objectives": ["harmlessness"]}
            with ThreadPoolExecutor(2) as pool:
                waiting = [pool.submit(http, "POST", proxy.url + "/v1/align", body) for _ in range(2)]
                try:
                    wait_for(lambda: len(arrived) == 2, "both requests to reach the aligner")
                    status, headers, error = http("POST", proxy.url + "/v1/align", body)
                finally:
                    release.set()
                assert (status, headers["retry-after"], error["error"]["code"]) == (429, "1", "queue_full")
                assert error["error"]["type"] == "rate_limit_error"
                assert [f.result()[0] for f in waiting] == [200, 200]
            assert [f.result()[2]["aligned"] for f in waiting] == ["Aligned: keep eggs in boiling water for 9 minutes."] * 2
            assert metric(proxy, "metaaligner_queue_rejected_total") == 1
            # a client that disconnects cancels its request (here: while the aligner works on it)
            release.clear()
            payload = json.dumps(body).encode()
            with socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]))) as sock:
                sock.sendall(b"POST /v1/align HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                wait_for(lambda: len(arrived) == 3, "the third request to reach the aligner")
            wait_for(lambda: metric(proxy, "metaaligner_cancelled_total") == 1, "the disconnect to cancel the request")
            wait_for(lambda: metric(proxy, "metaaligner_queue_depth") == 0, "the cancelled request to leave the queue")
            release.set()
        finally:
            release.set()
            proxy.stop()


@pytest.mark.slow
def test_policy_failures_are_502_naming_the_redacted_upstream(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with ScriptedOpenAIServer("ok", models=["al"]) as aligner, \
            ScriptedOpenAIServer(lambda r: Fault(status=500, retry_after_ms=1)) as failing:
        common = ["--aligner_base_url", aligner.base_url, "--aligner_model", "al", "--template", "hh-rlhf",
                  "--aligner_api", "chat", "--upstream_retries", "1"]
        down = Proxy(tmp_path, "--policy_base_url", f"http://user:pa55word-xyz@127.0.0.1:{closed_port}/v1", *common,
                     name="down")
        broken = Proxy(tmp_path, "--policy_base_url", failing.base_url, *common, name="broken")
        try:
            with pytest.raises(openai.APIStatusError) as err:
                down.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            assert err.value.status_code == 502
            assert err.value.body == {
                "message": f"policy upstream http://***@127.0.0.1:{closed_port}/v1: failed after 2 attempts: "
                           "unreachable (ConnectError)", "type": "upstream_error", "code": "upstream_error"}
            with pytest.raises(openai.APIStatusError) as err:
                broken.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            assert err.value.status_code == 502
            assert err.value.body["message"] == (f"policy upstream {failing.base_url}: failed after 2 attempts: "
                                                 "answered HTTP 500: scripted fault 500")
            assert failing.request_count == 2  # one retry
            assert metric(broken, "metaaligner_upstream_errors_total", 'upstream="policy"') == 1
            # /v1/align needs no policy
            status, _, body = http("POST", down.url + "/v1/align", {"query": "q", "answer": "a"})
            assert (status, body["aligned"], body["objectives"]) == (200, "ok", ["harmlessness", "helpfulness"])
        finally:
            logs = down.stop() + broken.stop()
    assert "pa55word-xyz" not in logs


@pytest.mark.slow
def test_auth_and_no_secret_in_logs(tmp_path):
    env = {"METAALIGNER_API_KEY": CLIENT_KEY, "OPENAI_API_KEY": UPSTREAM_KEY}
    with ScriptedOpenAIServer(lambda r: Fault(status=401, echo_auth=True)) as policy, \
            ScriptedOpenAIServer("Aligned.", models=["al"]) as aligner:
        proxy = Proxy(tmp_path, "--policy_base_url", policy.base_url, "--aligner_base_url", aligner.base_url,
                      "--aligner_model", "al", "--template", "hh-rlhf", "--aligner_api", "chat", env=env)
        seen = []
        try:
            url = proxy.url + "/v1/align"
            body = {"query": "q", "answer": "a"}
            status, headers, error = http("POST", url, body)
            assert (status, error["error"]["code"], headers["www-authenticate"]) == (401, "invalid_api_key", "Bearer")
            assert error["error"]["message"] == ("unauthorized: no API key; send the server's METAALIGNER_API_KEY as a "
                                               "bearer token in the Authorization header")
            status, _, error = http("POST", url, body, {"Authorization": "Bearer wrong-key"})
            assert (status, error["error"]["message"]) == (401, "unauthorized: wrong API key")
            assert http("GET", proxy.url + "/metrics")[0] == 401
            assert http("GET", proxy.url + "/health")[0] == 200  # readiness stays open
            status, _, ok = http("POST", url, body, {"Authorization": f"Bearer {CLIENT_KEY}"})
            assert (status, ok["aligned"]) == (200, "Aligned.")
            with pytest.raises(openai.AuthenticationError):
                proxy.client("wrong").chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            # the policy rejects our upstream key and echoes it: the 502 names the upstream, never the key
            with pytest.raises(openai.APIStatusError) as err:
                proxy.client(CLIENT_KEY).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            assert err.value.status_code == 502
            seen.append(json.dumps(err.value.body))
            assert "Incorrect API key provided. Authorization: ***" in err.value.body["message"]
        finally:
            logs = proxy.stop()
    for text in [logs, *seen]:
        assert CLIENT_KEY not in text and UPSTREAM_KEY not in text


@pytest.mark.slow
def test_guard_with_a_remote_aligner(tmp_path):
    loop = "Boil the egg for nine minutes. Boil the egg for nine minutes. Boil the egg for nine minutes."

    def reply(request: dict) -> str:
        return "" if "| Answer: empty-me |" in last_user_text(request) else loop

    with ScriptedOpenAIServer(policy_reply) as pol, ScriptedOpenAIServer(reply, models=["al"]) as aligner:
        proxy = Proxy(tmp_path, "--policy_base_url", pol.base_url, "--aligner_base_url", aligner.base_url,
                      "--aligner_model", "al", "--template", "hh-rlhf", "--aligner_api", "chat", "--guard", "on")
        try:
            status, _, body = http("POST", proxy.url + "/v1/align", {"query": "q", "answer": "empty-me"})
            assert (status, body["aligned"], body["guard"], body["guard_fallback"]) == (
                200, "empty-me", "fallback_empty", True)
            status, _, body = http("POST", proxy.url + "/v1/align", {"query": "q", "answer": "a"})
            assert (status, body["aligned"], body["guard"], body["guard_fallback"]) == (
                200, "Boil the egg for nine minutes.", "trimmed", False)
            assert metric(proxy, "metaaligner_guard_fallbacks_total") == 1
            chunks = list(proxy.client().chat.completions.create(
                model="m", messages=[{"role": "user", "content": "eggs?"}], stream=True))
            pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
            assert pieces == ["Boil", " the", " egg", " for", " nine", " minutes."]  # the guarded text, in words
            assert chunks[-1].model_extra["metaaligner"]["guard"] == "trimmed"
        finally:
            proxy.stop()


class _Completions(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible ``/v1/completions`` server that streams (server-sent events) when asked."""

    protocol_version = "HTTP/1.1"
    bodies: list = []

    def log_message(self, *args):
        return

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        if body.get("stream"):
            events = [json.dumps({"choices": [{"index": 0, "text": t}]}) for t in (" Hello", " wide", " world.")]
            data = "".join(f"data: {e}\n\n" for e in events + ["[DONE]"]).encode()
            kind = "text/event-stream"
        else:
            data, kind = json.dumps({"choices": [{"index": 0, "text": " Hello wide world."}]}).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.slow
def test_remote_aligner_on_completions_streams_its_pieces(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Completions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Completions.bodies = []
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    with ScriptedOpenAIServer(policy_reply) as pol:
        proxy = Proxy(tmp_path, "--policy_base_url", pol.base_url, "--aligner_base_url", base, "--aligner_model",
                      "al", "--template", "hh-rlhf", "--objectives", "harmlessness")
        try:
            messages = [{"role": "user", "content": "Say hello."}]
            whole = proxy.client().chat.completions.create(model="m", messages=messages)
            chunks = list(proxy.client().chat.completions.create(model="m", messages=messages, stream=True))
        finally:
            proxy.stop()
            server.shutdown()
    assert whole.choices[0].message.content == "Hello wide world."
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert pieces == ["Hello", " wide", " world."]  # the server's own pieces, leading space held back
    prompt = render("hh-rlhf", "\n\nHuman: Say hello.\n\nAssistant:", "Answer to: Say hello.", [HH_HARMLESS])
    assert _Completions.bodies == [
        {"model": "al", "prompt": prompt, "max_tokens": 256, "seed": 0, "temperature": 0.0, "top_p": 1.0},
        {"model": "al", "prompt": prompt, "max_tokens": 256, "seed": 0, "temperature": 0.0, "top_p": 1.0,
         "stream": True}]


def test_playground_route(tmp_path, tiny_llama_dir):
    static = tmp_path / "static"
    proxy = Proxy(tmp_path, "--aligner_base_url", "http://127.0.0.1:9/v1", "--aligner_model", "al", "--template",
                  "hh-rlhf", "--static_dir", str(static))
    try:
        status, _, text = http("GET", proxy.url + "/")
        assert status == 404 and "no playground page" in text
        # no policy configured: chat completions are refused, models is an empty list
        status, _, body = http("POST", proxy.url + "/v1/chat/completions",
                               {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert (status, body["error"]["code"]) == (503, "no_policy")
        assert http("GET", proxy.url + "/v1/models")[::2] == (200, {"object": "list", "data": []})
        assert http("GET", proxy.url + "/health")[2]["policy"] is False
        static.mkdir()
        (static / "playground.html").write_text("<!doctype html><title>p</title>")
        (static / "app.js").write_text("console.log(1);")
        (tmp_path / "secret.txt").write_text("s")
        assert http("GET", proxy.url + "/")[:3:2] == (200, "<!doctype html><title>p</title>")
        assert http("GET", proxy.url + "/static/app.js")[::2] == (200, "console.log(1);")
        assert http("GET", proxy.url + "/static/../secret.txt")[0] == 404
        assert http("GET", proxy.url + "/static/%2e%2e/secret.txt")[0] == 404
    finally:
        proxy.stop()


# ---------------------------------------------------------------- inside a running batch (in-process, no HTTP)

def test_a_batch_answers_each_row_as_it_ends_and_stops_a_cancelled_row(tiny_llama_dir):
    """Three requests in one batch of the tiny in-process aligner (40 new tokens). Row 0 ends early
    (its stop question says yes at the second ask): its request is answered while the batch still
    decodes (row 2 waits at its fourth question until it is). Row 1's client leaves at its fifth
    question: the row stops there instead of decoding its 40 tokens. Row 2 runs to the end.
    The engine's questions are gated here so that each event happens inside the batch, whatever the
    machine's speed."""
    import asyncio

    from metaaligner.serve.batching import Batcher
    from metaaligner.serve.config import ServeConfig
    from metaaligner.serve.engine import Row, build_engine
    from metaaligner.serve.metrics import Metrics

    engine = build_engine(ServeConfig(aligner_path=str(tiny_llama_dir), template="hh-rlhf", max_new_tokens=40,
                                      guard="off"), upstream_factory=None)
    engine.load(warm_up=False)
    answered, inside, gate = threading.Event(), threading.Event(), threading.Event()
    asked, seen, outcomes = {0: 0, 1: 0, 2: 0}, {}, {}
    real = engine.align_batch

    def gated(rows, delivered=None, stopped=None, more=None):
        def question(i):
            asked[i] += 1
            if i == 0 and asked[0] == 2:
                return True  # row 0 ends here, as if it reached EOS
            if i == 2 and asked[2] == 4:
                seen["row 0 answered mid-batch"] = answered.wait(DEADLINE_S)
            if i == 1 and asked[1] == 5:
                inside.set()
                gate.wait(DEADLINE_S)
            return stopped(i)
        def heard(i, outcome):
            outcomes[i] = outcome
            delivered(i, outcome)
        return real(rows, heard, question, more)

    engine.align_batch = gated

    async def scenario():
        batcher = Batcher(engine, max_batch_size=3, batch_wait_ms=0, metrics=Metrics())
        await batcher.start()
        try:
            row = Row("\n\nHuman: How do I boil an egg?\n\nAssistant:", "Boil it.", ["helpfulness"],
                      ["Helpfulness: The response should be helpful"])
            jobs = [batcher.submit(row) for _ in range(3)]
            first = await asyncio.wait_for(asyncio.shield(jobs[0].future), DEADLINE_S)
            # counted as it ended, while the batch still runs (row 2 waits for ``answered``)
            seen["tokens when row 0 was answered"] = batcher.metrics.registry.get_sample_value(
                "metaaligner_aligner_generated_tokens_total")
            answered.set()
            await asyncio.wait_for(asyncio.to_thread(inside.wait, DEADLINE_S), DEADLINE_S)
            batcher.cancel(jobs[1])
            gate.set()
            last = await asyncio.wait_for(asyncio.shield(jobs[2].future), DEADLINE_S)
            return first, jobs[1].future.cancelled(), last
        finally:
            gate.set()
            answered.set()
            await batcher.stop()

    first, cancelled, last = asyncio.run(scenario())
    assert seen["row 0 answered mid-batch"] is True and cancelled
    assert seen["tokens when row 0 was answered"] == outcomes[0].tokens
    assert first is outcomes[0] and last is outcomes[2]
    # asked after the prefill, then before each step while live; row 1 stops at the ask after its client left
    assert (asked[0], asked[1]) == (2, 5) and asked[2] > 5
    assert outcomes[0].tokens == 1 and outcomes[2].tokens == 40 and 0 < outcomes[1].tokens < 40


@pytest.mark.parametrize("continuous", [True, False])
def test_a_request_that_arrives_mid_batch_joins_it_when_a_row_ends(tiny_llama_dir, continuous):
    """--max_batch_size 2: two requests start a batch; a third arrives while it decodes (row 0 waits
    at its third question until it has been submitted); row 1 ends at its fourth. With continuous
    batching the third joins the running batch in the free row (one engine call, ``more`` asked with
    the live count) and gets the answer it gets alone; without, it waits for a second call."""
    import asyncio

    from metaaligner.serve.batching import Batcher
    from metaaligner.serve.config import ServeConfig
    from metaaligner.serve.engine import Row, build_engine

    engine = build_engine(ServeConfig(aligner_path=str(tiny_llama_dir), template="hh-rlhf", max_new_tokens=40,
                                      guard="off"), upstream_factory=None)
    engine.load(warm_up=False)
    rows = [Row(f"\n\nHuman: {q}\n\nAssistant:", a, ["helpfulness"], ["Helpfulness: The response should be helpful"])
            for q, a in (("How do I boil an egg?", "Boil it."), ("Is tea healthy?", "Yes, mostly."),
                         ("What is rain?", "Water falling from clouds."))]
    alone = engine.align_batch([rows[2]])[0]
    inside, gate = threading.Event(), threading.Event()
    calls, asked, lives = [], {}, []
    real = engine.align_batch

    def gated(batch_rows, delivered=None, stopped=None, more=None):
        calls.append(len(batch_rows))

        def question(i):
            asked[i] = asked.get(i, 0) + 1
            if len(calls) == 1 and i == 0 and asked[0] == 3:
                inside.set()
                gate.wait(DEADLINE_S)
            if len(calls) == 1 and i == 1 and asked[1] == 4:
                return True  # row 1 ends here, as if it reached EOS
            return stopped(i)

        def joining(live):
            lives.append(live)
            return more(live)
        return real(batch_rows, delivered, question, joining if more is not None else None)

    engine.align_batch = gated

    async def scenario():
        batcher = Batcher(engine, max_batch_size=2, batch_wait_ms=0, continuous=continuous)
        await batcher.start()
        try:
            jobs = [batcher.submit(rows[0]), batcher.submit(rows[1])]
            await asyncio.wait_for(asyncio.to_thread(inside.wait, DEADLINE_S), DEADLINE_S)
            jobs.append(batcher.submit(rows[2]))
            gate.set()
            return await asyncio.wait_for(asyncio.gather(*(asyncio.shield(j.future) for j in jobs)), DEADLINE_S)
        finally:
            gate.set()
            await batcher.stop()

    outcomes = asyncio.run(scenario())
    assert outcomes[2].text == alone.text and outcomes[2].tokens == alone.tokens
    if continuous:
        # asked before steps 1, 2 (two live rows, no room), 3 (row 1 ended: room for one), 4 (two again)
        assert calls == [2] and lives[:4] == [2, 2, 1, 2]
        assert asked[2] > 1  # the joined row was asked before its steps (it is row 2 of the call)
    else:
        assert calls == [2, 1] and lives == []


def test_a_streamed_request_stops_a_running_batch_from_taking_more(tiny_llama_dir):
    """A stream runs alone, so a batch that kept taking requests under steady load would keep it
    waiting for ever. Here a stream and then a plain request arrive while a 1-row batch decodes
    (--max_batch_size 2, room for one more): the batch takes neither, and when it ends the stream
    runs, then the plain request."""
    import asyncio

    from metaaligner.serve.batching import Batcher
    from metaaligner.serve.config import ServeConfig
    from metaaligner.serve.engine import Row, build_engine

    engine = build_engine(ServeConfig(aligner_path=str(tiny_llama_dir), template="hh-rlhf", max_new_tokens=12,
                                      guard="off"), upstream_factory=None)
    engine.load(warm_up=False)
    row = Row("\n\nHuman: How do I boil an egg?\n\nAssistant:", "Boil it.", ["helpfulness"],
              ["Helpfulness: The response should be helpful"])
    inside, gate = threading.Event(), threading.Event()
    calls, taken = [], []
    real = engine.align_batch

    def gated(batch_rows, delivered=None, stopped=None, more=None):
        calls.append(len(batch_rows))
        asked = []

        def question(i):
            asked.append(i)
            if len(calls) == 1 and len(asked) == 3:
                inside.set()
                gate.wait(DEADLINE_S)
            return stopped(i)

        def joining(live):
            rows = more(live)
            taken.extend(rows)
            return rows
        return real(batch_rows, delivered, question, joining if more is not None else None)

    engine.align_batch = gated

    async def scenario():
        batcher = Batcher(engine, max_batch_size=2, batch_wait_ms=0)
        await batcher.start()
        order = []
        try:
            first = batcher.submit(row)
            await asyncio.wait_for(asyncio.to_thread(inside.wait, DEADLINE_S), DEADLINE_S)
            stream, plain = batcher.submit(row, stream=True), batcher.submit(row)
            for name, job in (("first", first), ("stream", stream), ("plain", plain)):
                job.future.add_done_callback(lambda _f, name=name: order.append(name))
            gate.set()
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(j.future) for j in (first, stream, plain))),
                                   DEADLINE_S)
            return order
        finally:
            gate.set()
            await batcher.stop()

    assert asyncio.run(scenario()) == ["first", "stream", "plain"]
    assert calls == [1, 1] and taken == []


def test_a_backend_that_counts_tokens_per_call_has_them_spread_when_each_row_is_delivered(tiny_llama_dir):
    """A backend without per-row events (vLLM in-process) counts new tokens per call; each row is
    delivered with its share (7 over 3 rows: 3, 2, 2), so the serve metric counted at delivery has them."""
    from metaaligner.serve.config import ServeConfig
    from metaaligner.serve.engine import Row, build_engine

    engine = build_engine(ServeConfig(aligner_path=str(tiny_llama_dir), template="hh-rlhf", max_new_tokens=4,
                                      guard="off"), upstream_factory=None)
    engine.load(warm_up=False)

    class PerCall:  # the real generator's tokenizer and limits, one count per call, no row events
        row_events = False

        def __init__(self, real):
            self.real, self.stats = real, {"generated_tokens": 0}

        def __getattr__(self, name):
            return getattr(self.real, name)

        def generate(self, prompts, params, progress=False):
            self.stats["generated_tokens"] += 7
            return [f"text {i}" for i in range(len(prompts))]

    engine.generator = PerCall(engine.generator)
    row = Row("\n\nHuman: Hi?\n\nAssistant:", "Hello.", ["helpfulness"], ["Helpfulness: The response should help"])
    heard = []
    outcomes = engine.align_batch([row] * 3, delivered=lambda i, o: heard.append((i, o.text, o.tokens)))
    assert heard == [(0, "text 0", 3), (1, "text 1", 2), (2, "text 2", 2)]
    assert [o.tokens for o in outcomes] == [3, 2, 2]
