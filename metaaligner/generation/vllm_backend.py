"""vLLM backend (GPU): ``vllm`` is imported only here, only when this backend is built.

``--backend auto`` picks it when vllm is installed and a GPU is present. A LoRA adapter (a folder
with ``adapter_config.json`` as the model, or ``lora_path``) is served on its base model through
vLLM's LoRA support. Outputs come back in input order.
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


class VLLMGenerator:
    name = "vllm"

    def __init__(self, model: str | None = None, dtype: str | None = None, lora_path: str | None = None,
                 chat_template: bool = False, tensor_parallel_size: int | None = None,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9, seed: int = 0,
                 prefix_caching: bool = True, ngram_speculation: int = 0, **_unused):
        try:
            from vllm import LLM
        except ImportError:
            raise MetaAlignerError("the vllm backend needs vllm (pip install vllm, on a machine with a GPU); "
                                   "use --backend hf otherwise") from None
        import torch

        from metaaligner.models import _adapter_base, resolve_model_path

        path = resolve_model_path(model)
        adapter = lora_path
        if adapter is None and (Path(path) / "adapter_config.json").is_file():
            adapter, path = path, _adapter_base(path)
        kwargs = engine_kwargs(path, dtype, bool(adapter), tensor_parallel_size or max(1, torch.cuda.device_count()),
                               max_model_len, gpu_memory_utilization, seed, prefix_caching, ngram_speculation)
        self.llm = LLM(**kwargs)
        self.adapter = adapter
        self.chat_template = chat_template
        self.stats = {"prompts": 0, "prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0}

    def generate(self, prompts: list[str], params: GenerationParams, progress: bool = False) -> list[str]:
        from vllm import SamplingParams

        if not prompts:
            return []
        start = time.time()
        sampling = SamplingParams(max_tokens=params.max_new_tokens, temperature=max(params.temperature, 0.0),
                                  top_p=params.top_p if not params.greedy else 1.0, seed=params.seed)
        if self.chat_template:
            tokenizer = self.llm.get_tokenizer()
            prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                     add_generation_prompt=True) for p in prompts]
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


def engine_kwargs(path: str, dtype: str | None, lora: bool, tensor_parallel_size: int, max_model_len: int | None,
                  gpu_memory_utilization: float, seed: int, prefix_caching: bool = True,
                  ngram_speculation: int = 0) -> dict:
    """Keyword arguments of ``vllm.LLM``. Prefix caching is on by default: every aligner prompt starts
    with the template's long shared instruction, which is then prefilled once per GPU, not per row.
    ``ngram_speculation`` > 0 proposes that many tokens by prompt lookup (the aligner copies much of
    the answer it edits); greedy output is unchanged by it, only faster when drafts are accepted."""
    if dtype not in _DTYPES:
        raise MetaAlignerError(f"unknown dtype {dtype!r}; choose one of {sorted(k for k in _DTYPES if k)}")
    if tensor_parallel_size < 1:
        raise MetaAlignerError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    kwargs = {"model": path, "dtype": _DTYPES[dtype], "seed": seed, "enable_lora": lora,
              "tensor_parallel_size": tensor_parallel_size, "gpu_memory_utilization": gpu_memory_utilization,
              "enable_prefix_caching": prefix_caching}
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    if ngram_speculation > 0:
        kwargs["speculative_config"] = {"method": "ngram", "num_speculative_tokens": ngram_speculation,
                                        "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    return kwargs
