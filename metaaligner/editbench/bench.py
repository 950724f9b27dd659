"""The editing benchmark: items, systems, measures and tables (``evaluation/edit_bench.py``).

Every item is one held-out answer, damaged on some objectives (``damaged``), with the objectives
the aligner is asked to meet (``requested``; ``target`` is what the checker then reads). Kinds:

- ``fix``: damaged on 1, 2 or 3 trained objectives, all of them requested;
- ``selective``: damaged on two trained objectives, only the first requested (the second must stay);
- ``unseen``: an objective no training file names (its checker reads the clean answer as broken);
- ``placebo``: the same input as ``unseen``, with an objective text that asks for nothing;
- ``clean``: the clean answer, asked for a trained objective it already meets (must be left be).

Measures per output, all computed: ``fixed`` (every target check passes), ``kept`` (recall of the
clean answer's content words >= ``KEPT_THRESHOLD``), ``untouched`` (each trained objective not
targeted passes or fails as it did in the input), ``unchanged`` (the input, whitespace aside).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metaaligner.editbench import checks, damage
from metaaligner.io import normalise_space

KEPT_THRESHOLD = 0.8
PLACEBO = "Tone: the response should be written in the same language as the question."
SELECTIVE = (("repeat", "len"), ("len", "harmlessness"), ("harmlessness", "repeat"))
PAIRS = (("harmlessness", "repeat"), ("harmlessness", "len"), ("repeat", "len"))
KINDS = ("fix", "selective", "unseen", "placebo", "clean")


@dataclass(frozen=True)
class Item:
    id: str
    kind: str
    row: int
    source: str
    query: str
    clean: str
    input: str
    damaged: tuple[str, ...]
    requested: tuple[str, ...]   # objective keys named in the prompt ("placebo" for PLACEBO)
    target: tuple[str, ...]      # the checks that decide "fixed"

    @property
    def label(self) -> str:
        if self.kind == "selective":
            return f"fix {self.requested[0]}, keep {self.damaged[1]}"
        if self.kind == "placebo":
            return f"placebo ({self.target[0]})"
        return f"{self.kind} {'+'.join(self.target)}"


def _damaged(row: int, clean: str, keys: tuple[str, ...], seed: int) -> str | None:
    # One rng per (row, damage set): "fix A+B" and "fix A, keep B" see the same input.
    rng = random.Random(f"bench|{seed}|{row}|{'+'.join(sorted(keys))}")
    text = damage.damage_all(list(keys), clean, rng, "test")
    # a sentence inserted after one without an end mark merges into it and no check sees it: no item
    return text if text is not None and not any(checks.passes(k, text) for k in keys) else None


def make_items(rows: list[dict[str, str]], seed: int = 0) -> list[Item]:
    """Every applicable item of every row (rows: ``source``, ``query``, ``clean``)."""
    items: list[Item] = []
    for i, r in enumerate(rows):
        def add(kind, damaged, requested, target, text):
            if text is not None:
                items.append(Item(f"{i}:{kind}:{'+'.join(requested)}:{'+'.join(damaged)}", kind, i, r["source"],
                                  r["query"], r["clean"], text, tuple(damaged), tuple(requested), tuple(target)))

        for keys in [(k,) for k in checks.TRAINED] + list(PAIRS) + [checks.TRAINED]:
            add("fix", keys, keys, keys, _damaged(i, r["clean"], keys, seed))
        for first, second in SELECTIVE:
            keys = (first, second)
            add("selective", keys, (first,), (first,), _damaged(i, r["clean"], keys, seed))
        for key in checks.HELD_OUT:
            text = _damaged(i, r["clean"], (key,), seed)
            add("unseen", (key,), (key,), (key,), text)
            add("placebo", (key,), ("placebo",), (key,), text)
        for key in checks.TRAINED:
            add("clean", (), (key,), (key,), r["clean"])
    return items


def pick_rows(pool: list[dict[str, str]], n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` test-split answers, a seeded sample kept in pool order."""
    test = [r for r in pool if r["split"] == "test"]
    chosen = sorted(random.Random(f"bench-rows|{seed}").sample(range(len(test)), min(n, len(test))))
    return [test[i] for i in chosen]


# ---------------------------------------------------------------- measures

def measure(item: Item, output: str) -> dict[str, Any]:
    """The computed measures of one output (see the module docstring)."""
    output = str(output or "")
    fixed = all(checks.passes(k, output) for k in item.target)
    recall = checks.kept_recall(item.clean, output)
    others = [k for k in checks.TRAINED if k not in item.target]
    untouched = all(checks.passes(k, output) == checks.passes(k, item.input) for k in others)
    unchanged = normalise_space(output) == normalise_space(item.input)
    return {"fixed": fixed, "kept": recall >= KEPT_THRESHOLD, "recall": round(recall, 4), "untouched": untouched,
            "unchanged": unchanged, "fixed_and_kept": fixed and recall >= KEPT_THRESHOLD,
            "passes": {k: checks.passes(k, output) for k in checks.CHECKS}}


def bootstrap_ci(values: list[float], seed: int = 0, resamples: int = 2000) -> tuple[float, float]:
    """Percentile 95% interval of the mean, seeded."""
    import numpy as np

    if not values:
        return (math.nan, math.nan)
    data = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))
    means = data[idx].mean(axis=1)
    return (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def mcnemar_p(a: list[bool], b: list[bool]) -> float:
    """Exact two-sided McNemar test of paired binary outcomes (a binomial test on the discordant pairs)."""
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def rate(values: list[bool], seed: int = 0) -> dict[str, Any]:
    lo, hi = bootstrap_ci([float(v) for v in values], seed)
    n = len(values)
    return {"n": n, "rate": sum(values) / n if n else math.nan, "ci95": [lo, hi]}


# ---------------------------------------------------------------- systems

@dataclass
class System:
    """``copy`` returns the input; a model system generates (``withheld``: the ablation trained and
    run with ``NO_OBJECTIVE_TEXT`` in place of the objectives)."""
    name: str
    model: str | None = None
    template: str = "hh-rlhf"
    withheld: bool = False
    guard: bool = True


def parse_system(spec: str, default_template: str = "hh-rlhf") -> System:
    """``copy`` | ``copy:guard`` (the input through the degeneration guard, which alone removes a
    repeated sentence) | ``NAME=MODEL`` (a model folder, ``embedded``, or a hub name). A model folder's
    ``metaaligner.json`` gives its template and whether it was trained with the objective text
    withheld (``"objective_text": "withheld"``); ``NAME=MODEL:raw`` turns the guard off."""
    from metaaligner.errors import MetaAlignerError

    if spec in ("copy", "copy:guard"):
        return System(spec.replace(":", " + "), guard=spec == "copy:guard")
    if "=" not in spec:
        raise MetaAlignerError(f"--systems: expected copy or NAME=MODEL, got {spec!r}")
    name, model = (s.strip() for s in spec.split("=", 1))
    guard = not model.endswith(":raw")
    model = model[:-4] if not guard else model
    card_path = Path(model) / "metaaligner.json"
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    return System(name, model, card.get("template", default_template), card.get("objective_text") == "withheld",
                  guard)


def prompt_for(system: System, item: Item, registry, group: str = "edit-bench") -> str:
    from metaaligner.registry.templates import NO_OBJECTIVE_TEXT, render

    if system.withheld:
        aspects = [NO_OBJECTIVE_TEXT]
    elif item.requested == ("placebo",):
        aspects = [PLACEBO]
    else:
        aspects = [registry.get(k, group).description for k in item.requested]
    return render(system.template, item.query, item.input, aspects)


MODEL_FILES = ("config.json", "generation_config.json", "adapter_config.json", "metaaligner.json",
               "tokenizer.json", "tokenizer_config.json")


def model_files_digest(model: str | None) -> str | None:
    """A digest of the contents of the files that decide a local model's outputs (weights, configs,
    card, tokenizer), so results written beside the weights (edit_bench.md, a log) or a fresh
    checkout's new modification times do not invalidate cached generations. None for a hub name."""
    if not model or not Path(model).is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(Path(model).iterdir()):
        if path.is_file() and (path.suffix in (".safetensors", ".bin") or path.name in MODEL_FILES):
            digest.update(path.name.encode("utf-8") + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


@dataclass
class GenerationCache:
    """Raw outputs on disk, one JSON line per prompt, keyed by (model files, decoding, prompt):
    a killed run resumes where it stopped and a changed setting never reuses an output."""
    path: Path
    stamp: str
    done: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, folder: Path, system: System, params) -> "GenerationCache":
        stamp = json.dumps({"model": system.model, "files": model_files_digest(system.model),
                            "params": repr(params)}, sort_keys=True)
        # one file per model and decoding: a guarded and a raw system share their generations
        path = folder / f"{hashlib.sha256(stamp.encode('utf-8')).hexdigest()[:16]}.jsonl"
        cache = cls(path, stamp)
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    cache.done[rec["key"]] = rec["output"]
        return cache

    def key(self, prompt: str) -> str:
        return hashlib.sha256((self.stamp + "\x00" + prompt).encode("utf-8")).hexdigest()[:24]

    def add(self, prompts: list[str], outputs: list[str]) -> None:
        from metaaligner.io import open_no_follow

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open_no_follow(self.path, "a") as f:  # a planted link is refused, never followed
            for p, o in zip(prompts, outputs):
                self.done[self.key(p)] = o
                f.write(json.dumps({"key": self.key(p), "output": o}) + "\n")


def run_system(system: System, items: list[Item], registry, params, folder: Path,
               generator_factory=None) -> tuple[list[str], list[str]]:
    """Final outputs and guard actions per item (``copy``: the inputs; action ``off`` without the guard)."""
    from metaaligner.aligner.inference import guard_outputs

    if system.model is None:
        raw = [it.input for it in items]
    else:
        raw = _generate(system, items, registry, params, folder, generator_factory)
    if not system.guard:
        return raw, ["off"] * len(items)
    texts, actions = guard_outputs([it.input for it in items], raw)
    return list(texts), list(actions)


def _generate(system: System, items: list[Item], registry, params, folder: Path, generator_factory) -> list[str]:
    prompts = [prompt_for(system, it, registry) for it in items]
    cache = GenerationCache.open(folder, system, params)
    todo = list(dict.fromkeys(p for p in prompts if cache.key(p) not in cache.done))
    if todo:
        from tqdm.auto import tqdm

        generator = (generator_factory or _hf_generator)(system.model)
        chunk = max(1, params.batch_size * 4)
        with tqdm(total=len(todo), desc=f"edit bench: {system.name}", unit="prompt") as bar:
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                cache.add(part, [str(t or "") for t in generator.generate(part, params)])
                bar.update(len(part))
    return [cache.done[cache.key(p)] for p in prompts]


def _hf_generator(model: str):
    from metaaligner.generation import get_generator

    return get_generator("hf", model)


# ---------------------------------------------------------------- tables

def summarise(items: list[Item], results: dict[str, list[dict]], seed: int = 0) -> dict[str, Any]:
    """Per system: each item label's rates, per-objective fix rates (trained: single fixes; held
    out: unseen and placebo), the requested-vs-fixed matrix, and paired tests against the first
    system (and copy)."""
    labels = list(dict.fromkeys(it.label for it in items))
    out: dict[str, Any] = {"labels": {}, "matrix": {}, "groups": {}, "selective_ok": {}}
    for name, res in results.items():
        out["labels"][name] = {lab: _rates([r for it, r in zip(items, res) if it.label == lab], seed)
                               for lab in labels}
        out["groups"][name] = {kind: _rates([r for it, r in zip(items, res) if it.kind == kind], seed)
                               for kind in KINDS if any(it.kind == kind for it in items)}
        out["matrix"][name] = _matrix(items, res)
        sel = [r["fixed"] and r["untouched"] for it, r in zip(items, res) if it.kind == "selective"]
        out.setdefault("selective_ok", {})[name] = rate(sel, seed) if sel else None
    return out


def _rates(rs: list[dict], seed: int) -> dict[str, Any]:
    return {m: rate([r[m] for r in rs], seed) for m in ("fixed", "kept", "fixed_and_kept", "untouched", "unchanged")}


def _matrix(items: list[Item], res: list[dict]) -> dict[str, dict[str, float | None]]:
    """Fix and selective items: for each requested set, the share of outputs passing each trained
    check among the items damaged on it (requested: the fix rate; not requested: should stay low)."""
    rows: dict[str, dict[str, list[bool]]] = {}
    for it, r in zip(items, res):
        if it.kind not in ("fix", "selective"):
            continue
        key = f"asked {'+'.join(it.requested)}; damaged {'+'.join(it.damaged)}"
        cells = rows.setdefault(key, {k: [] for k in checks.TRAINED})
        for k in it.damaged:
            cells[k].append(r["passes"][k])
    return {key: {k: (sum(v) / len(v) if v else None) for k, v in cells.items()} for key, cells in rows.items()}


def paired_tests(items: list[Item], results: dict[str, list[dict]], subject: str) -> dict[str, Any]:
    """Exact McNemar p-values of ``subject`` against every other system, on fixed-and-kept for the
    fix items and on fixed for the unseen items."""
    out = {}
    for other in results:
        if other == subject:
            continue
        for kind, measure_name in (("fix", "fixed_and_kept"), ("unseen", "fixed"), ("clean", "unchanged")):
            idx = [i for i, it in enumerate(items) if it.kind == kind]
            a = [results[subject][i][measure_name] for i in idx]
            b = [results[other][i][measure_name] for i in idx]
            out[f"{subject} vs {other}, {kind} items, {measure_name}"] = {
                "n": len(idx), "subject": sum(a), "other": sum(b), "p": mcnemar_p(a, b)}
    return out


def asdict_items(items: list[Item]) -> list[dict[str, Any]]:
    return [dict(asdict(it), label=it.label) for it in items]


def _pct(r: dict[str, Any], ci: bool = False) -> str:
    if not r["n"] or math.isnan(r["rate"]):
        return "n/a"
    text = f"{r['rate']:.0%}"
    return text + (f" ({r['ci95'][0]:.0%}-{r['ci95'][1]:.0%})" if ci else "")


def summary_table(summary: dict[str, Any]) -> list[str]:
    """One row per system: the headline measure of each item kind with its 95% interval."""
    lines = ["| system | fix: fixed | fix: kept | fix: fixed and kept | selective: fixed and untouched "
             "| unseen: fixed | placebo: fixed | clean: unchanged |", "|---|---|---|---|---|---|---|---|"]
    for name, groups in summary["groups"].items():
        def cell(kind, m):
            return _pct(groups[kind][m], ci=True) if kind in groups else "n/a"
        sel = summary["selective_ok"].get(name)
        lines.append(f"| {name} | {cell('fix', 'fixed')} | {cell('fix', 'kept')} | {cell('fix', 'fixed_and_kept')} "
                     f"| {_pct(sel, ci=True) if sel else 'n/a'} | {cell('unseen', 'fixed')} "
                     f"| {cell('placebo', 'fixed')} | {cell('clean', 'unchanged')} |")
    return lines


def label_table(summary: dict[str, Any], kinds: tuple[str, ...], items: list[Item]) -> list[str]:
    """Rows: item labels of ``kinds``; cells: fixed % / kept % per system."""
    names = list(summary["labels"])
    labels = list(dict.fromkeys(it.label for it in items if it.kind in kinds))
    counts = {lab: sum(it.label == lab for it in items) for lab in labels}
    lines = ["| item (rows) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for lab in labels:
        cells = [f"{_pct(summary['labels'][n][lab]['fixed'])} / {_pct(summary['labels'][n][lab]['kept'])}"
                 for n in names]
        lines.append(f"| {lab} ({counts[lab]}) | " + " | ".join(cells) + " |")
    return lines


def matrix_table(matrix: dict[str, dict[str, float | None]]) -> list[str]:
    lines = ["| asked / damaged | " + " | ".join(f"{k} passes" for k in checks.TRAINED) + " |",
             "|---" * (len(checks.TRAINED) + 1) + "|"]
    for key, cells in matrix.items():
        asked = key.split("; ")[0].removeprefix("asked ").split("+")
        row = []
        for k in checks.TRAINED:
            v = cells[k]
            row.append("" if v is None else (f"**{v:.0%}**" if k in asked else f"{v:.0%}"))
        lines.append(f"| {key} | " + " | ".join(row) + " |")
    return lines


def render_markdown(report: dict[str, Any], items: list[Item]) -> str:
    s = report["summary"]
    subject = report["subject"]
    lines = [f"# Edit benchmark: {report['rows']} held-out answers, {len(items)} items",
             "", f"Made by `{report['command']}` (seed {report['seed']}, greedy, {report['max_new_tokens']} new "
             f"tokens). Checks: `metaaligner/editbench/checks.py`; kept = recall of the clean answer's content "
             f"words >= {KEPT_THRESHOLD:.0%}. 95% bootstrap intervals in brackets.", "",
             "## Summary", "", *summary_table(s), "",
             "## Trained objectives, one to three at a time (fixed % / kept %)", "",
             *label_table(s, ("fix", "selective"), items), "",
             f"## What {subject} fixes when asked (bold) and leaves when not", "",
             "Share of outputs passing each check, among the items damaged on it.", "",
             *matrix_table(s["matrix"][subject]), "",
             "## Held-out objectives, never in training (fixed % / kept %)", "",
             *label_table(s, ("unseen", "placebo"), items), "",
             "## Clean answers asked for an objective they meet (fixed % / kept %; unchanged in the summary)", "",
             *label_table(s, ("clean",), items), "",
             "## Paired tests (exact McNemar)", ""]
    for name, t in report["tests"].items():
        lines.append(f"- {name}: {t['subject']} vs {t['other']} of {t['n']}, p = {t['p']:.3g}")
    lines += ["", "## Examples (the first row of each item kind with a trained objective)", ""]
    for ex in report["examples"]:
        lines += [f"- **{ex['label']}** ({ex['source']})", f"  - input: {ex['input']}",
                  f"  - {subject}: {ex['output']}"]
    return "\n".join(lines) + "\n"


def examples(items: list[Item], outputs: list[str], limit_labels: tuple[str, ...]) -> list[dict[str, str]]:
    """The first item of each label in ``limit_labels`` (a stated rule, not a pick)."""
    out = []
    for lab in limit_labels:
        for it, o in zip(items, outputs):
            if it.label == lab:
                out.append({"label": lab, "source": it.source, "input": it.input, "output": o})
                break
    return out


def plot(summary: dict[str, Any], items: list[Item], path: str | Path, subject: str) -> Path:
    """Fixed-and-kept rate per objective (trained: single fixes; held out: unseen, plus the subject
    with the placebo text), one bar per system, 95% intervals: a fix that drops the answer's content
    (a rewrite, a refusal) does not count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(checks.TRAINED) + list(checks.HELD_OUT)
    labels = {k: (f"fix {k}" if k in checks.TRAINED else f"unseen {k}") for k in keys}
    measure = "fixed_and_kept"
    series = {n: [summary["labels"][n].get(labels[k], {}).get(measure) for k in keys] for n in summary["labels"]}
    series[f"{subject}, placebo text"] = [summary["labels"][subject].get(f"placebo ({k})", {}).get(measure)
                                          for k in keys]
    fig, ax = plt.subplots(figsize=(9, 3.8), dpi=110)
    width = 0.8 / len(series)
    for j, (name, vals) in enumerate(series.items()):
        xs = [i + j * width for i in range(len(keys))]
        ys = [v["rate"] if v and v["n"] else 0 for v in vals]
        err = [[max(0, y - (v["ci95"][0] if v and v["n"] else 0)) for y, v in zip(ys, vals)],
               [max(0, (v["ci95"][1] if v and v["n"] else 0) - y) for y, v in zip(ys, vals)]]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=name)
    ax.axvline(len(checks.TRAINED) - 0.1, color="grey", ls=":", lw=1)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
    ax.set_xticklabels([("" if k in checks.TRAINED else "unseen: ") + k for k in keys], fontsize=8)
    ax.set_ylabel("fixed, content kept")
    ax.set_ylim(0, 1.05)
    ax.set_title("Edit benchmark: trained objectives (left) and held-out objectives (right)", fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
