"""Aligner inference as a library: resolve the aligner and its template, build prompts, align
(iteratively), and run whole files resumably. ``inference/aligner_inference.py`` only parses flags.

Python use::

    from metaaligner.aligner import Aligner
    aligner = Aligner()                                  # demo aligner if shipped, else embedded SmolLM2
    aligner.align("How do I boil an egg?", "Put it in water.", "harmlessness,helpfulness")
    aligner.align(questions, answers, ["helpfulness", "Brevity: the response should be short"])

Template resolution (one place, ``resolve_aligner``): ``--template`` flag > ``metaaligner.json`` in
the LoRA or model folder > the known-checkpoint table (``data/checkpoints.yaml``, exact names such
as ``MetaAligner/MetaAligner-HH-RLHF-7B``) > the dataset config's template > ``hh-rlhf`` for the
built-in default aligner > a one-line error. The template is never guessed from a path.
"""
from __future__ import annotations

import difflib
import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.generation import GenerationParams, generate_all
from metaaligner.io import (
    OUTPUT_COLUMNS,
    TEXT_SUFFIXES,
    as_released_text,
    read_table,
    write_jsonl,
)
from metaaligner.registry.objectives import ObjectiveRegistry, build_registry
from metaaligner.registry.templates import TEMPLATES, Template, get_template, render

log = logging.getLogger(__name__)

MODEL_CARD = "metaaligner.json"
DEFAULT_TEMPLATE = "hh-rlhf"
DEMO_ALIGNER_DIR = Path(__file__).resolve().parents[1] / "data" / "demo_aligner"
KNOWN_CHECKPOINTS_FILE = Path(__file__).resolve().parents[1] / "data" / "checkpoints.yaml"
KNOWN_CHECKPOINTS = "checkpoints.yaml"  # template_from value for a known released checkpoint
# Names meaning "the built-in default aligner" (the demo LoRA aligner when shipped, else embedded).
DEFAULT_NAMES = ("", "default")
# Names meaning "the raw embedded SmolLM2-135M-Instruct", even when the demo aligner is shipped.
EMBEDDED_NAMES = ("embedded", "smollm2")
EMBEDDED_LABEL = "embedded:SmolLM2-135M-Instruct"

PROVENANCE_COLUMNS = ["aligner", "template", "aspects"]
INPUT_COLUMNS = {"query": "query", "goldens": "goldens", "answer": "generated_text"}

# An empty answer (or question) cell in the aligner prompt: "empty" sends "" (ours); "nan" sends what
# the release sent, str() of the NaN pandas read (io.as_released_text).
EMPTY_CELLS = ("empty", "nan")
# --profile: the defaults of --decoding, --long_prompts and --empty_cells. "paper" runs as the release
# ran: the checkpoint's generation config, whole prompts, empty cells as "nan".
RUN_PROFILES = {"clean": {"decoding": "greedy", "long_prompts": "shorten", "empty_cells": "empty"},
                "paper": {"decoding": "checkpoint", "long_prompts": "whole", "empty_cells": "nan"}}


def run_profile(profile: str | None = None, **given: str | None) -> dict[str, str]:
    """The profile's settings with every explicitly ``given`` one on top (None: the profile's)."""
    name = profile or "clean"
    if name not in RUN_PROFILES:
        raise MetaAlignerError(f"unknown profile {name!r}; choose one of {', '.join(RUN_PROFILES)}")
    unknown = sorted(set(given) - set(RUN_PROFILES[name]))
    if unknown:
        raise MetaAlignerError(f"not a profile setting: {', '.join(unknown)}")
    settings = {**RUN_PROFILES[name], **{k: v for k, v in given.items() if v is not None}}
    if settings["empty_cells"] not in EMPTY_CELLS:
        raise MetaAlignerError(f"unknown empty_cells {settings['empty_cells']!r}; choose one of "
                               f"{', '.join(EMPTY_CELLS)}")
    return settings


# ---------------------------------------------------------------- which aligner, which template

@dataclass(frozen=True)
class AlignerSource:
    """What to load and how to prompt it."""

    model: str                  # local folder, hub name, or "embedded"
    template: str               # template name (or YAML path)
    template_from: str          # "flag" | "metaaligner.json" | "checkpoints.yaml" | "dataset" | "default"
    lora_path: str | None = None
    label: str = ""             # provenance written into outputs
    objective_group: str | None = None  # from metaaligner.json ("objective_group" or "dataset")
    objectives: tuple[str, ...] = ()    # from metaaligner.json: the keys it was trained on

    @property
    def is_embedded(self) -> bool:
        return self.model == "embedded"


def read_model_card(folder: str | Path | None) -> dict[str, Any]:
    """``<folder>/metaaligner.json`` as a dict (``{}`` when the folder or file is absent)."""
    if not folder:
        return {}
    path = Path(folder) / MODEL_CARD
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetaAlignerError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(card, dict):
        raise MetaAlignerError(f"{path}: expected a JSON object like {{\"template\": \"hh-rlhf\"}}")
    if "template" in card and not isinstance(card["template"], str):
        raise MetaAlignerError(f"{path}: 'template' must be a template name")
    return card


def known_checkpoint(name: str | None) -> dict[str, Any]:
    """The ``data/checkpoints.yaml`` entry for exactly this name (``{}`` for any other name or path)."""
    import yaml

    if not name:
        return {}
    table = yaml.safe_load(KNOWN_CHECKPOINTS_FILE.read_text(encoding="utf-8")) or {}
    return dict(table.get(str(name).strip()) or {})


def default_aligner_dir() -> Path | None:
    """The shipped demo LoRA aligner, if present."""
    return DEMO_ALIGNER_DIR if (DEMO_ALIGNER_DIR / "adapter_config.json").is_file() else None


def resolve_aligner(aligner_path: str | None = None, template: str | None = None, lora_path: str | None = None,
                    dataset_template: str | None = None) -> AlignerSource:
    """Decide which aligner to load and which prompt template it was trained with.

    ``aligner_path`` None/"default": the demo aligner shipped in ``metaaligner/data/demo_aligner``
    when present, else the embedded SmolLM2; "embedded": the embedded model; otherwise a folder or
    hub name. Template: flag > ``metaaligner.json`` (LoRA folder, then model folder) > the known
    checkpoint of exactly that name > dataset config > ``hh-rlhf`` for the built-in defaults > error.
    Loads nothing (a known name needs no hub).
    """
    name = (aligner_path or "").strip()
    fallback = None
    if name.lower() in DEFAULT_NAMES and default_aligner_dir() is not None:
        model, label, fallback = str(default_aligner_dir()), "demo_aligner", DEFAULT_TEMPLATE
    elif name.lower() in DEFAULT_NAMES + EMBEDDED_NAMES:
        model, label, fallback = "embedded", EMBEDDED_LABEL, DEFAULT_TEMPLATE
    else:
        model, label = name, name
    if lora_path:
        label += f"+lora:{lora_path}"
    card = read_model_card(lora_path) or read_model_card(model if model != "embedded" else None)
    known = {} if card else known_checkpoint(name)
    if known.get("published") is False and not Path(name).exists():  # listed so it is refused, not guessed
        raise MetaAlignerError(f"{name}: {known.get('note') or 'not published on the hub'}")
    candidates = [(template, "flag"), (card.get("template"), MODEL_CARD), (known.get("template"), KNOWN_CHECKPOINTS),
                  (dataset_template, "dataset"), (fallback, "default")]
    card = card or known  # objective group and trained objectives come from the same place
    for value, source in candidates:
        if value:
            get_template(value)  # fail early on an unknown name
            return AlignerSource(model=model, template=value, template_from=source, lora_path=lora_path,
                                 label=label, objective_group=card.get("objective_group") or card.get("dataset"),
                                 objectives=tuple(str(k) for k in card.get("objectives") or ()))
    raise MetaAlignerError(
        f"cannot tell which prompt template aligner {name!r} was trained with: pass --template "
        f"({', '.join(sorted(TEMPLATES))}, or a YAML file) or --dataset, or put {MODEL_CARD} "
        f"with {{\"template\": \"...\"}} in the model folder")


def objective_group_for(source: AlignerSource, registry: ObjectiveRegistry,
                        dataset_group: str | None = None) -> str | None:
    """Which registry group resolves bare keys: dataset config > model card > the template's
    name when it is also a group (``helpfulness`` differs between hh-rlhf and ultrafeedback)."""
    for group in (dataset_group, source.objective_group, source.template):
        if group and group in registry.groups():
            return group
    return None


# ---------------------------------------------------------------- objectives and prompts

def resolve_objectives(objectives: str | Sequence[str], registry: ObjectiveRegistry,
                       group: str | None = None, allow_free_text: bool = True) -> tuple[list[str], list[str]]:
    """``(labels, descriptions)`` for registry keys and, when allowed, free-text descriptions.

    A string is a comma-separated key list when no piece contains whitespace
    (``"harmlessness,helpfulness"``), else one free-text description. A list holds keys or
    descriptions. An item with whitespace that is not a key is a description; anything else
    must be a known key (``group:key`` picks a group), or the registry's one-line error is raised.
    """
    if isinstance(objectives, str):
        pieces = [p.strip() for p in objectives.split(",") if p.strip()]
        items = pieces if pieces and not any(any(ch.isspace() for ch in p) for p in pieces) else [objectives.strip()]
    else:
        items = [str(o).strip() for o in objectives if str(o).strip()]
    if not items:
        raise MetaAlignerError("no objectives given (use --aspects key1,key2)")
    labels, descriptions = [], []
    for item in items:
        try:
            obj = registry.get(item, group)
            labels.append(obj.key)
            descriptions.append(obj.description)
        except MetaAlignerError:
            if not (allow_free_text and any(ch.isspace() for ch in item)):
                raise
            labels.append(item)
            descriptions.append(item)
    return labels, descriptions


def normalize_answer(answer: Any, empty_cells: str = "empty") -> str:
    """The answer verbatim (whitespace-only included, as the release sends it). A missing/NaN cell
    becomes ``""``; with ``empty_cells="nan"`` (the paper profile) every cell pandas reads as NaN
    becomes ``"nan"``, as the release's ``str(answer)`` made it."""
    if empty_cells == "nan":
        return as_released_text(answer)
    if answer is None or (isinstance(answer, float) and math.isnan(answer)):
        return ""
    return str(answer)


def is_empty_answer(answer: Any) -> bool:
    """Empty or whitespace only (counted in the stats; still aligned verbatim)."""
    return not normalize_answer(answer).strip()


def build_prompts(template: str | Template, questions: Sequence[str], answers: Sequence[Any],
                  descriptions: list[str], mode: str = "better", empty_cells: str = "empty") -> list[str]:
    """One aligner input per (question, answer), objectives joined with ``'; '`` in the given order."""
    return fit_aligner_prompts(None, None, template, questions, answers, descriptions, mode, empty_cells)[0]


def fit_aligner_prompts(generator, params: GenerationParams | None, template: str | Template,
                        questions: Sequence[Any], answers: Sequence[Any], descriptions: list[str],
                        mode: str = "better", empty_cells: str = "empty") -> tuple[list[str], list[bool]]:
    """``(prompts, shortened)``: the aligner inputs, each fitted to ``generator``'s context under
    ``params.long_prompts == "shorten"``: the answer, then the question, cut in the middle; the
    instruction, the objectives and the ``Edit:`` cue stay whole (``generation.fit``). No generator:
    nothing is fitted."""
    from metaaligner.generation.fit import fit_prompts

    if len(questions) != len(answers):
        raise MetaAlignerError(f"{len(questions)} questions but {len(answers)} answers")
    tpl = template if isinstance(template, Template) else get_template(template)
    question = as_released_text if empty_cells == "nan" else str  # the release str()-ed its questions too
    rows = [(normalize_answer(a, empty_cells), question(q)) for q, a in zip(questions, answers)]

    def fill(fields: list[str]) -> str:
        return render(tpl, fields[1], fields[0], descriptions, mode=mode)

    if generator is None or params is None:
        return [fill(list(r)) for r in rows], [False] * len(rows)
    return fit_prompts(generator, params, rows, fill)


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+")  # . ! or ? and any closing quotes


def degenerate_reason(text: str, n: int = 4, max_repeats: int = 2) -> str | None:
    """"empty" for a blank output, "loop" when some word ``n``-gram (lower-cased) occurs more than
    ``max_repeats`` times or a sentence of ``n`` or more words occurs twice (an edit that repeats
    itself verbatim, as the 135M aligner does when it runs out of ideas), else None."""
    words = str(text or "").lower().split()
    if not words:
        return "empty"
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        counts[gram] = counts.get(gram, 0) + 1
        if counts[gram] > max_repeats:
            return "loop"
    seen: set[tuple[str, ...]] = set()
    for sentence in _SENTENCE_END.split(str(text).lower()):
        key = tuple(sentence.replace("\u2019", "'").rstrip("\"'\u201d)] ").split())
        if len(key) >= n and key in seen:
            return "loop"
        seen.add(key)
    return None


# The degeneration guard's rules (ours, not the release's). A loop is trimmed to its first
# occurrence; the input answer comes back only when nothing usable is left, since returning it
# would undo a refusal that happened to loop.
NGRAM_N = 4                 # word n-gram length (words as _word_key gives them)
NGRAM_MAX_REPEATS = 2       # an n-gram seen more often than this is a loop
SENTENCE_MIN_WORDS = 4      # shorter sentences may recur ("Rest helps.")
NEAR_REPEAT_RATIO = 0.8     # difflib ratio of two sentences' words at which the later repeats the earlier
MIN_USABLE_WORDS = 3        # a trimmed output with fewer words falls back to the input answer
GUARD_ACTIONS = ("kept", "trimmed", "fallback_empty", "fallback_unusable")
_WORD = re.compile(r"\w+(?:'\w+)*")
_FINISHED = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s*$")


def _word_key(token: str) -> str:
    """A whitespace token for comparing: lower-cased, curly apostrophe made straight, punctuation
    dropped ("Don\u2019t," -> "don't"); a token of punctuation only stays as it is ("...")."""
    token = token.lower().replace("\u2019", "'")
    return "".join(_WORD.findall(token)) or token


def _words(text: str) -> list[str]:
    return [_word_key(t) for t in text.split()]


def _sentence_pieces(text: str) -> list[str]:
    """The text cut after each sentence end, every piece keeping its closing quotes and the
    whitespace after it, so that joined pieces are the text's own bytes."""
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        pieces.append(text[start:m.end()])
        start = m.end()
    return pieces + ([text[start:]] if start < len(text) else [])


def _repeats(words: list[str], earlier: list[str]) -> bool:
    """``words`` (a sentence of SENTENCE_MIN_WORDS or more) says again what ``earlier`` said: it is a
    contiguous part of it, or their difflib ratio is NEAR_REPEAT_RATIO or more. Only this direction
    of containment: a later sentence that adds words to an earlier one adds something."""
    if len(words) < SENTENCE_MIN_WORDS:
        return False
    n = len(words)
    if any(earlier[i:i + n] == words for i in range(len(earlier) - n + 1)):
        return True
    return difflib.SequenceMatcher(None, earlier, words, autojunk=False).ratio() >= NEAR_REPEAT_RATIO


def _sentence_kinds(pieces: list[str]) -> list[str]:
    """Per piece: "repeat" (says again what an earlier piece said, see ``_repeats``), "echo" (a
    short sentence seen before word for word, or one without words: harmless alone) or "new"."""
    seen: list[list[str]] = []
    kinds = []
    for piece in pieces:
        words = _words(piece)
        kinds.append("repeat" if any(_repeats(words, e) for e in seen)
                     else "echo" if not words or words in seen else "new")
        seen.append(words)
    return kinds


def _trim_sentence_loop(text: str) -> str:
    """Drop a lone repeated sentence; where repeats and echoes follow one another (two or more in a
    row with a repeat among them, or one repeat then an unfinished last sentence, as when the
    token budget cuts a loop) the text is cycling, and it is cut where that run starts
    ("A. B. A. B. A." -> "A. B.")."""
    pieces = _sentence_pieces(text)
    kinds = _sentence_kinds(pieces)
    kept: list[str] = []
    i = 0
    while i < len(pieces):
        j = i + 1
        if kinds[i] != "new":
            while j < len(pieces) and kinds[j] != "new":
                j += 1
        run = kinds[i:j]
        if "repeat" not in run:
            kept += pieces[i:j]
        elif len(run) > 1 or (j == len(pieces) - 1 and not _FINISHED.search(pieces[j])):
            break
        i = j
    return text if len(kept) == len(pieces) else "".join(kept).rstrip()


def _trim_ngram_loop(text: str) -> str:
    """Cut at the second occurrence of the first word n-gram seen more than NGRAM_MAX_REPEATS times,
    keeping the loop's first turn ("no no no no no" -> "no"); catches loops without sentence ends."""
    spans = list(re.finditer(r"\S+", text))
    keys = [_word_key(m.group()) for m in spans]
    where: dict[tuple[str, ...], list[int]] = {}
    for i in range(len(keys) - NGRAM_N + 1):
        starts = where.setdefault(tuple(keys[i:i + NGRAM_N]), [])
        starts.append(i)
        if len(starts) > NGRAM_MAX_REPEATS:
            return text[:spans[starts[1]].start()].rstrip().rstrip(",;").rstrip()
    return text


def trim_loops(text: str) -> str:
    """``text`` with its loops trimmed to their first occurrence (sentence repeats, then word
    n-gram loops, until nothing changes); the very same string when it has none."""
    while True:
        trimmed = _trim_ngram_loop(_trim_sentence_loop(text))
        if trimmed == text:  # each step only shortens, so this ends
            return text
        text = trimmed


def guard_output(answer: str, output: str) -> tuple[str, str]:
    """The degeneration guard for one row: ``(text, action)``, action one of GUARD_ACTIONS. An
    output without loops is kept as it is (however short); a looping one is trimmed to its first
    occurrence; the input answer comes back only for an empty output or when fewer than
    MIN_USABLE_WORDS words survive the trimming."""
    if not str(output or "").strip():
        return answer, "fallback_empty"
    text = trim_loops(output)
    if text == output:
        return output, "kept"
    if len(text.split()) < MIN_USABLE_WORDS:
        return answer, "fallback_unusable"
    return text, "trimmed"


def guard_outputs(answers: Sequence[str], outputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """``guard_output`` per row: the texts and each row's action."""
    pairs = [guard_output(a, o) for a, o in zip(answers, outputs)]
    return [t for t, _ in pairs], [a for _, a in pairs]


def guard_default(source: AlignerSource) -> bool:
    """On for the built-in aligners (shipped demo, embedded SmolLM2), off for anything else."""
    return source.label in ("demo_aligner", EMBEDDED_LABEL)


def align_iteratively(generator, params: GenerationParams, template: str | Template, questions: Sequence[str],
                      answers: Sequence[Any], descriptions: list[str], iterations: int = 1,
                      progress: bool = False, guard: bool = False,
                      actions: list[list[str]] | None = None, empty_cells: str = "empty",
                      shortened: list[list[bool]] | None = None) -> list[list[str]]:
    """The paper's iterative alignment: iteration k aligns iteration k-1's output. Returns the
    outputs of every iteration (the last is the final answer). ``guard``: see ``guard_output``,
    each iteration against its own input; each iteration's per-row actions are appended to ``actions``,
    and which of its prompts were cut to fit the context (``fit_aligner_prompts``) to ``shortened``."""
    if iterations < 1:
        raise MetaAlignerError(f"--iterations must be >= 1, got {iterations}")
    current = [normalize_answer(a) for a in answers]
    history = []
    for _ in range(iterations):
        prompts, cut = fit_aligner_prompts(generator, params, template, questions, current, descriptions,
                                           empty_cells=empty_cells)
        if shortened is not None:
            shortened.append(cut)
        previous = current
        current = [normalize_answer(text) for text in generate_all(generator, prompts, params, progress=progress)]
        if guard:
            current, done = guard_outputs(previous, current)
            if actions is not None:
                actions.append(done)
        history.append(current)
    return history


# ---------------------------------------------------------------- backends

def check_cuda(device: str | None, backend: str) -> None:
    """A GPU was asked for (``--cuda`` / ``--device cuda``): one line when none is visible, before any
    file is touched (the released scripts fell back to the CPU without a word)."""
    import torch

    if device and device.startswith("cuda") and backend in ("auto", "hf") and not torch.cuda.is_available():
        raise MetaAlignerError(f"--device {device} (--cuda): no CUDA device is visible; "
                               "drop the flag to run on the CPU")


VLLM_OPTIONS = ("tensor_parallel_size", "max_model_len", "gpu_memory_utilization", "data_parallel_size",
                "max_lora_rank")


def make_generator(backend: str, source: AlignerSource | str | None, device: str | None = None,
                   dtype: str | None = None, base_url: str | None = None, device_map: str | None = None,
                   chat_template: bool = False, lora_path: str | None = None, vllm_options: dict | None = None):
    """Build a generation backend for an aligner (or policy) model. ``auto``: openai when a
    ``base_url`` is given, vllm when installed with a GPU, else hf. ``vllm_options``: the vllm
    backend's engine settings (``tensor_parallel_size``, default 1; ``max_model_len``;
    ``gpu_memory_utilization``); None values keep vLLM's defaults; an error with ``backend`` hf or openai."""
    from metaaligner.generation import get_generator, resolve_backend
    from metaaligner.models import resolve_model_path

    if isinstance(source, AlignerSource):
        model, lora_path = source.model, source.lora_path or lora_path
    else:
        model = source
    vllm_options = {k: v for k, v in (vllm_options or {}).items() if v is not None}
    unknown = sorted(set(vllm_options) - set(VLLM_OPTIONS))
    if unknown:
        raise MetaAlignerError(f"unknown vllm option(s) {unknown}; choose from {list(VLLM_OPTIONS)}")
    if vllm_options and backend in ("hf", "openai"):
        raise MetaAlignerError(f"{', '.join('--' + k for k in vllm_options)} needs --backend vllm or auto "
                               f"(got --backend {backend}): it would be ignored")
    backend = resolve_backend(backend, base_url)
    if vllm_options and backend != "vllm":
        log.warning("--backend auto picked %s: %s ignored", backend, ", ".join("--" + k for k in vllm_options))
    if backend == "hf":
        return get_generator("hf", model, device=device, dtype=dtype, lora_path=lora_path, device_map=device_map,
                             chat_template=chat_template)
    if backend == "vllm":
        return get_generator("vllm", model, dtype=dtype, lora_path=lora_path, chat_template=chat_template,
                             **vllm_options)
    if backend == "openai":
        if lora_path:
            from metaaligner.generation.openai_backend import LORA_SERVING

            raise MetaAlignerError(f"--lora_path {lora_path}: with --backend openai the server applies the adapter; "
                                   f"{LORA_SERVING}")
        served = resolve_model_path(None) if model in (None, "embedded") else model
        return get_generator("openai", served, base_url=base_url, chat_template=chat_template)
    return get_generator(backend, model)  # raises the unknown-backend error


# ---------------------------------------------------------------- files

def table_stem(path: str | Path) -> str:
    name = Path(path).name
    for suffix in sorted(TEXT_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _tables_in(folder: Path) -> list[Path]:
    """The input tables of a folder (hidden files and the shards of a stage not yet merged left out)."""
    from metaaligner.sharding import is_shard_name

    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and any(p.name.lower().endswith(s) for s in TEXT_SUFFIXES) and not is_shard_name(p.name))


@dataclass(frozen=True)
class FileJob:
    """One input table and where its results go: ``<output_root>/<name>.csv`` (+ ``.prompts.jsonl``)."""

    input_path: Path
    name: str
    output_root: Path

    @property
    def output_path(self) -> Path:
        return self.output_root / f"{self.name}.csv"

    @property
    def prompts_path(self) -> Path:
        return self.output_root / f"{self.name}.prompts.jsonl"


def plan_jobs(data_dir: str | Path, aligned_model: str | None, output_root: str | Path) -> list[FileJob]:
    """Input tables -> jobs, with the released layout kept: ``--data_dir DIR --aligned_model P``
    reads ``DIR/P.csv`` (or ``.csv.gz``/``.jsonl``) and writes ``OUT/P.csv``; a policy folder
    ``DIR/P/<task>.csv`` (IMHI) writes ``OUT/P/<task>.csv``; a file as ``--data_dir`` writes
    ``OUT/<aligned_model or its stem>.csv``; no ``--aligned_model`` takes every table in DIR
    (and in its policy folders)."""
    from metaaligner.io import inside

    data_dir, out = Path(data_dir), Path(output_root)
    if aligned_model:  # a name, never a way out of the input or output folder
        inside(out, aligned_model, "--aligned_model")
        if data_dir.is_dir():
            inside(data_dir, aligned_model, "--aligned_model")
    if data_dir.is_file():
        return [FileJob(data_dir, aligned_model or table_stem(data_dir), out)]
    if not data_dir.is_dir():
        raise MetaAlignerError(f"{data_dir}: no such file or folder (--data_dir)")
    if aligned_model:
        files = [p for p in _tables_in(data_dir) if table_stem(p) == aligned_model]
        if len(files) > 1:
            raise MetaAlignerError(f"{data_dir}: several files for {aligned_model!r}: "
                                   f"{', '.join(p.name for p in files)}")
        if files:
            return [FileJob(files[0], aligned_model, out)]
        sub = data_dir / aligned_model
        if sub.is_dir() and _tables_in(sub):
            return [FileJob(p, f"{aligned_model}/{table_stem(p)}", out) for p in _tables_in(sub)]
        known = sorted({table_stem(p) for p in _tables_in(data_dir)} |
                       {p.name for p in data_dir.iterdir() if p.is_dir() and _tables_in(p)})
        raise MetaAlignerError(f"{data_dir}: no table for --aligned_model {aligned_model!r}; found: "
                               f"{', '.join(known) or 'nothing'}")
    jobs = [FileJob(p, table_stem(p), out) for p in _tables_in(data_dir)]
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        jobs += [FileJob(p, f"{sub.name}/{table_stem(p)}", out) for p in _tables_in(sub)]
    if not jobs:
        raise MetaAlignerError(f"{data_dir}: no CSV/CSV.gz/JSONL files")
    return jobs


def load_policy_rows(path: str | Path, columns: dict[str, str] | None = None,
                     limit: int | None = None) -> list[dict[str, str]]:
    """Rows ``{row_id, query, goldens, answer}`` from a policy-output table (released columns by
    default: ``query``, ``goldens``, ``generated_text``; ``goldens`` may be absent)."""
    cols = {**INPUT_COLUMNS, **(columns or {})}
    try:
        rows = read_table(path, required=[cols["query"], cols["answer"]])
    except DataError as exc:
        from metaaligner.cli import add_column_hint

        raise add_column_hint(exc, cols)
    has_goldens = cols["goldens"] in rows[0]
    out = []
    for i, row in enumerate(rows[: limit if limit is not None else None]):
        golden = row.get(cols["goldens"], "") if has_goldens else ""
        if golden is None:
            golden = ""
        if not isinstance(golden, str):
            raise DataError(path, f"expected text, got {type(golden).__name__}", row=i + 1, column=cols["goldens"])
        out.append({"row_id": i, "query": row[cols["query"]], "goldens": golden, "answer": row[cols["answer"]]})
    return out


@dataclass
class AlignStats:
    name: str = ""
    rows_in: int = 0
    aligned: int = 0        # rows generated by this run
    resumed: int = 0        # rows taken from an earlier, interrupted run
    empty_answers: int = 0  # input answers that were empty or whitespace only
    empty_outputs: int = 0  # aligner outputs that came back empty
    trimmed: int = 0        # looping outputs trimmed to their first occurrence (the guard; all iterations)
    fallbacks: int = 0      # outputs replaced by their input answer: empty, or nothing usable after trimming
    shortened: int = 0      # rows whose prompt was cut in the middle to fit the context (any iteration)
    empty_cells: str = "empty"  # how empty answers were sent (EMPTY_CELLS)
    prompt_chars: int = 0
    seconds: float = 0.0
    output: str = ""
    skipped: str = ""       # why the whole file was skipped, if it was

    def summary(self) -> str:
        if self.skipped:
            return f"{self.name}: skipped ({self.skipped})"
        rate = self.aligned / self.seconds if self.seconds > 0 else 0.0
        sent = "'nan'" if self.empty_cells == "nan" else "''"
        return (f"{self.name}: {self.rows_in} rows in, {self.aligned} aligned, {self.resumed} resumed, "
                f"{self.empty_answers} empty answers (aligned as {sent}), {self.empty_outputs} empty outputs, "
                + (f"{self.shortened} prompts shortened to fit the context, " if self.shortened else "")
                + (f"{self.trimmed} looping outputs trimmed to their first occurrence, " if self.trimmed else "")
                + (f"{self.fallbacks} fell back to the answer (nothing usable left), " if self.fallbacks else "")
                + f"{self.seconds:.1f} s, {rate:.2f} rows/s -> {self.output}")


@dataclass
class AlignRunSettings:
    """Everything about a run that must match when resuming."""

    source: AlignerSource
    aspect_labels: list[str]
    descriptions: list[str]
    params: GenerationParams = field(default_factory=GenerationParams)
    iterations: int = 1
    backend: str = ""                # recorded in the fingerprint (hf and vllm may decode differently)
    endpoint: str | None = None      # an OpenAI-compatible server's base URL (stored redacted)
    guard: bool = False     # degeneration guard (guard_output); on for the built-in aligners
    empty_cells: str = "empty"       # EMPTY_CELLS
    profile: str = "clean"           # the RUN_PROFILES entry the settings started from (recorded)
    flags: dict[str, Any] = field(default_factory=dict)  # the script's whole config, less what cannot change a row

    @property
    def columns(self) -> list[str]:
        extra = [f"aligned_responses_{k}" for k in range(1, self.iterations)] if self.iterations > 1 else []
        return OUTPUT_COLUMNS + extra + PROVENANCE_COLUMNS

    def provenance(self) -> dict[str, str]:
        return {"aligner": self.source.label, "template": self.source.template,
                "aspects": ",".join(self.aspect_labels)}

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides an output row (what ``--resume`` must find unchanged)."""
        from metaaligner.io import folder_identity, redact_url

        tpl = get_template(self.source.template)
        p = self.params
        return {"stage": "aligner", "aligner": self.source.label, "model": self.source.model,
                "model_files": folder_identity(self.source.model), "lora_path": self.source.lora_path,
                "lora_files": folder_identity(self.source.lora_path), "template": tpl.name,
                "template_text": [tpl.better, tpl.equal], "aspects": list(self.aspect_labels),
                "objective_texts": list(self.descriptions), **p.describe(), "empty_cells": self.empty_cells,
                "iterations": self.iterations, "backend": self.backend, "endpoint": redact_url(self.endpoint),
                "guard": self.guard, **self.flags}


def dry_run_file(job: FileJob, settings: AlignRunSettings, columns: dict[str, str] | None = None,
                 limit: int | None = None) -> AlignStats:
    """Write the exact aligner inputs (first iteration) as ``{"query", "prompt"}`` JSON lines."""
    start = time.time()
    rows = load_policy_rows(job.input_path, columns, limit)
    prompts = build_prompts(settings.source.template, [r["query"] for r in rows], [r["answer"] for r in rows],
                            settings.descriptions, empty_cells=settings.empty_cells)
    write_jsonl(job.prompts_path, ({"query": r["query"], "prompt": p} for r, p in zip(rows, prompts)))
    return AlignStats(name=job.name, rows_in=len(rows), empty_answers=sum(is_empty_answer(r["answer"]) for r in rows),
                      prompt_chars=sum(len(p) for p in prompts), seconds=time.time() - start,
                      output=str(job.prompts_path))


def align_file(job: FileJob, settings: AlignRunSettings, generator, columns: dict[str, str] | None = None,
               limit: int | None = None, resume: bool = False, chunk_rows: int | None = None,
               progress: bool = True, overwrite: bool = False, plan=None) -> AlignStats:
    """Align one table into ``job.output_path``, appending finished chunks to a partial file so a
    killed run continues with ``resume=True`` (every row exactly once). The output carries the
    settings' fingerprint: a resume with other settings, or a finished output made with other
    settings, is an error unless ``overwrite``; rows whose input changed are aligned again.
    ``generator`` may be a callable returning the backend, so nothing is loaded when every row is
    already done. ``plan`` (``sharding.ShardPlan``): this process's slice, written as a shard
    (merged by rank 0 of a launched run), or ``--merge``."""
    from metaaligner.io import row_hash
    from metaaligner.sharding import ShardPlan, ShardSet, run_rows

    start, plan = time.time(), plan or ShardPlan()
    rows = load_policy_rows(job.input_path, columns, limit)
    stats = AlignStats(name=job.name, rows_in=len(rows), output=str(job.output_path),
                       empty_answers=sum(is_empty_answer(r["answer"]) for r in rows), empty_cells=settings.empty_cells)
    shards = ShardSet(job.output_path, len(rows), settings.fingerprint(), settings.columns)
    writer = None
    if not plan.merge:
        writer = shards.open(plan, {r["row_id"]: row_hash(r) for r in rows}, resume, overwrite)
        if _already_complete(writer, rows, plan, stats):
            return stats
        _check_provenance(writer, settings.provenance())
    actions: list[list[str]] = []
    used: dict[str, Any] = {}
    chunk = chunk_rows or max(1, settings.params.batch_size * 4)  # resume granularity
    stats.resumed, final, out, writer = run_rows(
        rows, shards, plan, generator, _row_maker(settings, stats, actions, used), chunk, job.name, resume,
        overwrite, progress, writer)
    _finish_stats(stats, rows, plan, final, actions, time.time() - start)
    if final is None:  # this process wrote its shard only
        stats.output = str(shards.path(plan))
    if out is not None or writer is not None:
        (out or writer).write_record(profile=settings.profile, **used, aligned=stats.aligned, resumed=stats.resumed,
                                     shortened=stats.shortened, empty_answers=stats.empty_answers,
                                     empty_cells=settings.empty_cells, long_prompts=settings.params.long_prompts)
    return stats


def _already_complete(writer, rows: list[dict], plan, stats: AlignStats) -> bool:
    """One process resuming a finished output with every row done: nothing to do (the writer closed)."""
    from metaaligner.io import row_hash

    if plan.sharded or not (writer.from_output and len(writer.rows) == len(rows)) or \
            not all(writer.is_done(r["row_id"], row_hash(r)) for r in rows):
        return False
    writer.close()
    stats.skipped, stats.resumed = "already complete; drop --resume to redo it", len(rows)
    return True


def _check_provenance(writer, provenance: dict[str, str]) -> None:
    """Refuse a partial file whose rows name another aligner, template or objectives."""
    if writer.rows and not writer.from_output:
        first = next(iter(writer.rows.values()))
        mismatch = [k for k, v in provenance.items() if first.get(k) != v]
        if mismatch:
            writer.close()
            raise MetaAlignerError(f"{writer.partial}: made with other settings ({', '.join(mismatch)} differ); "
                                   "delete it or run without --resume")


def _row_maker(settings: AlignRunSettings, stats: AlignStats, actions: list, used: dict):
    """``make_rows(backend, part)`` of ``run_resumable``: the aligned rows of one chunk."""
    provenance = settings.provenance()

    def make_rows(backend, part: list[dict]) -> list[dict]:
        used.setdefault("decoding_used", _decoding_used(backend, settings.params))
        cut: list[list[bool]] = []
        history = align_iteratively(backend, settings.params, settings.source.template,
                                    [r["query"] for r in part], [r["answer"] for r in part],
                                    settings.descriptions, settings.iterations, guard=settings.guard,
                                    actions=actions, empty_cells=settings.empty_cells, shortened=cut)
        stats.shortened += sum(any(flags) for flags in zip(*cut))
        out_rows = []
        for j, row in enumerate(part):
            out = {"row_id": row["row_id"], "query": row["query"], "goldens": row["goldens"],
                   "origin_responses": row["answer"], "aligned_responses": history[-1][j], **provenance}
            for k in range(1, settings.iterations):
                out[f"aligned_responses_{k}"] = history[k - 1][j]
            out_rows.append(out)
        return out_rows

    return make_rows


def _finish_stats(stats: AlignStats, rows: list[dict], plan, final: list[dict] | None, actions: list,
                  seconds: float) -> None:
    stats.aligned = 0 if plan.merge else len(plan.rows(len(rows))) - stats.resumed
    counts = Counter(a for done in actions for a in done)
    stats.trimmed, stats.fallbacks = counts["trimmed"], counts["fallback_empty"] + counts["fallback_unusable"]
    stats.empty_outputs = sum(1 for r in final or [] if r["aligned_responses"] == "")
    stats.seconds = seconds


def _decoding_used(backend, params: GenerationParams) -> dict[str, Any]:
    """What the backend did to decode, for the run record (a backend that cannot say: the settings)."""
    if hasattr(backend, "decoding_used"):
        return backend.decoding_used(params)
    return {"decoding": params.decoding}


# ---------------------------------------------------------------- Python API

class Aligner:
    """Align answers to objectives from Python.

    ``Aligner()`` uses the built-in default (the demo aligner when shipped, else the embedded
    SmolLM2 with the ``hh-rlhf`` template); ``Aligner("MetaAligner/MetaAligner-HH-RLHF-7B",
    template="hh-rlhf")`` a hub model; ``Aligner("path/to/folder")`` a folder with ``metaaligner.json``.
    The model loads on the first ``align`` call; ``prompts`` never loads it.

    ``profile="paper"`` runs as the release ran (``RUN_PROFILES``): the checkpoint's generation config
    (``decoding="checkpoint"``, seeded by ``params.seed``), whole prompts, empty answers as ``"nan"``;
    ``decoding``, ``long_prompts`` and ``empty_cells`` override it one by one. ``vllm_options``:
    ``{"tensor_parallel_size": 1, "max_model_len": ..., "gpu_memory_utilization": ...}`` for the vllm backend.
    """

    def __init__(self, model: str | None = None, template: str | None = None, lora_path: str | None = None,
                 backend: str = "auto", device: str | None = None, dtype: str | None = None,
                 base_url: str | None = None, objectives_file: str | None = None,
                 add_objective: list[str] | None = None, objective_group: str | None = None,
                 params: GenerationParams | None = None, generator=None, guard: bool | None = None,
                 profile: str = "clean", decoding: str | None = None, long_prompts: str | None = None,
                 empty_cells: str | None = None, vllm_options: dict | None = None):
        self.source = resolve_aligner(model, template, lora_path)
        self.guard = guard_default(self.source) if guard is None else guard  # see guard_output
        self.guard_actions: Counter[str] = Counter()  # the guard's action per output so far (GUARD_ACTIONS)
        self.registry = build_registry(objectives_file, add_objective)
        self.group = objective_group_for(self.source, self.registry, objective_group)
        base, unset = params or GenerationParams(), GenerationParams()
        # what params set away from its defaults counts as given explicitly, like the keyword arguments
        decoding = decoding or (base.decoding if base.decoding != unset.decoding else None)
        long_prompts = long_prompts or (base.long_prompts if base.long_prompts != unset.long_prompts else None)
        settings = run_profile(profile, decoding=decoding, long_prompts=long_prompts, empty_cells=empty_cells)
        self.empty_cells = settings["empty_cells"]
        self.params = replace(base, decoding=settings["decoding"], long_prompts=settings["long_prompts"])
        self.shortened = 0  # prompts cut in the middle to fit the context so far
        self._backend_kwargs = {"backend": backend, "device": device, "dtype": dtype, "base_url": base_url,
                                "vllm_options": vllm_options}
        self._generator = generator

    @property
    def generator(self):
        if self._generator is None:
            self._generator = make_generator(source=self.source, **self._backend_kwargs)
        return self._generator

    def descriptions(self, objectives: str | Sequence[str]) -> list[str]:
        return resolve_objectives(objectives, self.registry, self.group)[1]

    def prompts(self, question: str | Sequence[str], answer: str | Sequence[str],
                objectives: str | Sequence[str]) -> str | list[str]:
        questions, answers, single = _as_lists(question, answer)
        out = build_prompts(self.source.template, questions, answers, self.descriptions(objectives),
                            empty_cells=self.empty_cells)
        return out[0] if single else out

    def align(self, question: str | Sequence[str], answer: str | Sequence[str], objectives: str | Sequence[str],
              iterations: int = 1) -> str | list[str]:
        """The aligned answer(s): one string for one pair, a list for lists (batched)."""
        questions, answers, single = _as_lists(question, answer)
        actions: list[list[str]] = []
        cut: list[list[bool]] = []
        history = align_iteratively(self.generator, self.params, self.source.template, questions, answers,
                                    self.descriptions(objectives), iterations, guard=self.guard, actions=actions,
                                    empty_cells=self.empty_cells, shortened=cut)
        self.guard_actions.update(a for done in actions for a in done)
        self.shortened += sum(sum(flags) for flags in cut)
        return history[-1][0] if single else history[-1]

    @property
    def trimmed(self) -> int:
        """Looping outputs trimmed to their first occurrence so far."""
        return self.guard_actions["trimmed"]

    @property
    def fallbacks(self) -> int:
        """Outputs replaced by their input answer so far (empty, or nothing usable after trimming)."""
        return self.guard_actions["fallback_empty"] + self.guard_actions["fallback_unusable"]


def _as_lists(question, answer) -> tuple[list[str], list[str], bool]:
    if isinstance(question, str) and (answer is None or isinstance(answer, str)):
        return [question], [normalize_answer(answer)], True
    if isinstance(question, str) or isinstance(answer, str):
        raise MetaAlignerError("give question and answer both as strings or both as lists")
    questions, answers = list(question), list(answer)
    if len(questions) != len(answers):
        raise MetaAlignerError(f"{len(questions)} questions but {len(answers)} answers")
    return questions, answers, False
