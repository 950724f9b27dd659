r"""Align policy outputs with a MetaAligner model (the paper's main job).

    # the built-in default aligner on 4 rows of the shipped Claude-3 HH-RLHF sample (CPU, offline)
    python inference/aligner_inference.py --dataset hh-rlhf --aligned_model Claude-3 --limit 4
    # the exact prompts only, no model loaded
    python inference/aligner_inference.py --dataset hh-rlhf --aligned_model Claude-3 --dry_run
    # a released checkpoint where a hub is reachable, GPU (known names need no --template)
    python inference/aligner_inference.py --aligner_path MetaAligner/MetaAligner-UltraFeedback-7B \
        --dataset ultrafeedback --aspects honesty,truthfulness,specificity
    # the released README's command, as written, from inference/ (--dry_run: offline, no hub)
    cd inference && python aligner_inference.py --aligner_path MetaAligner/MetaAligner-HH-RLHF-1.1B \
        --data_dir ../samples/HH-RLHF_model_output --aligned_model Claude-3 --model_output_path OUT \
        --cuda --batch_size 16 --llama --aspects harmlessness,helpfulness,humour --dry_run
    # as the release ran: the checkpoint's generation config (seeded), whole prompts, empty answers as "nan"
    python inference/aligner_inference.py --aligner_path MetaAligner/MetaAligner-HH-RLHF-7B \
        --dataset hh-rlhf --max_new_tokens 1024 --profile paper --seed 0
    # an OpenAI-compatible server (vLLM, transformers serve); key from OPENAI_API_KEY
    python inference/aligner_inference.py --backend openai --base_url http://127.0.0.1:8000/v1 \
        --aligner_path my-served-aligner --template hh-rlhf --dataset hh-rlhf

Reads ``--data_dir`` (a CSV/CSV.gz/JSONL file or a folder of them, one per policy; IMHI policies are
folders of tasks) and writes ``<model_output_path>/<policy>.csv`` with the released columns
``query, goldens, origin_responses, aligned_responses`` plus ``aligner, template, aspects``.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

from metaaligner import cli
from metaaligner.sharding import MERGE_HELP, NOT_IN_FINGERPRINT as SHARD_FLAGS, SHARD_HELP

log = logging.getLogger("aligner_inference")


@dataclass
class AlignerInferenceConfig:
    aligner_path: str = field(default=None, metadata={"help": "aligner: local folder, hub name, 'embedded' (SmolLM2-135M-Instruct); default: the shipped demo aligner if present, else embedded"})
    data_dir: str = field(default=None, metadata={"help": "policy outputs: a CSV/CSV.gz/JSONL file or a folder of them (default: the --dataset config's samples folder)"})
    aligned_model: str = field(default=None, metadata={"help": "policy to align: file stem (or IMHI folder) in --data_dir; default: every table there"})
    model_output_path: str = field(default="outputs/aligned", metadata={"help": "output folder: <model_output_path>/<policy>.csv"})
    batch_size: int = field(default=16, metadata={**cli.check(ge=1), "help": "prompts per generate call (hf, vllm); concurrent requests (openai)"})
    aspects: str = field(default=None, metadata={"help": "comma-separated objective keys, in order (default: the --dataset config's objectives, else those in the aligner's metaaligner.json)"})
    lora_path: str = field(default=None, metadata={"help": "PEFT/LoRA adapter folder applied to --aligner_path"})
    template: str = field(default=None, metadata={"help": "prompt template: hh-rlhf | ultrafeedback | imhi | paper | aligner | a YAML file (default: metaaligner.json in the model folder, a known checkpoint's, then --dataset)"})
    dataset: str = field(default=None, metadata={"help": "dataset config: hh-rlhf | ultrafeedback | imhi | path.yaml (template, objective group, columns, samples folder)"})
    query_column: str = field(default=None, metadata={"help": "input column holding the query (default: the --dataset config's, else 'query')"})
    answer_column: str = field(default=None, metadata={"help": "input column holding the policy's answer (default: the --dataset config's, else 'generated_text')"})
    goldens_column: str = field(default=None, metadata={"help": "input column holding the golden answer, optional (default: the --dataset config's, else 'goldens')"})
    backend: str = field(default="auto", metadata={"help": "hf | vllm | openai | auto (openai with --base_url, vllm if installed with a GPU, else hf)"})
    limit: int = field(default=None, metadata={**cli.check(ge=1), "help": "align only the first N rows of each file"})
    iterations: int = field(default=1, metadata={**cli.check(ge=1), "help": "iterative alignment: feed the aligned answer back K times"})
    guard: str = field(default="auto", metadata={"help": "degeneration guard: a looping output is trimmed to its first occurrence (a sentence repeating an earlier one verbatim or nearly, a word 4-gram 3+ times); an empty output, or one with under 3 words left, falls back to the input answer; auto = on for the built-in aligners, off for others | on | off"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted run (rows already written are kept, none twice; only a run with the same settings and inputs)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an output made with other settings (else that is an error)"})
    shard: str = field(default=None, metadata={"help": SHARD_HELP})
    merge: bool = field(default=False, metadata={"help": MERGE_HELP})
    dry_run: bool = field(default=False, metadata={"help": "write <model_output_path>/<policy>.prompts.jsonl with the exact aligner inputs; load no model (so a prompt that --long_prompts shorten would cut at run time is written whole)"})
    objectives_file: str = field(default=None, metadata={"help": "YAML/JSON mapping key -> description of your own objectives"})
    add_objective: list[str] = field(default_factory=list, metadata={"help": "inline objective 'key=Description: ...' (repeatable)", "action": "append"})
    max_new_tokens: int = field(default=256, metadata={**cli.check(ge=1), "help": "new tokens per aligned answer (the released script used 1024)"})
    profile: str = field(default="clean", metadata={"help": "clean (ours) | paper (as the release ran: --decoding checkpoint --long_prompts whole --empty_cells nan); the three flags below override it one by one"})
    decoding: str = field(default=None, metadata={"help": "greedy (argmax, or sampling with --temperature > 0) | checkpoint (the aligner folder's generation_config.json, exactly as a bare model.generate applies it; sampled configs seeded by --seed). Default: the --profile's (clean: greedy, paper: checkpoint)"})
    long_prompts: str = field(default=None, metadata={"help": "a prompt longer than the context minus --max_new_tokens: shorten (cut the answer, then the question, in the middle, keeping the instruction, the objectives and the 'Edit:' cue; counted in the summary) | whole (fed whole, as released). Default: the --profile's (clean: shorten, paper: whole)"})
    empty_cells: str = field(default=None, metadata={"help": "an empty answer (or question) cell in the prompt: empty (sent as '') | nan (sent as 'nan', as the release's str() of pandas' NaN did; also cells pandas reads as NaN such as 'NA', 'None'). Default: the --profile's (clean: empty, paper: nan)"})
    temperature: float = field(default=0.0, metadata={**cli.check(ge=0.0), "help": "0 = greedy; > 0 samples (--decoding greedy only)"})
    seed: int = field(default=0, metadata={"help": "sampling seed (temperature > 0, or a checkpoint whose generation config samples)"})
    base_url: str = field(default=None, metadata={**cli.check(only_with={"backend": ("openai", "auto")}), "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (key: OPENAI_API_KEY env)"})
    device: str = field(default=None, metadata={"help": "hf backend device: cpu | cuda | cuda:1 (default: cuda if available)"})
    dtype: str = field(default=None, metadata={"help": "float32 | bfloat16 | float16 (default: float32 on CPU, bf16/fp16 on GPU)"})
    device_map: str = field(default=None, metadata={"help": "hf backend: e.g. 'auto' to spread a large aligner over several GPUs"})
    tensor_parallel_size: int = field(default=None, metadata={**cli.check(ge=1, only_with={"backend": ("vllm", "auto")}), "help": "vllm backend: GPUs per model copy (tensor parallelism). Default 1; raise it only for a model that does not fit one GPU (the head count must divide by it)"})
    max_model_len: int = field(default=None, metadata={**cli.check(ge=1, only_with={"backend": ("vllm", "auto")}), "help": "vllm backend: context length (prompt + new tokens; default: the model's); also the budget of --long_prompts shorten"})
    gpu_memory_utilization: float = field(default=None, metadata={**cli.check(gt=0.0, le=1.0, only_with={"backend": ("vllm", "auto")}), "help": "vllm backend: share of each GPU's memory vLLM may take (default 0.9)"})
    data_parallel_size: int = field(default=None, metadata={**cli.check(ge=1, only_with={"backend": ("vllm", "auto")}), "help": "vllm backend: model copies, one per torchrun rank (torchrun --nproc-per-node TP*DP, vLLM's external launcher; default 1). For a server: vllm serve --data-parallel-size N behind --backend openai (docs/scaling_out.md)"})
    max_lora_rank: int = field(default=None, metadata={**cli.check(ge=1, only_with={"backend": ("vllm", "auto")}), "help": "vllm backend: the largest LoRA rank the engine takes (default: the adapter's r, rounded up to a rank vLLM supports; vLLM's own default is 16)"})
    cuda: bool = field(default=False, metadata={"help": "the released flag: same as --device cuda (an error, not a silent CPU run, when no GPU is visible)"})
    llama: bool = field(default=False, metadata={"help": "the released flag (LlamaForCausalLM/LlamaTokenizer); accepted, not needed: the model class comes from the checkpoint's config"})
    lora: bool = field(default=False, metadata={"help": "the released flag; accepted, not needed: --lora_path alone applies the adapter"})


# The flags that cannot change an output row; every other flag is in the resume fingerprint
# (cli.config_fingerprint), so a flag added later is covered by default. Rows are keyed by their input's
# hash, so where they are read from, how many are taken and where they go do not decide them.
NOT_IN_FINGERPRINT = ("resume", "overwrite", "dry_run",        # how this run treats earlier ones
                      "data_dir", "aligned_model", "limit",   # which input rows (each row's content is hashed)
                      "model_output_path",                    # where the rows go
                      "llama", "lora")                        # released flags accepted as no-ops
# (and sharding.NOT_IN_FINGERPRINT: --shard/--merge, which slice this process writes, left out by every stage)


def make_parser():
    return cli.make_parser(AlignerInferenceConfig, description=__doc__)


def _flatten(values) -> list[str]:
    out = []
    for v in values or []:
        out.extend(_flatten(v) if isinstance(v, (list, tuple)) else [str(v)])
    return out


def released_flags(config: AlignerInferenceConfig) -> str | None:
    """Apply the released spellings: ``--cuda`` -> ``--device cuda``; ``--llama``/``--lora`` only noted.
    Returns the device to use; a GPU asked for but absent fails here, before any file is touched."""
    from metaaligner.aligner.inference import check_cuda
    from metaaligner.errors import MetaAlignerError

    if config.llama:
        log.info("--llama is not needed: the model and tokenizer classes come from the checkpoint's config")
    if config.lora and not config.lora_path:
        raise MetaAlignerError("--lora needs --lora_path ADAPTER_FOLDER")
    if config.cuda and config.device and not config.device.startswith("cuda"):
        raise MetaAlignerError(f"--cuda contradicts --device {config.device}; give one of them")
    device = (config.device or "cuda") if config.cuda else config.device
    if not config.dry_run:
        check_cuda(device, "openai" if config.base_url and config.backend == "auto" else config.backend)
    return device
def _guard_on(value: str, source) -> bool:
    from metaaligner.aligner.inference import guard_default
    from metaaligner.errors import MetaAlignerError

    if value not in ("auto", "on", "off"):
        raise MetaAlignerError(f"--guard must be auto, on or off, got {value!r}")
    return guard_default(source) if value == "auto" else value == "on"


def run_settings(config: AlignerInferenceConfig):
    """(settings, jobs, input columns) of a run: the aligner, objectives, profile and files, checked."""
    from metaaligner.aligner.inference import (
        AlignRunSettings,
        objective_group_for,
        plan_jobs,
        resolve_aligner,
        resolve_objectives,
        run_profile,
    )
    from metaaligner.errors import MetaAlignerError
    from metaaligner.generation import GenerationParams
    from metaaligner.registry.datasets import load_dataset_config
    from metaaligner.registry.objectives import build_registry

    dataset = load_dataset_config(config.dataset) if config.dataset else None
    source = resolve_aligner(config.aligner_path, config.template, config.lora_path,
                             dataset.template if dataset else None)
    registry = build_registry(config.objectives_file, _flatten(config.add_objective))
    group = objective_group_for(source, registry, dataset.objective_group if dataset else None)
    aspects = config.aspects or ",".join(dataset.objectives if dataset else source.objectives)
    if not aspects:
        raise MetaAlignerError("no objectives: pass --aspects key1,key2 or --dataset NAME")
    labels, descriptions = resolve_objectives(aspects, registry, group, allow_free_text=False)
    jobs = plan_jobs(_data_dir(config, dataset), config.aligned_model, config.model_output_path)
    run = run_profile(config.profile, decoding=config.decoding, long_prompts=config.long_prompts,
                      empty_cells=config.empty_cells)
    params = GenerationParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              seed=config.seed, batch_size=config.batch_size, decoding=run["decoding"],
                              long_prompts=run["long_prompts"])
    settings = AlignRunSettings(source=source, aspect_labels=labels, descriptions=descriptions, params=params,
                                iterations=config.iterations, backend=config.backend, endpoint=config.base_url,
                                guard=_guard_on(config.guard, source), empty_cells=run["empty_cells"],
                                profile=config.profile, flags=cli.config_fingerprint(config, NOT_IN_FINGERPRINT + SHARD_FLAGS))
    flags = {"query": config.query_column, "answer": config.answer_column, "goldens": config.goldens_column}
    columns = {**(dataset.columns if dataset else {}), **{k: v for k, v in flags.items() if v}}
    return settings, jobs, columns


def _data_dir(config: AlignerInferenceConfig, dataset) -> str:
    from metaaligner.errors import MetaAlignerError
    from metaaligner.registry.datasets import find_data

    if config.iterations < 1:
        raise MetaAlignerError(f"--iterations must be >= 1, got {config.iterations}")
    if config.limit is not None and config.limit < 1:
        raise MetaAlignerError(f"--limit must be >= 1, got {config.limit}")
    if config.data_dir is not None:
        return config.data_dir
    if not (dataset and dataset.samples):
        raise MetaAlignerError("no input: pass --data_dir FILE_OR_FOLDER or --dataset NAME")
    return str(find_data(dataset.samples, f"samples folder of --dataset {dataset.name}"))  # not beside an installed package


def main(config: AlignerInferenceConfig) -> None:
    from metaaligner.aligner.inference import VLLM_OPTIONS, align_file, dry_run_file, make_generator
    from metaaligner.sharding import plan_shards, rank_device

    start = time.time()
    plan = plan_shards(config.shard, config.merge)
    device = rank_device(released_flags(config), plan)
    settings, jobs, columns = run_settings(config)
    source, params = settings.source, settings.params
    log.info("aligner %s, template %s (from %s), aspects %s, %d file(s); profile %s: decoding %s, long prompts %s, "
             "empty cells %s; %s", source.label, source.template, source.template_from,
             ",".join(settings.aspect_labels), len(jobs), config.profile, params.decoding, params.long_prompts,
             settings.empty_cells, plan.label)
    backend = None

    def get_backend():
        nonlocal backend
        if backend is None:
            backend = make_generator(config.backend, source, device=device, dtype=config.dtype,
                                     base_url=config.base_url, device_map=config.device_map,
                                     vllm_options={k: getattr(config, k) for k in VLLM_OPTIONS})
        return backend

    totals = {"rows": 0, "aligned": 0, "empty": 0}
    for job in jobs:
        if config.dry_run:
            stats = dry_run_file(job, settings, columns, config.limit)
            print(f"{job.name}: {stats.rows_in} prompts ({stats.empty_answers} empty answers, "
                  f"{stats.prompt_chars} chars, ~{stats.prompt_chars // 4} tokens) -> {stats.output}")
        else:
            stats = align_file(job, settings, get_backend, columns, config.limit, config.resume,
                               overwrite=config.overwrite, plan=plan)
            print(stats.summary())
        totals["rows"] += stats.rows_in
        totals["aligned"] += stats.aligned
        totals["empty"] += stats.empty_answers
    print(f"done: {len(jobs)} file(s), {totals['rows']} rows in, {totals['aligned']} aligned, "
          f"{totals['empty']} empty answers, {time.time() - start:.1f} s; outputs under {config.model_output_path}"
          + (f" ({plan.label}: shards there; merge with --merge)" if plan.given else ""))


if __name__ == "__main__":
    sys.exit(cli.run_main(main, *cli.parse(make_parser())))
