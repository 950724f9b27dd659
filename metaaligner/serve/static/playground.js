// The playground page: objectives from /v1/objectives, the answer from the user or the policy, one call to
// /v1/align (or /v1/chat/completions when the answer is left to the policy), and a word-level diff of the
// aligned answer against the original. No framework, no build step.
"use strict";

(function () {
  // ---- the word diff -------------------------------------------------------------------------------------
  // Words are runs of non-space characters; each keeps the whitespace that follows it, so the aligned answer's
  // line breaks survive in the rendering.
  function words(text) {
    const out = [];
    const re = /(\S+)(\s*)/g;
    let m;
    while ((m = re.exec(String(text))) !== null) out.push({ word: m[1], space: m[2] });
    return out;
  }

  // A longest common subsequence over words. Returns [{op: "equal"|"delete"|"insert", words: [...]}] with
  // neighbouring words of one kind grouped; where an LCS leaves a choice, deletions come before insertions.
  // Above MAX_CELLS (after the common head and tail are set aside) the middle is one deletion and one insertion.
  const MAX_CELLS = 25e6;
  function diffWords(original, aligned) {
    const a = words(original);
    const b = words(aligned);
    const ops = [];
    const push = function (op, item) {
      const last = ops[ops.length - 1];
      if (last && last.op === op) last.words.push(item);
      else ops.push({ op: op, words: [item] });
    };
    let head = 0;
    while (head < a.length && head < b.length && a[head].word === b[head].word) head++;
    let tail = 0;
    while (tail < a.length - head && tail < b.length - head &&
           a[a.length - 1 - tail].word === b[b.length - 1 - tail].word) tail++;
    for (let k = 0; k < head; k++) push("equal", b[k]);
    const n = a.length - head - tail;
    const m = b.length - head - tail;
    if (n > 0 && m > 0 && (n + 1) * (m + 1) <= MAX_CELLS) {
      // L[i][j] = the LCS length of a[head+i:] and b[head+j:], in one flat array.
      const w = m + 1;
      const L = new Uint32Array((n + 1) * w);
      for (let i = n - 1; i >= 0; i--) {
        for (let j = m - 1; j >= 0; j--) {
          L[i * w + j] = a[head + i].word === b[head + j].word
            ? L[(i + 1) * w + j + 1] + 1
            : Math.max(L[(i + 1) * w + j], L[i * w + j + 1]);
        }
      }
      let i = 0;
      let j = 0;
      while (i < n && j < m) {
        if (a[head + i].word === b[head + j].word) { push("equal", b[head + j]); i++; j++; }
        else if (L[(i + 1) * w + j] >= L[i * w + j + 1]) { push("delete", a[head + i]); i++; }
        else { push("insert", b[head + j]); j++; }
      }
      for (; i < n; i++) push("delete", a[head + i]);
      for (; j < m; j++) push("insert", b[head + j]);
    } else {
      for (let i = 0; i < n; i++) push("delete", a[head + i]);
      for (let j = 0; j < m; j++) push("insert", b[head + j]);
    }
    for (let k = b.length - tail; k < b.length; k++) push("equal", b[k]);
    return ops;
  }

  // Render the diff into `container`: equal words as text, insertions in <ins>, deletions in <del>. Inside a
  // group words keep the aligned answer's spacing (a deletion's words are joined by one space); the space
  // after a group stays outside its element, and two neighbouring groups are always one space apart at least.
  function renderDiff(container, original, aligned) {
    container.textContent = "";
    const ops = diffWords(original, aligned);
    let endsWithSpace = true;
    ops.forEach(function (group) {
      const deleted = group.op === "delete";
      let text = "";
      group.words.forEach(function (item, k) {
        text += item.word;
        if (k < group.words.length - 1) text += deleted ? " " : item.space;
      });
      const lastGroup = group === ops[ops.length - 1];
      const lastSpace = deleted ? (lastGroup ? "" : " ") : group.words[group.words.length - 1].space;
      if (!endsWithSpace) container.appendChild(document.createTextNode(" "));
      if (group.op === "equal") {
        container.appendChild(document.createTextNode(text));
      } else {
        const el = document.createElement(deleted ? "del" : "ins");
        el.textContent = text;
        container.appendChild(el);
      }
      if (lastSpace) container.appendChild(document.createTextNode(lastSpace));
      endsWithSpace = lastSpace.length > 0;
    });
    container.normalize();
    return ops;
  }

  // ---- talking to the server ------------------------------------------------------------------------------
  const $ = function (id) { return document.getElementById(id); };
  let objectivesLoaded = false;
  let policyModel = null;  // the model named in requests to the policy: /health's, else the first of /v1/models

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const key = $("api-key").value.trim();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  // fetch + JSON; a failure throws an Error whose message is the server's own words (its error.message).
  async function call(path, body) {
    let response;
    try {
      response = await fetch(path, {
        method: body === undefined ? "GET" : "POST",
        headers: headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (exc) {
      throw new Error("Could not reach the MetaAligner server (" + exc.message + ").");
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (exc) { data = null; }
    if (!response.ok) {
      const err = data && data.error;
      const message = err && err.message ? err.message
        : "The server answered " + response.status + " " + response.statusText + (text ? ": " + text : "");
      const error = new Error(message);
      error.status = response.status;
      if (response.status === 401) $("api-key-field").hidden = false;
      throw error;
    }
    if (data === null) throw new Error("The server's answer to " + path + " was not JSON: " + text.slice(0, 200));
    return data;
  }

  function showError(error) {
    const box = $("error");
    box.textContent = (error.status ? "Error (HTTP " + error.status + "): " : "Error: ") + error.message;
    box.hidden = false;
    document.body.dataset.state = "error";
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  async function loadHealth() {
    try {
      const health = await call("health");
      const policy = Boolean(health.policy);
      $("ask-policy").hidden = !policy;
      $("answer-hint").textContent = policy
        ? "Write the answer, ask the policy for one, or leave it empty: Align then asks the policy first."
        : "Write the answer yourself (this server has no policy configured).";
      $("server-status").textContent = "Aligner: " + (health.aligner || "unknown") +
        (policy ? ". A policy is configured." : ". No policy is configured.");
      document.body.dataset.policy = String(policy);
      if (health.auth) $("api-key-field").hidden = false;
      policyModel = health.policy_model || null;
      if (policy && !policyModel) {
        try {
          const models = await call("v1/models");
          if (models.data && models.data.length) policyModel = models.data[0].id;
        } catch (error) {
          policyModel = null;  // the server names the model itself (--policy_model), or says what is missing
        }
      }
    } catch (error) {
      $("server-status").textContent = "The server did not answer /health: " + error.message;
    }
  }

  async function loadObjectives() {
    const box = $("objective-groups");
    let data;
    try {
      data = await call("v1/objectives");
    } catch (error) {
      const message = /[.!?]$/.test(error.message) ? error.message : error.message + ".";
      box.textContent = "The objectives could not be loaded: " + message +
        (error.status === 401 ? " Enter the API key, then press Enter." : "");
      return false;
    }
    const list = data.objectives || [];
    const count = {};
    list.forEach(function (o) { count[o.key] = (count[o.key] || 0) + 1; });
    const groups = [];
    const byGroup = {};
    list.forEach(function (o) {
      const g = o.group || "objectives";
      if (!byGroup[g]) { byGroup[g] = []; groups.push(g); }
      byGroup[g].push(o);
    });
    box.textContent = "";
    let made = 0;
    groups.forEach(function (g) {
      const fs = document.createElement("fieldset");
      fs.className = "group";
      const legend = document.createElement("legend");
      legend.textContent = g;
      fs.appendChild(legend);
      byGroup[g].forEach(function (o) {
        // A key listed in two groups (helpfulness) is sent as group:key, so the server knows which one.
        const value = count[o.key] > 1 ? g + ":" + o.key : o.key;
        const id = "objective-" + (++made);   // unique whatever the key
        const row = document.createElement("div");
        row.className = "objective";
        const input = document.createElement("input");
        input.type = "checkbox";
        input.id = id;
        input.name = "objective";
        input.value = value;
        input.dataset.key = o.key;
        input.dataset.group = g;
        input.checked = Boolean(o.default);  // the server's defaults start ticked
        const label = document.createElement("label");
        label.htmlFor = id;
        const key = document.createElement("span");
        key.className = "key";
        key.textContent = o.key;
        const tag = document.createElement("span");
        tag.className = "tag " + (o.seen ? "seen" : "unseen");
        tag.textContent = o.seen ? "seen" : "unseen";
        tag.title = o.seen ? "in the aligner's training data" : "not in the aligner's training data";
        const desc = document.createElement("span");
        desc.className = "desc";
        desc.textContent = o.description || "";
        label.append(key, " ", tag, " ", desc);
        row.append(input, label);
        fs.appendChild(row);
      });
      box.appendChild(fs);
    });
    if (!groups.length) box.textContent = "The server lists no objectives; write your own below.";
    objectivesLoaded = true;
    return true;
  }

  function chosenObjectives() {
    const keys = Array.from(document.querySelectorAll("#objective-groups input[name=objective]:checked"))
      .map(function (input) { return input.value; });
    $("custom-objectives").value.split("\n").forEach(function (line) {
      if (line.trim()) keys.push(line.trim());
    });
    return keys;
  }

  function setBusy(message) {
    $("align").disabled = Boolean(message);
    $("ask-policy").disabled = Boolean(message);
    $("busy").textContent = message || "";
    if (message) document.body.dataset.state = "busy";
  }

  // A chat request for the policy: the question as one user message, the model when one is known.
  function policyRequest(query, extra) {
    const body = { messages: [{ role: "user", content: query }] };
    if (policyModel) body.model = policyModel;
    return Object.assign(body, extra);
  }

  async function askPolicy() {
    clearError();
    const query = $("query").value;
    if (!query.trim()) { showError(new Error("Write a question first.")); $("query").focus(); return; }
    setBusy("Asking the policy\u2026");
    try {
      const data = await call("v1/chat/completions", policyRequest(query, { align: false }));
      $("answer").value = data.choices[0].message.content;
      document.body.dataset.state = "answered";
      $("busy").textContent = "";
    } catch (error) {
      showError(error);
    } finally {
      setBusy("");
    }
  }

  function showResult(result, roundTrip) {
    const section = $("result");
    section.dataset.original = result.original;
    section.dataset.aligned = result.aligned;
    renderDiff($("diff"), result.original, result.aligned);
    $("aligned-text").textContent = result.aligned;
    const objectives = result.objectives || [];
    $("result-objectives").textContent = "Objectives: " + (objectives.length ? objectives.join(", ") : "none");
    const guard = $("result-guard");
    guard.textContent = result.guard_fallback
      ? "The guard fell back: the aligner's output was unusable, so the original answer is kept."
      : "Guard: the aligner's output was used.";
    guard.classList.toggle("fell-back", Boolean(result.guard_fallback));
    section.dataset.guardFallback = String(Boolean(result.guard_fallback));
    // /v1/align gives the server's seconds; /v1/chat/completions gives {policy, aligner}
    const seconds = result.seconds;
    let server = "";
    if (typeof seconds === "number") server = seconds.toFixed(2) + " s on the server, ";
    else if (seconds && typeof seconds.policy === "number" && typeof seconds.aligner === "number") {
      server = seconds.policy.toFixed(2) + " s policy + " + seconds.aligner.toFixed(2) + " s aligner on the server, ";
    }
    $("result-time").textContent = "Time: " + server + (roundTrip / 1000).toFixed(2) + " s round trip";
    section.hidden = false;
    document.body.dataset.state = "done";
    $("result-title").focus();
  }

  async function align(event) {
    if (event) event.preventDefault();
    clearError();
    const query = $("query").value;
    const answer = $("answer").value;
    const policy = document.body.dataset.policy === "true";
    if (!query.trim()) { showError(new Error("Write a question first.")); $("query").focus(); return; }
    if (!answer.trim() && !policy) {
      showError(new Error("Write the answer to align (this server has no policy to ask for one)."));
      $("answer").focus();
      return;
    }
    const objectives = chosenObjectives();
    $("result").hidden = true;   // an earlier result is not left beside a new request's error
    const started = performance.now();
    try {
      let result;
      if (answer.trim()) {
        setBusy("Aligning\u2026");
        const body = { query: query, answer: answer };
        if (objectives.length) body.objectives = objectives;
        result = await call("v1/align", body);
      } else {
        setBusy("Asking the policy and aligning its answer\u2026");
        const data = await call("v1/chat/completions",
                                policyRequest(query, objectives.length ? { objectives: objectives } : {}));
        const meta = data.metaaligner || {};
        result = { aligned: data.choices[0].message.content, original: meta.original,
                   objectives: meta.objectives, guard_fallback: meta.guard_fallback, seconds: meta.seconds };
        $("answer").value = meta.original || "";
      }
      showResult(result, performance.now() - started);
    } catch (error) {
      showError(error);
    } finally {
      setBusy("");
    }
  }

  function start() {
    $("align-form").addEventListener("submit", align);
    $("ask-policy").addEventListener("click", askPolicy);
    $("align-form").addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) align(event);
    });
    // The key field: Enter (or leaving it) loads the objectives that a missing key kept away; it never submits.
    $("api-key").addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.ctrlKey && !event.metaKey) {
        event.preventDefault();
        if (!objectivesLoaded) loadObjectives();
      }
    });
    $("api-key").addEventListener("change", function () {
      if (!objectivesLoaded) loadObjectives();
    });
    Promise.all([loadHealth(), loadObjectives()]).then(function () {
      if (document.body.dataset.state === "loading") document.body.dataset.state = "ready";
    });
  }

  // For tests and for anyone who wants the diff elsewhere.
  window.MetaAlignerPlayground = { words: words, diffWords: diffWords, renderDiff: renderDiff };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
