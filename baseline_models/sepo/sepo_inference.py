r"""SePO inference: answer policy queries with the SePO-trained model, in the aligner output format
(``query``, ``goldens``, ``origin_responses``, ``aligned_responses``) so ``evaluation/judge.py`` scores
it like any aligner output.

    python baseline_models/sepo/sepo_inference.py --input samples/HH-RLHF_model_output/gpt-3.5-turbo.csv.gz \
        --model runs/sepo/policy --origin_model runs/sft --output runs/sepo/outputs/hh-rlhf.csv --limit 100

``aligned_responses`` is the SePO policy's answer; ``origin_responses`` is the input's
``generated_text`` when the file has one, else the answer of ``--origin_model`` (e.g. the SFT start)
when given, else empty. ``--prompt_template`` must match the training prompts (HH-RLHF pairs end in
``\n\nAssistant:`` like the samples' queries, so the default ``{query}`` fits).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check, make_parser as _make_parser, parse, run_main

VLLM_ONLY = check(ge=1, only_with={"backend": ("vllm", "auto")})


@dataclass
class SePOInferenceConfig:
    input: str = field(metadata={"help": "CSV/JSONL with query (and optionally goldens, generated_text)"})
    model: str = field(metadata={"help": "the SePO policy folder (or adapter folder)"})
    output: str = field(metadata={"help": "output CSV in the aligner output format"})
    origin_model: str | None = field(default=None, metadata={"help": "model for origin_responses when the input has "
                                                                     "no generated_text (e.g. the SFT start)"})
    backend: str = field(default="hf", metadata={"help": "generation backend: hf, vllm, auto"})
    tensor_parallel_size: int | None = field(default=None, metadata={**VLLM_ONLY, "help": "vllm backend: GPUs per "
                                                                    "model copy (default 1)"})
    data_parallel_size: int | None = field(default=None, metadata={**VLLM_ONLY, "help": "vllm backend: model copies, "
                                                                  "one per torchrun rank (default 1)"})
    max_model_len: int | None = field(default=None, metadata={**VLLM_ONLY, "help": "vllm backend: context length "
                                                             "(default: the model's)"})
    gpu_memory_utilization: float | None = field(default=None, metadata={
        **check(gt=0.0, le=1.0, only_with={"backend": ("vllm", "auto")}),
        "help": "vllm backend: share of each GPU's memory vLLM may take (default 0.9)"})
    max_lora_rank: int | None = field(default=None, metadata={**VLLM_ONLY, "help": "vllm backend: largest LoRA rank "
                                                             "(default: the adapter's)"})
    prompt_template: str = field(default="{query}", metadata={"help": "prompt built from each query"})
    max_new_tokens: int = field(default=256, metadata={**check(ge=1), "help": "max tokens per answer"})
    decoding: str = field(default="greedy", metadata={"help": "greedy (argmax, or sampling with --temperature > 0) | "
                                                             "checkpoint (the model folder's generation_config.json, "
                                                             "as a bare model.generate applies it; seeded by --seed)"})
    temperature: float = field(default=0.0, metadata={**check(ge=0.0), "help": "0 = greedy"})
    top_p: float = field(default=1.0, metadata={**check(gt=0.0, le=1.0), "help": "nucleus sampling p"})
    batch_size: int = field(default=16, metadata={**check(ge=1), "help": "prompts per generation batch"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    limit: int | None = field(default=None, metadata={**check(ge=1), "help": "only the first N queries"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted run (only one with the same model, "
                                                          "settings and inputs)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an output made with other settings (else that "
                                                             "is an error)"})


def make_parser():
    return _make_parser(SePOInferenceConfig, description=__doc__)


def main(config: SePOInferenceConfig) -> None:
    from metaaligner.aligner.inference import VLLM_OPTIONS
    from metaaligner.generation import GenerationParams
    from metaaligner.methods.sepo import generate_outputs

    params = GenerationParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              top_p=config.top_p, seed=config.seed, batch_size=config.batch_size,
                              decoding=config.decoding)
    generate_outputs(config.input, config.model, config.output, params, backend=config.backend,
                     origin_model=config.origin_model, prompt_template=config.prompt_template,
                     limit=config.limit, resume=config.resume, overwrite=config.overwrite,
                     vllm_options={k: getattr(config, k) for k in VLLM_OPTIONS})


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
