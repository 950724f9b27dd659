"""vLLM backend (GPU): ``vllm`` is imported only here, only when this backend is built.

``--backend auto`` picks it when vllm is installed and a GPU is present. A LoRA adapter (a folder
with ``adapter_config.json`` as the model, or ``lora_path``) is served on its base model through
vLLM's LoRA support. Outputs come back in input order.

Install: vLLM brings its own torch, so it lives in its own environment, ``requirements-vllm.txt``
(``VLLM_REQUIREMENTS``); the decoupled path is ``vllm serve`` there behind ``--backend openai``.

Parallelism: ``tensor_parallel_size`` GPUs per model copy (default 1); ``data_parallel_size`` copies, one
per torchrun rank: each rank sees only its own ``tensor_parallel_size`` GPUs (``replica_gpus``) and runs a
plain engine on its slice of the rows (vLLM's in-process ``LLM`` does not take ``data_parallel_size`` > 1
itself; ``vllm serve --data-parallel-size`` does).

The rules are the hf backend's: the dtype it picks (``models.pick_dtype``: float32 on CPU, bf16 on a
GPU that supports it, else fp16; not the checkpoint's own torch_dtype), ``decoding="checkpoint"``
samples as ``generate`` would with the model's generation config (``generation_config="auto"``;
``decoding.vllm_sampling_kwargs``), and the same prompt budget for ``long_prompts="shorten"``
(``metaaligner.generation.fit``).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from metaaligner.errors import MetaAlignerError
from metaaligner.generation import GenerationParams

log = logging.getLogger(__name__)

_DTYPES = {None: "auto", "auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
           "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


# No vLLM release installs beside requirements.txt (torch==2.13.0, transformers>=5.20): 0.34.0 needs
# torch==2.14.0 and transformers>=5.16.1,<5.23; 0.33.0 torch==2.14.0 and transformers<5.21; 0.32.0
# torch==2.13.0 and transformers<5.20. A plain ``pip install vllm`` would replace our torch; the pin set that
# resolves with vLLM is requirements-vllm.txt (checked by a dry run in CI: tests/test_scale_out.py).
VLLM_REQUIREMENTS = "requirements-vllm.txt"
VLLM_MISSING = (
    "the vllm backend needs vllm, and no vLLM release installs beside requirements.txt (torch==2.13.0, "
    "transformers>=5.20): vllm 0.32.0 needs torch==2.13.0 with transformers<5.20, 0.33.0 torch==2.14.0 with "
    "transformers<5.21, 0.34.0 torch==2.14.0 with transformers>=5.16.1,<5.23. Install it in its own environment "
    f"from {VLLM_REQUIREMENTS} (python -m venv .venv-vllm; .venv-vllm/bin/pip install -r {VLLM_REQUIREMENTS}; "
    ".venv-vllm/bin/pip install --no-deps -e .) and run this script there, or serve the model from that "
    "environment (.venv-vllm/bin/vllm serve MODEL) and pass --backend openai --base_url http://127.0.0.1:8000/v1 "
    "(docs/scaling_out.md). Without a GPU: --backend hf")
# The LoRA ranks vLLM's engine takes (``max_lora_rank``); its default is 16, so a larger adapter needs it raised.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VLLMGenerator:
    name = "vllm"

    # tensor_parallel_size: GPUs per model (default 1: a <=7B aligner fits one GPU, and TP over every visible
    # GPU fails for models whose head count the GPU count does not divide, SmolLM2's 9 heads on 2, 4 or 8)
    def __init__(self, model: str | None = None, dtype: str | None = None, lora_path: str | None = None,
                 chat_template: bool = False, tensor_parallel_size: int | None = None,
                 max_model_len: int | None = None, gpu_memory_utilization: float | None = None, seed: int = 0,
                 prefix_caching: bool = True, ngram_speculation: int = 0, data_parallel_size: int | None = None,
                 max_lora_rank: int | None = None, **_unused):
        import os

        tensor_parallel_size = tensor_parallel_size or 1
        gpus = replica_gpus(tensor_parallel_size, data_parallel_size, os.environ)  # before vllm starts a worker
        try:
            from vllm import LLM
        except ImportError:
            raise MetaAlignerError(VLLM_MISSING) from None
        from metaaligner.models import _adapter_base, resolve_model_path

        if gpus is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus
        path = resolve_model_path(model)
        adapter = lora_path
        if adapter is None and (Path(path) / "adapter_config.json").is_file():
            adapter, path = path, _adapter_base(path)
        kwargs = engine_kwargs(path, hf_dtype() if dtype in (None, "auto") else dtype, bool(adapter),
                               tensor_parallel_size, max_model_len,
                               0.9 if gpu_memory_utilization is None else gpu_memory_utilization, seed,
                               prefix_caching, ngram_speculation,
                               max_lora_rank=lora_rank_for(adapter, max_lora_rank) if adapter else max_lora_rank)
        self.llm = LLM(**kwargs)
        self.path = path
        self.adapter = adapter
        self.chat_template = chat_template
        self.stats = {"prompts": 0, "prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0}

    @property
    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def prompt_budget(self, params: GenerationParams) -> int | None:
        return self.max_model_len - params.max_new_tokens if self.max_model_len > params.max_new_tokens else None

    def count_tokens(self, prompt: str) -> int:
        return len(self._tokenizer().encode(self._wrap(prompt)))

    def _tokenizer(self):
        return self.llm.get_tokenizer()

    def _wrap(self, prompt: str) -> str:
        if not self.chat_template:
            return prompt
        return self._tokenizer().apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                     add_generation_prompt=True)

    def _checkpoint_config(self):
        from transformers import GenerationConfig

        try:
            return GenerationConfig.from_pretrained(self.path)
        except OSError:  # no generation_config.json: generate() would use its defaults
            return GenerationConfig()

    def sampling_kwargs(self, params: GenerationParams) -> dict:
        """``SamplingParams`` fields of this run: ours, or the checkpoint's config read as generate reads it."""
        from metaaligner.generation.decoding import vllm_sampling_kwargs

        if params.decoding == "checkpoint":
            decoding = vllm_sampling_kwargs(self._checkpoint_config())
        else:
            decoding = {"temperature": max(params.temperature, 0.0), "top_p": 1.0 if params.greedy else params.top_p}
        return {**decoding, "max_tokens": params.max_new_tokens, "seed": params.seed}

    def decoding_used(self, params: GenerationParams) -> dict:
        used = {k: v for k, v in self.sampling_kwargs(params).items() if k not in ("max_tokens", "seed")}
        return {"decoding": params.decoding, **used}

    def _check_whole(self, prompts: list[str], params: GenerationParams) -> None:
        """``long_prompts="whole"``: vLLM cannot take a prompt over its context, and stops an answer there."""
        lengths = [self.count_tokens(p) for p in prompts]
        over = sum(n >= self.max_model_len for n in lengths)
        if over:
            raise MetaAlignerError(f"{over} prompts are {self.max_model_len} tokens or longer, more than vLLM's "
                                   "context takes whole; use --backend hf (it feeds them whole, as released) or "
                                   "--long_prompts shorten")
        capped = sum(n + params.max_new_tokens > self.max_model_len for n in lengths)
        if capped:
            log.warning("%d prompts leave fewer than %d tokens in vLLM's context of %d: their answers stop "
                        "at the context (the hf backend generates on past it, as the release did)",
                        capped, params.max_new_tokens, self.max_model_len)

    def generate(self, prompts: list[str], params: GenerationParams, progress: bool = False) -> list[str]:
        from vllm import SamplingParams

        if not prompts:
            return []
        start = time.time()
        if params.long_prompts == "whole":
            self._check_whole(prompts, params)
        sampling = SamplingParams(**self.sampling_kwargs(params))
        prompts = [self._wrap(p) for p in prompts]
        lora_request = None
        if self.adapter:
            from vllm.lora.request import LoRARequest

            lora_request = LoRARequest("aligner", 1, str(self.adapter))
        outputs = self.llm.generate(prompts, sampling, use_tqdm=progress, lora_request=lora_request)
        texts = []
        for out in outputs:
            texts.append(out.outputs[0].text.strip() if out.outputs else "")
            self.stats["prompt_tokens"] += len(out.prompt_token_ids or [])
            self.stats["generated_tokens"] += len(out.outputs[0].token_ids) if out.outputs else 0
        self.stats["prompts"] += len(prompts)
        self.stats["seconds"] += time.time() - start
        return texts


def hf_gpu_dtype() -> str:
    """The dtype the hf backend loads a model in on a GPU (``models.pick_dtype``), as a vLLM name."""
    from metaaligner.models import pick_dtype

    return str(pick_dtype("cuda")).removeprefix("torch.")


def hf_dtype() -> str:
    """The hf backend's rule on this machine (``models.pick_dtype``) as a vLLM name: bf16 (or fp16) where a
    GPU is visible, float32 without one (vLLM's "auto" would read the checkpoint's dtype instead)."""
    import torch

    from metaaligner.models import pick_dtype

    return str(pick_dtype("cuda" if torch.cuda.is_available() else "cpu")).removeprefix("torch.")


def adapter_rank(adapter: str | Path) -> int:
    """The largest LoRA rank in an adapter folder (``r``, or its ``rank_pattern``'s largest value)."""
    import json

    config_path = Path(adapter) / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise MetaAlignerError(f"{config_path}: cannot read the adapter's config ({exc})") from None
    ranks = [int(config.get("r") or 8), *(int(v) for v in (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def lora_rank_for(adapter: str | Path, max_lora_rank: int | None = None) -> int:
    """``max_lora_rank`` for an adapter: the one given (an error when the adapter's rank is larger), else the
    adapter's rank rounded up to a rank vLLM takes (``VLLM_LORA_RANKS``; vLLM's default 16 refuses r=64)."""
    rank = adapter_rank(adapter)
    if max_lora_rank is not None:
        if max_lora_rank < rank:
            raise MetaAlignerError(f"--max_lora_rank {max_lora_rank} is smaller than the rank of adapter {adapter} "
                                   f"(r={rank}); raise it or leave it out (then: the adapter's rank)")
        return max_lora_rank
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fitting:
        raise MetaAlignerError(f"adapter {adapter} has rank {rank}, above the largest vLLM takes "
                               f"({VLLM_LORA_RANKS[-1]}); merge it into the model instead")
    return fitting[0]


def replica_gpus(tensor_parallel_size: int, data_parallel_size: int | None, env) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` of this process's model copy under torchrun (``LOCAL_RANK`` set and
    ``WORLD_SIZE`` > 1): local rank k takes GPUs k*TP .. k*TP+TP-1 of the visible ones, so every rank runs
    its own copy on its own GPUs (without this each rank's engine would start on GPU 0). None outside torchrun.
    ``data_parallel_size``, when given, must equal the number of ranks: one copy per rank."""
    if tensor_parallel_size < 1:
        raise MetaAlignerError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    world = int(env.get("WORLD_SIZE", "1") or 1)
    dp = data_parallel_size or 1
    if dp < 1:
        raise MetaAlignerError(f"data_parallel_size must be >= 1, got {dp}")
    if data_parallel_size and dp != world:
        raise MetaAlignerError(
            f"--data_parallel_size {dp} runs one model copy per process, and this is {world} process"
            f"{'es' if world != 1 else ''}: start it with torchrun --nproc-per-node {dp} (each rank on "
            f"{tensor_parallel_size} GPU{'s' if tensor_parallel_size > 1 else ''}), or serve the model with "
            f"vllm serve MODEL --data-parallel-size {dp} and pass --backend openai --base_url URL")
    if world <= 1 or "LOCAL_RANK" not in env:
        return None
    local_rank = int(env["LOCAL_RANK"])
    visible = [g.strip() for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    local_world = int(env.get("LOCAL_WORLD_SIZE", world) or world)
    visible = visible or [str(i) for i in range(local_world * tensor_parallel_size)]
    mine = visible[local_rank * tensor_parallel_size:(local_rank + 1) * tensor_parallel_size]
    if len(mine) < tensor_parallel_size:
        first = local_rank * tensor_parallel_size
        raise MetaAlignerError(f"local rank {local_rank} with --tensor_parallel_size {tensor_parallel_size} needs "
                               f"GPUs {first}..{first + tensor_parallel_size - 1} of the visible ones "
                               f"({','.join(visible)}): start fewer ranks per node")
    return ",".join(mine)


def engine_kwargs(path: str, dtype: str | None, lora: bool, tensor_parallel_size: int, max_model_len: int | None,
                  gpu_memory_utilization: float, seed: int, prefix_caching: bool = True,
                  ngram_speculation: int = 0, max_lora_rank: int | None = None) -> dict:
    """Keyword arguments of ``vllm.LLM``. Prefix caching is on by default: every aligner prompt starts
    with the template's long shared instruction, which is then prefilled once per GPU, not per row.
    ``ngram_speculation`` > 0 proposes that many tokens by prompt lookup (the aligner copies much of
    the answer it edits); greedy output is unchanged by it, only faster when drafts are accepted.
    ``generation_config="auto"``: the model folder's generation config is read, as ``generate`` does.
    ``max_lora_rank`` only with ``lora`` (the engine's LoRA slots are sized by it)."""
    if dtype not in _DTYPES:
        raise MetaAlignerError(f"unknown dtype {dtype!r}; choose one of {sorted(k for k in _DTYPES if k)}")
    if tensor_parallel_size < 1:
        raise MetaAlignerError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    if not 0 < gpu_memory_utilization <= 1:
        raise MetaAlignerError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    kwargs = {"model": path, "dtype": _DTYPES[dtype], "seed": seed, "enable_lora": lora,
              "tensor_parallel_size": tensor_parallel_size, "gpu_memory_utilization": gpu_memory_utilization,
              "enable_prefix_caching": prefix_caching, "generation_config": "auto"}
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    if max_lora_rank is not None:
        if not lora:
            raise MetaAlignerError("--max_lora_rank applies to a LoRA adapter (--lora_path, or an adapter folder as "
                                   "the model); this model has none")
        if max_lora_rank not in VLLM_LORA_RANKS:
            raise MetaAlignerError(f"--max_lora_rank {max_lora_rank}: vLLM takes one of {list(VLLM_LORA_RANKS)}")
        kwargs["max_lora_rank"] = max_lora_rank
    if ngram_speculation > 0:
        kwargs["speculative_config"] = {"method": "ngram", "num_speculative_tokens": ngram_speculation,
                                        "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    return kwargs
