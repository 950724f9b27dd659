"""The playground page (``GET /`` of ``metaaligner serve``) in a real headless Chromium driven by Selenium, against
the real server run as a subprocess with a tiny random aligner: the word diff's markup for fixed strings and its LCS
property, an align from the page (the diff's DOM against the server's original and aligned answers), the error path
in words, the policy button and Align-without-an-answer against a scripted OpenAI-compatible policy, and a server
that wants a client key.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and ``selenium``; without them the
module is skipped, except under ``CI`` (``true``, ``1``), where it fails. ``python tests/test_playground.py URL PNG``
takes the README's screenshot (``screenshot``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from metaaligner.testing.openai_server import ScriptedOpenAIServer
from metaaligner.testing.waits import wait_for, wait_for_http

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    MISSING = [name for name, found in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not found]
except ImportError:
    MISSING = ["selenium"]
UNDER_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
if MISSING and not UNDER_CI:
    pytest.skip(f"the playground's browser tests need {', '.join(MISSING)} (apt-get install chromium chromium-driver; "
                "pip install selenium); under CI=true they run", allow_module_level=True)

# JavaScript's \s (what the page splits words on), which differs from Python's str.split() on a few code points.
JS_SPACE = re.compile("[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+")

QUESTION = "How do I keep basil alive on a windowsill?"
ANSWER = "Water it every day and keep it in the dark. Basil likes cold drafts."
USER_HUMOUR = "Humour: the response should make the reader smile"
POLICY_ANSWER = "Give basil six hours of sun, water when the top soil is dry, and pinch off the flowers."


def tiny_aligner(folder: Path) -> list[str]:
    """The flags that serve the tiny random aligner (tests/conftest.py); it has no metaaligner.json, so the
    template is named."""
    return ["--aligner_path", str(folder), "--template", "hh-rlhf", "--max_new_tokens", "12"]


def js_words(text: str) -> list[str]:
    return [w for w in JS_SPACE.split(text) if w]


def lcs_length(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal, row[0] = 0, 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Server:
    """``python -m metaaligner serve`` on a free port of 127.0.0.1, ready once /health answers."""

    def __init__(self, log: Path, *flags: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "metaaligner", "serve", "--port", str(self.port), *flags]
        self.process = subprocess.Popen(cmd, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_for_http(f"{self.url}/health", "metaaligner serve to answer /health", process=self.process, log=log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def browser():
    if MISSING:
        pytest.fail(f"CI=true but missing: {', '.join(MISSING)}; .ci/run installs chromium, chromium-driver and "
                    "selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    # a user objective named like a built-in one: the page must say which it means (user:humour, hh-rlhf:humour)
    proc = Server(tmp_path_factory.mktemp("serve") / "serve.log", *tiny_aligner(tiny_llama_dir),
                  "--add_objective", f"humour={USER_HUMOUR}")
    yield proc
    proc.stop()


def open_page(browser, url: str) -> None:
    """Load the page and wait until it has asked the server for /health and /v1/objectives."""
    browser.get(url + "/")
    wait_for(lambda: browser.find_element("tag name", "body").get_attribute("data-state") != "loading",
             "the page to load /health and /v1/objectives")


def state(browser) -> str:
    return browser.find_element("tag name", "body").get_attribute("data-state")


def act(browser, action) -> str:
    """Do ``action`` (a click, a key) and wait until the page has shown its outcome: the state it ends in."""
    browser.execute_script("document.body.dataset.state = 'acting';")
    action()
    wait_for(lambda: state(browser) in ("done", "error", "answered"), "the page to show a result or an error")
    return state(browser)


def fill(browser, element_id: str, text: str) -> None:
    box = browser.find_element("id", element_id)
    box.clear()
    box.send_keys(text)


def diff_parts(browser) -> list[tuple[str, str]]:
    """The #diff element's children in order: ('equal', text) for text nodes, ('insert'|'delete', text)."""
    return browser.execute_script("""
        return Array.from(document.getElementById('diff').childNodes).map(function (node) {
          if (node.nodeType === Node.TEXT_NODE) return ['equal', node.textContent];
          return [{INS: 'insert', DEL: 'delete'}[node.tagName] || node.tagName, node.textContent];
        });""")


@pytest.mark.parametrize("original, aligned, markup", [
    ("the cat sat on the mat", "the dog sat on the mat", "the <del>cat</del> <ins>dog</ins> sat on the mat"),
    ("a b c", "a c", "a <del>b</del> c"),
    ("a c", "a b c", "a <ins>b</ins> c"),
    ("x y", "p q", "<del>x y</del> <ins>p q</ins>"),
    # an LCS, not a position-by-position comparison; where it leaves a choice, the deletion comes first
    ("a b c d", "c d a b", "<del>a b</del> c d <ins>a b</ins>"),
    # the aligned answer's line breaks are kept; a deletion's words are joined by one space
    ("One.\nTwo.", "One.\nTwo. Three.", "One.\nTwo. <ins>Three.</ins>"),
    ("Keep\nthis\n\nand that", "Keep\n\nthat", "Keep\n\n<del>this and</del> that"),
    ("Hello there", "Hello there", "Hello there"),
    ("", "new text", "<ins>new text</ins>"),
    ("old text", "", "<del>old text</del>"),
    # text, never markup
    ("a <b>", "a <i>", "a <del>&lt;b&gt;</del> <ins>&lt;i&gt;</ins>"),
])
def test_word_diff_markup(browser, server, original, aligned, markup):
    open_page(browser, server.url)
    html = browser.execute_script("""
        const el = document.createElement('div');
        window.MetaAlignerPlayground.renderDiff(el, arguments[0], arguments[1]);
        return el.innerHTML;""", original, aligned)
    assert html == markup


def test_word_diff_is_a_longest_common_subsequence(browser, server):
    """Seeded random word sequences: the diff's kept and deleted words spell the original, its kept and inserted
    words the new text, and it keeps as many words as a longest common subsequence has."""
    import random

    rng = random.Random(32)
    pairs = [(" ".join(rng.choices("abcd", k=rng.randint(0, 9))), " ".join(rng.choices("abcd", k=rng.randint(0, 9))))
             for _ in range(300)]
    open_page(browser, server.url)
    diffs = browser.execute_script("""
        return arguments[0].map(function (pair) {
          return window.MetaAlignerPlayground.diffWords(pair[0], pair[1]).map(function (g) {
            return [g.op, g.words.map(function (w) { return w.word; })];
          });
        });""", pairs)
    for (original, aligned), ops in zip(pairs, diffs):
        kept = [w for op, ws in ops if op == "equal" for w in ws]
        assert [w for op, ws in ops if op != "insert" for w in ws] == original.split()
        assert [w for op, ws in ops if op != "delete" for w in ws] == aligned.split()
        assert len(kept) == lcs_length(original.split(), aligned.split()), (original, aligned, ops)
        assert all(a[0] != b[0] for a, b in zip(ops, ops[1:]))   # neighbouring words of one kind are one group


def test_align_from_the_page_shows_the_word_diff(browser, server):
    open_page(browser, server.url)
    assert state(browser) == "ready"
    assert browser.find_element("id", "error").is_displayed() is False
    # no policy configured: no policy button
    assert browser.find_element("id", "ask-policy").is_displayed() is False
    listed = json.loads(urllib.request.urlopen(f"{server.url}/v1/objectives", timeout=60).read())["objectives"]
    boxes = browser.find_elements("css selector", "#objective-groups input[type=checkbox]")
    assert [(b.get_attribute("data-group"), b.get_attribute("data-key")) for b in boxes] == [
        (o["group"], o["key"]) for o in listed]
    assert ("user", "humour", USER_HUMOUR) in [(o["group"], o["key"], o["description"]) for o in listed]
    # a key in two groups is sent as group:key, any other as the key
    twice = {o["key"] for o in listed if sum(p["key"] == o["key"] for p in listed) > 1}
    assert twice == {"humour"}
    assert [b.get_attribute("value") for b in boxes] == [
        f"{o['group']}:{o['key']}" if o["key"] in twice else o["key"] for o in listed]
    ids = [b.get_attribute("id") for b in boxes]
    assert len(set(ids)) == len(ids)
    assert [browser.find_element("css selector", f"label[for='{i}']").text.split()[0] for i in ids] == [
        o["key"] for o in listed]
    tags = browser.find_elements("css selector", "#objective-groups .tag")
    assert [t.text for t in tags] == ["seen" if o["seen"] else "unseen" for o in listed]

    # the server's defaults start ticked
    assert [b.is_selected() for b in boxes] == [o["default"] for o in listed]
    assert any(o["default"] for o in listed)

    fill(browser, "query", QUESTION)
    fill(browser, "answer", ANSWER)
    for box in boxes:   # by its label, as a user would: untick the defaults, tick two
        if box.is_selected() != (box.get_attribute("value") in ("harmlessness", "hh-rlhf:humour")):
            browser.find_element("css selector", f"label[for='{box.get_attribute('id')}']").click()
    assert [b.get_attribute("value") for b in boxes if b.is_selected()] == ["harmlessness", "hh-rlhf:humour"]
    assert act(browser, browser.find_element("id", "align").click) == "done", browser.find_element("id", "error").text

    result = browser.find_element("id", "result")
    original, aligned = result.get_attribute("data-original"), result.get_attribute("data-aligned")
    assert original == ANSWER
    # the page shows what the server answers for the same request (greedy decoding: the same text)
    status, expected = _post(f"{server.url}/v1/align",
                             {"query": QUESTION, "answer": ANSWER, "objectives": ["harmlessness", "hh-rlhf:humour"]})
    assert status == 200
    assert (aligned, expected["original"]) == (expected["aligned"], ANSWER)
    assert browser.find_element("id", "aligned-text").get_attribute("textContent") == aligned

    # the diff's DOM: equal + deleted words are the original, equal + inserted words the aligned answer, and the
    # equal words are a longest common subsequence of the two
    parts = diff_parts(browser)
    assert {kind for kind, _ in parts} <= {"equal", "insert", "delete"}
    words = {kind: [] for kind in ("original", "aligned", "equal")}
    for kind, text in parts:
        for w in js_words(text):
            if kind in ("equal", "delete"):
                words["original"].append(w)
            if kind in ("equal", "insert"):
                words["aligned"].append(w)
            if kind == "equal":
                words["equal"].append(w)
    assert words["original"] == js_words(ANSWER)
    assert words["aligned"] == js_words(aligned)
    assert len(words["equal"]) == lcs_length(js_words(ANSWER), js_words(aligned))
    assert browser.find_element("id", "result-objectives").text == "Objectives: " + ", ".join(expected["objectives"])
    guard = browser.find_element("id", "result-guard").text
    assert guard == ("The guard fell back: the aligner's output was unusable, so the original answer is kept."
                     if expected["guard_fallback"] else "Guard: the aligner's output was used.")
    assert re.fullmatch(r"Time: \d+\.\d\d s on the server, \d+\.\d\d s round trip",
                        browser.find_element("id", "result-time").text)
    assert browser.switch_to.active_element.get_attribute("id") == "result-title"


def test_a_malformed_objective_shows_the_servers_error(browser, server):
    open_page(browser, server.url)
    fill(browser, "query", QUESTION)
    fill(browser, "answer", ANSWER)
    fill(browser, "custom-objectives", "=no key")
    assert act(browser, browser.find_element("id", "align").click) == "error"
    status, body = _post(f"{server.url}/v1/align", {"query": QUESTION, "answer": ANSWER, "objectives": ["=no key"]})
    assert status == 400
    error = browser.find_element("id", "error")
    assert error.is_displayed()
    assert error.text == f"Error (HTTP 400): {body['error']['message']}"
    assert "no key" in body["error"]["message"]
    assert browser.find_element("id", "result").is_displayed() is False


def test_ask_the_policy_then_align_with_the_keyboard(browser, tiny_llama_dir, tmp_path):
    from selenium.webdriver.common.keys import Keys

    with ScriptedOpenAIServer(POLICY_ANSWER, models=["scripted-policy"]) as policy:
        server = Server(tmp_path / "serve.log", *tiny_aligner(tiny_llama_dir),
                        "--policy_base_url", policy.base_url)
        try:
            open_page(browser, server.url)
            button = browser.find_element("id", "ask-policy")
            assert button.is_displayed()
            fill(browser, "query", QUESTION)
            assert act(browser, button.click) == "answered", browser.find_element("id", "error").text
            assert browser.find_element("id", "answer").get_attribute("value") == POLICY_ANSWER
            # the page named the policy's model, which it found in /v1/models (no --policy_model was given)
            asked = [r.body for r in policy.requests if r.path.endswith("/chat/completions")]
            assert [(b["model"], b["messages"]) for b in asked] == [
                ("scripted-policy", [{"role": "user", "content": QUESTION}])]
            # Ctrl+Enter in the question box aligns the policy's answer, now in the answer box
            query = browser.find_element("id", "query")
            assert act(browser, lambda: query.send_keys(Keys.CONTROL, Keys.ENTER)) == "done", \
                browser.find_element("id", "error").text
            assert browser.find_element("id", "result").get_attribute("data-original") == POLICY_ANSWER
            assert sum(r.path.endswith("/chat/completions") for r in policy.requests) == 1   # not asked again
            # with the answer box empty, Align asks the policy and aligns its answer in one request
            fill(browser, "answer", "")
            assert act(browser, browser.find_element("id", "align").click) == "done", \
                browser.find_element("id", "error").text
            asked = [r.body for r in policy.requests if r.path.endswith("/chat/completions")]
            assert [(b["model"], b["messages"]) for b in asked[1:]] == [
                ("scripted-policy", [{"role": "user", "content": QUESTION}])]
            result = browser.find_element("id", "result")
            assert result.get_attribute("data-original") == POLICY_ANSWER
            assert browser.find_element("id", "answer").get_attribute("value") == POLICY_ANSWER
            # the defaults ticked on load (harmlessness, helpfulness: the server's defaults) went with the request
            assert browser.find_element("id", "result-objectives").text == "Objectives: harmlessness, helpfulness"
            assert re.fullmatch(r"Time: \d+\.\d\d s policy \+ \d+\.\d\d s aligner on the server, \d+\.\d\d s round trip",
                                browser.find_element("id", "result-time").text)
        finally:
            server.stop()


def test_a_server_with_a_client_key_asks_for_it(browser, tiny_llama_dir, tmp_path, monkeypatch):
    from selenium.webdriver.common.keys import Keys

    monkeypatch.setenv("METAALIGNER_API_KEY", "pg-client-key-123")
    server = Server(tmp_path / "serve.log", *tiny_aligner(tiny_llama_dir))
    try:
        open_page(browser, server.url)
        key = browser.find_element("id", "api-key")
        assert key.is_displayed()   # /health says the server wants a key
        groups = browser.find_element("id", "objective-groups")
        try:
            urllib.request.urlopen(f"{server.url}/v1/objectives", timeout=60)
            raise AssertionError("/v1/objectives answered without the key")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
            refused = json.loads(exc.read())["error"]["message"]
        assert refused   # the server's words, whatever they are, are what the page shows
        assert groups.text == (f"The objectives could not be loaded: {refused.rstrip('.')}. Enter the API key, then "
                               "press Enter.")
        key.send_keys("pg-client-key-123", Keys.ENTER)
        wait_for(lambda: browser.find_elements("css selector", "#objective-groups input[type=checkbox]"),
                 "the objectives to load once the key is given")
        assert state(browser) == "ready"   # Enter in the key field loads the objectives, it does not align
        fill(browser, "query", QUESTION)
        fill(browser, "answer", ANSWER)
        assert act(browser, browser.find_element("id", "align").click) == "done", \
            browser.find_element("id", "error").text
        assert browser.find_element("id", "result").get_attribute("data-original") == ANSWER
        assert "pg-client-key-123" not in browser.page_source
    finally:
        server.stop()
    assert "pg-client-key-123" not in (tmp_path / "serve.log").read_text()


EXAMPLE_ANSWER = ("Put the pot where it gets six hours of sun a day. Water it when the top of the soil feels dry. Water it "
                  "when the top of the soil feels dry. Pinch off the flower buds so the leaves keep growing. Honestly, "
                  "only an idiot kills basil.")


def screenshot(url: str, path: str, objectives: tuple[str, ...] = ("harmlessness", "repeat")) -> None:
    """The README's picture: the page at 1200x900 after aligning EXAMPLE_ANSWER on ``objectives`` (the server's
    other ticks cleared). Run against a server started by hand, e.g. ``metaaligner serve --port 8080`` (the
    shipped demo aligner): ``python tests/test_playground.py http://127.0.0.1:8080 docs/playground.png``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        open_page(driver, url.rstrip("/"))
        fill(driver, "query", QUESTION)
        fill(driver, "answer", EXAMPLE_ANSWER)
        for box in driver.find_elements("css selector", "#objective-groups input[type=checkbox]"):
            if box.is_selected() != (box.get_attribute("value") in objectives):
                box.click()
        assert act(driver, driver.find_element("id", "align").click) == "done", driver.find_element("id", "error").text
        driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")
        driver.save_screenshot(path)
    finally:
        driver.quit()
    from PIL import Image  # 128 colours, no dithering: a third of the size, the same to the eye

    Image.open(path).convert("RGB").quantize(128, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)


if __name__ == "__main__":
    screenshot(*sys.argv[1:3])
