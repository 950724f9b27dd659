"""The one inference of the conditioned baselines (SFT, CDPO, MORLHF), written in the aligner output format.

One function serves all three: SFT and CDPO models were trained on reward-conditioned prompts, so
their queries carry the desired rewards (``<Harmlessness>: 4.19; ... | {query}``); the MORLHF policy
reads the plain query. Output columns: ``query`` (the input query, unconditioned), ``goldens``,
``origin_responses`` (the input's policy answer column when it has one, e.g. ``generated_text``,
else empty) and ``aligned_responses`` (this baseline's response), so ``evaluation/`` scores the file
exactly like an aligner output; then provenance: ``aligner`` (method and model path), ``template``
(the dataset config), ``aspects`` (its objective keys), ``targets`` (the conditioning rewards, or empty).

The conditioning text (``--conditioning_text``): ``auto`` (default) uses what the model folder's
``baseline.json`` records (``make_sft_data.py`` / ``make_cdpo_data.py --conditioning_text``, carried
through training), ``clean`` when it records none; an explicit ``clean`` or ``released`` overrides it,
with a one-line warning when it differs from the recorded text (the model was trained on the other).

Target rewards, first match wins per objective: ``--target_rewards key=value,...``; the targets the
model folder records in ``baseline.json`` (written by the training scripts: the maximum normalised
reward in the training data unless overridden there); the maximum normalised reward of
``--rewards_csv``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaaligner.cli import check, deprecated_aliases
from metaaligner.errors import MetaAlignerError
from metaaligner.io import OUTPUT_COLUMNS
from metaaligner.methods.common import METADATA_FILE, Conditioning, read_metadata, write_metadata  # noqa: F401
from metaaligner.registry.templates import CONDITIONING_TEXTS
from metaaligner.sharding import MERGE_HELP, SHARD_HELP

log = logging.getLogger(__name__)

# Provenance, as the aligner writes it (``evaluation/judge.py`` reads ``template`` as the dataset config).
PROVENANCE_COLUMNS = ["aligner", "template", "aspects", "targets"]
CONDITIONING = ("auto", "targets", "none")


@dataclass
class BaselineInferenceConfig:
    aligner_path: str = field(default="embedded", metadata={
        "help": "the trained baseline (model folder or LoRA adapter; 'embedded' = SmolLM2, for smoke tests)"})
    data_dir: str = field(default="samples/HH-RLHF_model_output/gpt-3.5-turbo.csv.gz", metadata={
        "help": "input CSV/JSONL with the dataset config's query and goldens columns (e.g. a policy-output "
                "file from samples/ or /work/shared/data/metaaligner-samples)"})
    model_output_path: str = field(default="runs/baseline_outputs", metadata={"help": "output folder"})
    aligned_model: str | None = field(default=None, metadata={
        "help": "output file name without .csv (default: the input file's name)"})
    dataset: str = field(default="hh-rlhf", metadata={"help": "dataset config name or YAML path",
                                                       **deprecated_aliases("--config", "--dataset_config")})
    conditioning: str = field(default="auto", metadata={
        "help": "targets: prefix the desired rewards (SFT, CDPO); none: plain query (MORLHF); auto: what the "
                "model's baseline.json says (targets when it has none)"})
    conditioning_text: str = field(default="auto", metadata={
        "help": "how the rewards are written: clean (<Harmlessness>: 0.50), released (the release's text: "
                "<Harmlessness>: 0.5, UltraFeedback <instruction_following>: 5), auto: what baseline.json "
                "records (clean when it records none); an override that differs warns"})
    target_rewards: str | None = field(default=None, metadata={
        "help": "desired rewards, key=value,... (objective keys or names); others from baseline.json / --rewards_csv"})
    rewards_csv: str | None = field(default=None, metadata={
        "help": "stage-1 rewards CSV: default targets = its maximum normalised reward per objective"})
    backend: str = field(default="hf", metadata={"help": "generation backend: hf, vllm, openai or auto"})
    max_new_tokens: int = field(default=256, metadata={**check(ge=1), "help": "max tokens generated per response"})
    decoding: str = field(default="greedy", metadata={
        "help": "greedy (argmax, or sampling with --temperature > 0) | checkpoint (the model folder's "
                "generation_config.json, exactly as a bare model.generate applies it; seeded by --seed)"})
    temperature: float = field(default=0.0, metadata={**check(ge=0.0), "help": "sampling temperature (0 = greedy)"})
    top_p: float = field(default=1.0, metadata={**check(gt=0.0, le=1.0), "help": "nucleus sampling p"})
    batch_size: int = field(default=16, metadata={**check(ge=1), "help": "prompts per generation batch"})
    max_input_tokens: int | None = field(default=None, metadata={**check(ge=1),
        "help": "hf: cut longer prompts in the middle (their start and end kept)"})
    device: str | None = field(default=None, metadata={"help": "hf: cpu, cuda, ... (default: auto)"})
    dtype: str | None = field(default=None, metadata={"help": "hf: float32, bfloat16, float16 (default: by device)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    cut_next_turn: bool = field(default=True, metadata={
        "help": "cut a response where the model starts a new '\\nHuman:'/'\\nAssistant:' turn itself"})
    limit: int | None = field(default=None, metadata={**check(ge=1), "help": "only the first N rows"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted run (only one with the same model, "
                                                          "settings and inputs)"})
    overwrite: bool = field(default=False,
                            metadata={"help": "replace an output made with other settings (else that is an error)"})
    shard: str | None = field(default=None, metadata={"help": SHARD_HELP})
    merge: bool = field(default=False, metadata={"help": MERGE_HELP})

    def __post_init__(self):
        if self.conditioning not in CONDITIONING:
            hint = " (the text format is --conditioning_text)" if self.conditioning in CONDITIONING_TEXTS else ""
            raise MetaAlignerError(f"--conditioning must be one of {CONDITIONING}, got {self.conditioning!r}{hint}")
        if self.conditioning_text not in ("auto", *CONDITIONING_TEXTS):
            raise MetaAlignerError(f"--conditioning_text must be one of {('auto', *CONDITIONING_TEXTS)}, "
                                   f"got {self.conditioning_text!r}")


def resolve_targets(keys: list[str], names: list[str], spec: str | None, meta: dict[str, Any],
                    rewards_csv: str | None) -> list[float]:
    """Targets per objective: ``spec`` > ``meta['targets']`` > max of ``rewards_csv``."""
    from metaaligner.methods.common import default_targets, parse_target_rewards, read_reward_pairs

    defaults: list[float | None] = [None] * len(keys)
    recorded = meta.get("targets") or {}
    if recorded:
        defaults = [recorded.get(k) for k in keys]
    if any(d is None for d in defaults) and rewards_csv:
        maxima = default_targets(read_reward_pairs(rewards_csv, len(keys)).pairs)
        defaults = [d if d is not None else m for d, m in zip(defaults, maxima)]
    try:
        return parse_target_rewards(spec, keys, names, defaults=defaults)
    except MetaAlignerError as exc:
        raise MetaAlignerError(f"{exc}; give --target_rewards, --rewards_csv, or a model folder whose "
                               f"{METADATA_FILE} records targets") from None


def resolve_conditioning_text(requested: str, meta: dict[str, Any]) -> str:
    """``auto`` -> the text ``baseline.json`` records (``clean`` when none); an explicit text wins,
    with a one-line warning when the model was trained on the other."""
    recorded = meta.get("conditioning_text")
    if requested == "auto":
        return recorded or "clean"
    if recorded and recorded != requested:
        log.warning("--conditioning_text %s, but the model's %s records %s (its training text); using %s",
                    requested, METADATA_FILE, recorded, requested)
    return requested


def build_queries(queries: list[str], names: list[str] | Conditioning, targets: list[float] | None) -> list[str]:
    from metaaligner.methods.common import conditioned_prompt

    if targets is None:
        return list(queries)
    return [conditioned_prompt(q, names, targets) for q in queries]


def output_name(data_path: str | Path) -> str:
    """``gpt-3.5-turbo.csv.gz`` -> ``gpt-3.5-turbo``."""
    name = Path(data_path).name
    for suffix in (".gz", ".csv", ".jsonl", ".json"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def run_inference(config: BaselineInferenceConfig, generator=None) -> Path:
    """Generate one response per input row; write ``<model_output_path>/<aligned_model>.csv``
    (``--shard I/N``, ``--merge`` and torchrun ranks as in ``metaaligner.sharding``).

    ``generator`` (optional) is an object with ``.generate(prompts, params)`` (tests, the Python API);
    by default it is built from ``config.backend`` and ``config.aligner_path``.
    """
    from metaaligner.generation import get_generator
    from metaaligner.io import row_hash
    from metaaligner.sharding import ShardSet, plan_shards, rank_device, run_rows

    start = time.time()
    plan = plan_shards(config.shard, config.merge)
    meta = read_metadata(config.aligner_path if config.aligner_path not in (None, "", "embedded") else None)
    conditioning, fmt, targets, text = _conditioning(config, meta)
    rows, columns = _read_inputs(config)
    name = config.aligned_model or output_name(config.data_dir)
    out_path = Path(config.model_output_path) / f"{name}.csv"
    provenance = _provenance(config, meta, targets)
    shards = ShardSet(out_path, len(rows), _fingerprint(config, provenance, conditioning, targets, text),
                      OUTPUT_COLUMNS + PROVENANCE_COLUMNS)
    empty = [0]

    def make_backend():
        kwargs = {k: v for k, v in {"device": rank_device(config.device, plan), "dtype": config.dtype,
                                    "max_input_tokens": config.max_input_tokens}.items() if v is not None}
        return get_generator(config.backend, config.aligner_path, **kwargs)

    def make_rows(backend, part: list[dict]) -> list[dict]:
        ids = [item["row_id"] for item in part]
        return _generate_rows(config, backend, [rows[i] for i in ids], ids, columns, fmt, targets, provenance, empty)

    resumed, final, _, _ = run_rows(
        [{"row_id": i} for i in range(len(rows))], shards, plan, generator or make_backend, make_rows,
        max(1, config.batch_size) * 4, "baseline inference", config.resume, config.overwrite,
        hashes={i: row_hash(r) for i, r in enumerate(rows)})
    done = 0 if plan.merge else len(plan.rows(len(rows))) - resumed
    elapsed = time.time() - start
    written = out_path if final is not None else shards.path(plan)
    print(f"baseline inference: {len(rows)} rows in, {done} generated ({len(rows) - done} resumed), "
          f"{empty[0]} empty queries left empty; {elapsed:.1f}s "
          f"({done / elapsed if elapsed > 0 else 0:.2f} rows/s) -> {written}")
    return written


def _conditioning(config: BaselineInferenceConfig, meta: dict[str, Any]):
    """(conditioning, text format, target rewards or None, conditioning text) of the run."""
    from metaaligner.methods.common import ObjectiveSpec, format_targets

    spec = ObjectiveSpec.from_config(config.dataset)
    conditioning = config.conditioning
    if conditioning == "auto":
        conditioning = "none" if meta.get("conditioning", "targets") is None else "targets"
    targets = None
    text = resolve_conditioning_text(config.conditioning_text, meta)
    fmt = spec.conditioning(text)
    if conditioning == "targets":
        targets = resolve_targets(spec.keys, spec.names, config.target_rewards, meta, config.rewards_csv)
        print(f"conditioning on target rewards {format_targets(spec.keys, targets)} ({text} text)")
    else:
        print("no reward conditioning (plain queries)")
    return conditioning, fmt, targets, text


def _read_inputs(config: BaselineInferenceConfig) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The input rows (first ``--limit``) and the dataset config's query, goldens and answer columns."""
    from metaaligner.io import read_records
    from metaaligner.registry.datasets import load_dataset_config

    dataset = load_dataset_config(config.dataset)
    rows = read_records(config.data_dir)
    columns = {"query": dataset.columns.get("query", "query"), "goldens": dataset.columns.get("goldens", "goldens"),
               "answer": dataset.columns.get("answer", "generated_text")}
    if columns["query"] not in rows[0]:
        from metaaligner.errors import DataError

        raise DataError(config.data_dir, f"missing column (found: {', '.join(sorted(rows[0]))})",
                        column=columns["query"])
    if config.limit is not None:
        rows = rows[:config.limit]
    return rows, columns


def _provenance(config: BaselineInferenceConfig, meta: dict[str, Any], targets: list[float] | None) -> dict[str, str]:
    from metaaligner.methods.common import ObjectiveSpec, format_targets

    spec = ObjectiveSpec.from_config(config.dataset)
    return {"aligner": f"{meta.get('method', 'baseline')}:{config.aligner_path}", "template": config.dataset,
            "aspects": ",".join(spec.keys),
            "targets": format_targets(spec.keys, targets) if targets is not None else ""}


def _fingerprint(config: BaselineInferenceConfig, provenance: dict[str, str], conditioning: str,
                 targets: list[float] | None, text: str) -> dict[str, Any]:
    """Everything that decides an output row (what ``--resume`` and ``--merge`` must find unchanged)."""
    from metaaligner.io import folder_identity

    fingerprint = {"stage": "baseline", **provenance, "model_files": folder_identity(config.aligner_path),
                   "conditioning": conditioning, "backend": config.backend, "max_new_tokens": config.max_new_tokens,
                   "decoding": config.decoding, "temperature": config.temperature, "top_p": config.top_p,
                   "seed": config.seed,
                   "max_input_tokens": config.max_input_tokens, "cut_next_turn": config.cut_next_turn}
    if targets is not None and text != "clean":
        fingerprint["conditioning_text"] = text  # only when not clean: outputs made before the switch still resume
    return fingerprint


def _generate_rows(config: BaselineInferenceConfig, generator, rows: list[dict], ids: list[int],
                   columns: dict[str, str], fmt, targets: list[float] | None, provenance: dict[str, str],
                   empty: list[int]) -> list[dict[str, Any]]:
    """Output rows of one chunk; an empty query is left unanswered (counted in ``empty``)."""
    from metaaligner.generation import GenerationParams
    from metaaligner.methods.common import cut_at_next_turn

    params = GenerationParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              top_p=config.top_p, seed=config.seed, batch_size=config.batch_size,
                              decoding=config.decoding)
    queries = [str(r.get(columns["query"]) or "") for r in rows]
    live = [j for j, q in enumerate(queries) if q.strip()]
    empty[0] += len(rows) - len(live)
    outputs = [""] * len(rows)
    if live:
        generated = generator.generate(build_queries([queries[j] for j in live], fmt, targets), params)
        for j, text in zip(live, generated):
            outputs[j] = cut_at_next_turn(text) if config.cut_next_turn else text
    return [{"row_id": i, "query": r.get(columns["query"], ""), "goldens": r.get(columns["goldens"], ""),
             "origin_responses": r.get(columns["answer"], ""), "aligned_responses": out, **provenance}
            for i, r, out in zip(ids, rows, outputs)]


def make_parser(description: str | None = None):
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(BaselineInferenceConfig, description=description or __doc__)


def main(config: BaselineInferenceConfig) -> Path:
    return run_inference(config)
