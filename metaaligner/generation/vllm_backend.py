"""vLLM backend (GPU): ``vllm`` is imported only here, only when this backend is built.

``--backend auto`` picks it when vllm is installed and a GPU is present. A LoRA adapter (a folder
with ``adapter_config.json`` as the model, or ``lora_path``) is served on its base model through
vLLM's LoRA support. Outputs come back in input order.

The rules are the hf backend's: the dtype it would pick on a GPU (bf16 where supported, else fp16;
not the checkpoint's own torch_dtype), ``decoding="checkpoint"`` samples as ``generate`` would with
the model's generation config (``generation_config="auto"``; ``decoding.vllm_sampling_kwargs``), and
the same prompt budget for ``long_prompts="shorten"`` (``metaaligner.generation.fit``).
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
# torch==2.13.0 and transformers<5.20. A plain ``pip install vllm`` would replace our torch.
VLLM_MISSING = (
    "the vllm backend needs vllm, and no vLLM release installs beside this package's pins (torch==2.13.0, "
    "transformers>=5.20): vllm 0.32.0 needs torch==2.13.0 with transformers<5.20, 0.33.0 torch==2.14.0 with "
    "transformers<5.21, 0.34.0 torch==2.14.0 with transformers>=5.16.1,<5.23. Either serve the model from a "
    "separate environment (python -m venv vllm-env; vllm-env/bin/pip install vllm==0.34.0; vllm-env/bin/vllm "
    "serve MODEL) and pass --backend openai --base_url http://127.0.0.1:8000/v1, or, for this backend, a "
    "separate environment where vLLM's pins win: pip install vllm==0.34.0 'transformers>=5.20,<5.23' "
    "(torch 2.14.0 instead of requirements.txt's 2.13.0; not checked by our tests). Without a GPU: --backend hf")


class VLLMGenerator:
    name = "vllm"

    # tensor_parallel_size: GPUs per model (default 1: a <=7B aligner fits one GPU, and TP over every visible
    # GPU fails for models whose head count the GPU count does not divide, SmolLM2's 9 heads on 2, 4 or 8)
    def __init__(self, model: str | None = None, dtype: str | None = None, lora_path: str | None = None,
                 chat_template: bool = False, tensor_parallel_size: int | None = None,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9, seed: int = 0,
                 prefix_caching: bool = True, ngram_speculation: int = 0, **_unused):
        try:
            from vllm import LLM
        except ImportError:
            raise MetaAlignerError(VLLM_MISSING) from None
        from metaaligner.models import _adapter_base, resolve_model_path

        path = resolve_model_path(model)
        adapter = lora_path
        if adapter is None and (Path(path) / "adapter_config.json").is_file():
            adapter, path = path, _adapter_base(path)
        kwargs = engine_kwargs(path, hf_gpu_dtype() if dtype in (None, "auto") else dtype, bool(adapter),
                               tensor_parallel_size or 1,
                               max_model_len, gpu_memory_utilization, seed, prefix_caching, ngram_speculation)
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


def engine_kwargs(path: str, dtype: str | None, lora: bool, tensor_parallel_size: int, max_model_len: int | None,
                  gpu_memory_utilization: float, seed: int, prefix_caching: bool = True,
                  ngram_speculation: int = 0) -> dict:
    """Keyword arguments of ``vllm.LLM``. Prefix caching is on by default: every aligner prompt starts
    with the template's long shared instruction, which is then prefilled once per GPU, not per row.
    ``ngram_speculation`` > 0 proposes that many tokens by prompt lookup (the aligner copies much of
    the answer it edits); greedy output is unchanged by it, only faster when drafts are accepted.
    ``generation_config="auto"``: the model folder's generation config is read, as ``generate`` does."""
    if dtype not in _DTYPES:
        raise MetaAlignerError(f"unknown dtype {dtype!r}; choose one of {sorted(k for k in _DTYPES if k)}")
    if tensor_parallel_size < 1:
        raise MetaAlignerError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    kwargs = {"model": path, "dtype": _DTYPES[dtype], "seed": seed, "enable_lora": lora,
              "tensor_parallel_size": tensor_parallel_size, "gpu_memory_utilization": gpu_memory_utilization,
              "enable_prefix_caching": prefix_caching, "generation_config": "auto"}
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    if ngram_speculation > 0:
        kwargs["speculative_config"] = {"method": "ngram", "num_speculative_tokens": ngram_speculation,
                                        "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    return kwargs
