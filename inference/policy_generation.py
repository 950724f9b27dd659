r"""Generate policy answers for a file of queries, in the samples format aligner inference reads.

    # the embedded SmolLM2 answers 4 HH-RLHF queries (CPU, offline) -> outputs/policy/smollm2.csv
    python inference/policy_generation.py --data_dir samples/HH-RLHF_model_output/Claude-3.csv.gz --limit 4 --model_name smollm2
    # IMHI: the test instructions carry the golden answers in column gpt-3.5-turbo
    python inference/policy_generation.py --data_dir ../shared/data/imhi-test-instruction \
        --goldens_column gpt-3.5-turbo --model my/policy --model_name my-policy --limit 100
    # released IMHI outputs have no query column: join it from the instructions (goldens are checked)
    python inference/policy_generation.py --data_dir ../shared/data/metaaligner-samples/IMHI_model_output/vicuna_7B \
        --queries_dir ../shared/data/imhi-test-instruction --model_name smollm2 --limit 4
    # any OpenAI-compatible endpoint (key from OPENAI_API_KEY)
    python inference/policy_generation.py --backend openai --model gpt-3.5-turbo \
        --base_url https://api.openai.com/v1 --data_dir samples/UltraFeedback_model_output/gpt-3.5-turbo.csv.gz

    # Self-Refinement (Table 3): the policy revises its own answers toward the objectives
    python inference/policy_generation.py --self_refine --dataset hh-rlhf --model embedded \
        --data_dir samples/HH-RLHF_model_output/Claude-3.csv.gz --model_name Self-Refinement --limit 2
    # the released generation flags --cuda and --llama are accepted; --profile paper decodes as the
    # released generators did (the model's own generation config, seeded; whole prompts)
    python inference/policy_generation.py --model meta-llama/Llama-2-70b-chat-hf --model_name llama2-chat-70B \
        --data_dir samples/HH-RLHF_model_output/Claude-3.csv.gz --batch_size 32 --llama --cuda --chat_template false \
        --max_new_tokens 1024 --profile paper --seed 0

Writes ``<model_output_path>/<model_name>.csv`` for a file, ``<model_output_path>/<model_name>/<file>.csv``
for a folder, with columns ``query, goldens, generated_text, model``. With ``--self_refine`` the input
is policy outputs (``query, goldens, generated_text``), each answer is sent back to the model inside
this revision request (``metaaligner.registry.templates.SELF_REFINE_PROMPT``; the objectives' descriptions
joined with '; ')::

    Here is a question and an answer you wrote earlier. Revise the answer so that it better meets these
    objectives: {aspects}\n\nQuestion: {question}\n\nAnswer: {answer}\n\nReply with the revised answer only.

and the output has the aligner's columns ``query, goldens, origin_responses, aligned_responses,
aligner, template, aspects`` (``aligner`` = ``self-refine:<model>``), which the judge and Table 3 read.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from metaaligner import cli
from metaaligner.sharding import MERGE_HELP, NOT_IN_FINGERPRINT as SHARD_FLAGS, SHARD_HELP


@dataclass
class PolicyGenerationConfig:
    model: str = field(default=None, metadata={"help": "policy model: local folder, hub name, served model name (openai), or 'embedded' (default)"})
    data_dir: str = field(default=None, metadata={"help": "queries: a CSV/CSV.gz/JSONL file or a folder of them"})
    model_name: str = field(default=None, metadata={"help": "output name (default: the model folder's name, or 'embedded')"})
    model_output_path: str = field(default="outputs/policy", metadata={"help": "output folder"})
    query_column: str = field(default="query", metadata={"help": "column holding the query"})
    goldens_column: str = field(default="goldens", metadata={"help": "column holding the golden answer, copied to 'goldens' (optional)"})
    queries_dir: str = field(default=None, metadata={"help": "for files without a query column (released IMHI outputs): folder of <task>.csv with query + gpt-3.5-turbo to join by row"})
    dataset: str = field(default=None, metadata={"help": "dataset config (hh-rlhf | ultrafeedback | imhi | path.yaml): its columns and samples folder"})
    batch_size: int = field(default=16, metadata={**cli.check(ge=1), "help": "prompts per generate call (hf, vllm); concurrent requests (openai)"})
    backend: str = field(default="auto", metadata={"help": "hf | vllm | openai | auto (openai with --base_url, vllm if installed with a GPU, else hf)"})
    chat_template: bool = field(default=True, metadata={"help": "wrap each query in the model's chat template (openai: /v1/chat/completions); --chat_template false for raw completion"})
    lora_path: str = field(default=None, metadata={"help": "PEFT/LoRA adapter folder applied to --model"})
    limit: int = field(default=None, metadata={**cli.check(ge=1), "help": "answer only the first N queries of each file"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted run (only one with the same model, settings and inputs)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an output made with other settings (else that is an error)"})
    shard: str = field(default=None, metadata={"help": SHARD_HELP})
    merge: bool = field(default=False, metadata={"help": MERGE_HELP})
    dry_run: bool = field(default=False, metadata={"help": "write <output>.prompts.jsonl with the queries that would be sent; load no model"})
    max_new_tokens: int = field(default=256, metadata={**cli.check(ge=1), "help": "new tokens per answer"})
    profile: str = field(default="clean", metadata={"help": "clean (ours) | paper (as the released generators ran: --decoding checkpoint --long_prompts whole); the two flags below override it one by one"})
    decoding: str = field(default=None, metadata={"help": "greedy (argmax, or sampling with --temperature > 0) | checkpoint (the model folder's generation_config.json, exactly as a bare model.generate applies it; sampled configs seeded by --seed). Default: the --profile's (clean: greedy, paper: checkpoint)"})
    long_prompts: str = field(default=None, metadata={"help": "a prompt longer than the context minus --max_new_tokens: shorten (cut the query, with --self_refine the answer first, in the middle; counted in the summary) | whole (fed whole, as released). Default: the --profile's (clean: shorten, paper: whole)"})
    temperature: float = field(default=0.0, metadata={**cli.check(ge=0.0), "help": "0 = greedy; > 0 samples (--decoding greedy only)"})
    seed: int = field(default=0, metadata={"help": "sampling seed (temperature > 0, or a checkpoint whose generation config samples)"})
    base_url: str = field(default=None, metadata={**cli.check(only_with={"backend": ("openai", "auto")}), "help": "OpenAI-compatible endpoint (key: OPENAI_API_KEY env)"})
    device: str = field(default=None, metadata={"help": "hf backend device (default: cuda if available, else cpu)"})
    dtype: str = field(default=None, metadata={"help": "float32 | bfloat16 | float16 (default: float32 on CPU, bf16/fp16 on GPU)"})
    device_map: str = field(default=None, metadata={"help": "hf backend: e.g. 'auto' for several GPUs"})
    tensor_parallel_size: int = field(default=None, metadata={**cli.check(ge=1, only_with={"backend": ("vllm", "auto")}), "help": "vllm backend: GPUs per model copy (tensor parallelism). Default 1; raise it only for a model that does not fit one GPU (the head count must divide by it)"})
    max_model_len: int = field(default=None, metadata={**cli.check(ge=1, only_with={"backend": ("vllm", "auto")}), "help": "vllm backend: context length (prompt + new tokens; default: the model's); also the budget of --long_prompts shorten"})
    gpu_memory_utilization: float = field(default=None, metadata={**cli.check(gt=0.0, le=1.0, only_with={"backend": ("vllm", "auto")}), "help": "vllm backend: share of each GPU's memory vLLM may take (default 0.9)"})
    data_parallel_size: int = field(default=None, metadata={**cli.check(ge=1, only_with={"backend": ("vllm", "auto")}), "help": "vllm backend: model copies, one per torchrun rank (torchrun --nproc-per-node TP*DP, vLLM's external launcher; default 1). For a server: vllm serve --data-parallel-size N behind --backend openai (docs/scaling_out.md)"})
    max_lora_rank: int = field(default=None, metadata={**cli.check(ge=1, only_with={"backend": ("vllm", "auto")}), "help": "vllm backend: the largest LoRA rank the engine takes (default: the adapter's r, rounded up to a rank vLLM supports; vLLM's own default is 16)"})
    self_refine: bool = field(default=False, metadata={"help": "Self-Refinement (Table 3): --data_dir holds policy outputs (query, goldens, generated_text); the model revises each answer toward --aspects; writes the aligner output format"})
    aspects: str = field(default=None, metadata={"help": "--self_refine: comma-separated objective keys, in order (default: the --dataset config's objectives)"})
    cuda: bool = field(default=False, metadata={"help": "the released flag: same as --device cuda"})
    llama: bool = field(default=False, metadata={"help": "the released flag (LlamaForCausalLM/LlamaTokenizer); accepted, not needed: the model class comes from the checkpoint's config"})


# The flags that cannot change an output row; every other flag is in the resume fingerprint
# (cli.config_fingerprint), so a flag added later is covered by default. Rows are keyed by their input's
# hash, so where they are read from, how many are taken and where they go do not decide them.
NOT_IN_FINGERPRINT = ("resume", "overwrite", "dry_run",        # how this run treats earlier ones
                      "data_dir", "limit",                    # which input rows (each row's content is hashed)
                      "model_output_path", "model_name",      # where the rows go
                      "llama")                                # a released flag accepted as a no-op
# (and sharding.NOT_IN_FINGERPRINT: --shard/--merge, which slice this process writes, left out by every stage)


def make_parser():
    return cli.make_parser(PolicyGenerationConfig, description=__doc__)


def refine_objectives(aspects: str | None, dataset) -> tuple[list[str], list[str]]:
    """``(labels, descriptions)`` of the objectives a self-refinement prompt names."""
    from metaaligner.aligner.inference import resolve_objectives
    from metaaligner.errors import MetaAlignerError
    from metaaligner.registry.objectives import build_registry

    keys = aspects or (",".join(dataset.objectives) if dataset else None)
    if not keys:
        raise MetaAlignerError("--self_refine needs objectives: pass --aspects key1,key2 or --dataset NAME")
    return resolve_objectives(keys, build_registry(), dataset.objective_group if dataset else None,
                              allow_free_text=False)


def plan_files(config: PolicyGenerationConfig, dataset) -> tuple[list, str, bool]:
    """(jobs, model label, embedded?): the input files and where each one's answers go."""
    from metaaligner.aligner.inference import FileJob, plan_jobs
    from metaaligner.errors import MetaAlignerError
    from metaaligner.io import inside
    from metaaligner.models import EMBEDDED_NAMES
    from metaaligner.registry.datasets import find_data

    data_dir = config.data_dir or (str(find_data(dataset.samples, f"samples folder of --dataset {dataset.name}"))
                                   if dataset and dataset.samples else None)  # not beside an installed package
    if not data_dir:
        raise MetaAlignerError("no input: pass --data_dir FILE_OR_FOLDER (or --dataset NAME)")
    embedded = config.model is None or str(config.model).strip().lower() in EMBEDDED_NAMES
    label = "embedded:SmolLM2-135M-Instruct" if embedded else config.model
    name = config.model_name or ("embedded" if embedded else Path(str(config.model).rstrip("/")).name)
    if config.limit is not None and config.limit < 1:
        raise MetaAlignerError(f"--limit must be >= 1, got {config.limit}")
    path = Path(data_dir)
    if path.is_file():
        jobs = [FileJob(path, name, Path(config.model_output_path))]
    else:
        jobs = [FileJob(j.input_path, f"{name}/{j.name}", j.output_root)
                for j in plan_jobs(path, None, config.model_output_path)]
    for job in jobs:
        inside(Path(config.model_output_path), f"{job.name}.csv", "--model_name")
    return jobs, label, embedded


def _device(config: PolicyGenerationConfig) -> str | None:
    from metaaligner.aligner.inference import check_cuda
    from metaaligner.errors import MetaAlignerError

    if config.cuda and config.device and not config.device.startswith("cuda"):
        raise MetaAlignerError(f"--cuda contradicts --device {config.device}; give one of them")
    device = config.device or ("cuda" if config.cuda else None)
    if not config.dry_run:
        check_cuda(device, "openai" if config.base_url and config.backend == "auto" else config.backend)
    return device


def main(config: PolicyGenerationConfig) -> None:
    from metaaligner.aligner.inference import VLLM_OPTIONS, load_policy_rows, make_generator, run_profile
    from metaaligner.aligner.policy import generate_file, load_queries, self_refine_file
    from metaaligner.generation import GenerationParams
    from metaaligner.io import folder_identity, redact_url
    from metaaligner.registry.datasets import load_dataset_config
    from metaaligner.sharding import plan_shards, rank_device

    start = time.time()
    plan = plan_shards(config.shard, config.merge)
    dataset = load_dataset_config(config.dataset) if config.dataset else None
    query_column, goldens_column = config.query_column, config.goldens_column
    if dataset:
        query_column = dataset.columns.get("query", query_column) if query_column == "query" else query_column
        goldens_column = dataset.columns.get("goldens", goldens_column) if goldens_column == "goldens" else goldens_column
    jobs, label, embedded = plan_files(config, dataset)
    run = run_profile(config.profile, decoding=config.decoding, long_prompts=config.long_prompts)
    params = GenerationParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              seed=config.seed, batch_size=config.batch_size, decoding=run["decoding"],
                              long_prompts=run["long_prompts"])
    device = rank_device(_device(config), plan)
    refine = refine_objectives(config.aspects, dataset) if config.self_refine else None
    knobs = {"backend": config.backend, "chat_template": config.chat_template, "lora_path": config.lora_path,
             "lora_files": folder_identity(config.lora_path), "base_url": redact_url(config.base_url),
             **cli.config_fingerprint(config, NOT_IN_FINGERPRINT + SHARD_FLAGS)}
    backend = None

    def get_backend():
        nonlocal backend
        if backend is None:
            backend = make_generator(config.backend, None if embedded else config.model, device=device,
                                     dtype=config.dtype, base_url=config.base_url, device_map=config.device_map,
                                     chat_template=config.chat_template, lora_path=config.lora_path,
                                     vllm_options={k: getattr(config, k) for k in VLLM_OPTIONS})
        return backend

    total = 0
    for job in jobs:
        if refine:
            rows = load_policy_rows(job.input_path, dataset.columns if dataset else None, config.limit)
            stats = self_refine_file(job, rows, get_backend, params, label, *refine, config.resume, config.dry_run,
                                     overwrite=config.overwrite, profile=config.profile, settings=knobs, plan=plan)
        else:
            rows = load_queries(job.input_path, query_column, goldens_column, config.queries_dir, config.limit)
            stats = generate_file(job, rows, get_backend, params, label, config.resume, config.dry_run,
                                  overwrite=config.overwrite, settings=knobs, profile=config.profile, plan=plan)
        print(f"{job.name}: {stats.rows_in} queries -> {stats.output}" if config.dry_run else stats.summary())
        total += stats.rows_in
    print(f"done: {len(jobs)} file(s), {total} queries, {time.time() - start:.1f} s; outputs under {config.model_output_path}")


if __name__ == "__main__":
    sys.exit(cli.run_main(main, *cli.parse(make_parser())))
