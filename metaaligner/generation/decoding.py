"""``--decoding checkpoint``: decode as a bare ``model.generate(input_ids, max_new_tokens=N)`` does.

The released scripts pass no decoding arguments, so each checkpoint's ``generation_config.json``
decides (Llama-2's ships ``do_sample: true, temperature: 0.6, top_p: 0.9``). These helpers read that
config the way ``generate`` applies it, for the hf backend (is plain argmax enough, so the fast greedy
engine may run it?), for vLLM (the same sampling in its terms) and for the run record.
"""
from __future__ import annotations

import hashlib
from typing import Any

# What generate() uses for a field the generation config leaves unset (transformers 5 fills these
# in at generate time; transformers 4 stored them in the config itself).
GENERATE_DEFAULTS = {"do_sample": False, "num_beams": 1, "temperature": 1.0, "top_p": 1.0, "top_k": 50,
                     "repetition_penalty": 1.0}
# Fields that leave argmax decoding unchanged (sampling-only knobs, token ids, lengths, bookkeeping).
_ARGMAX_NEUTRAL = {"max_length", "max_new_tokens", "pad_token_id", "bos_token_id", "eos_token_id",
                   "decoder_start_token_id", "transformers_version", "_from_model_config", "do_sample", "num_beams",
                   "temperature", "top_p", "top_k", "typical_p", "min_p", "epsilon_cutoff", "eta_cutoff",
                   "use_cache", "num_return_sequences", "output_scores", "return_dict_in_generate"}


def effective_config(generation_config) -> dict[str, Any]:
    """The decoding fields ``generate`` applies for this config (its value, else generate's default)."""
    out = {}
    for key, default in GENERATE_DEFAULTS.items():
        value = getattr(generation_config, key, None)
        out[key] = default if value is None else value
    return out


def is_plain_greedy(generation_config) -> bool:
    """True when ``generate`` with this config is argmax decoding and nothing else (no sampling, beams
    or logits processors), so the fast greedy engine gives its text."""
    used = effective_config(generation_config)
    if used["do_sample"] or used["num_beams"] != 1 or used["repetition_penalty"] != 1.0:
        return False
    if (getattr(generation_config, "num_return_sequences", None) or 1) != 1:
        return False
    return not set(generation_config.to_diff_dict()) - _ARGMAX_NEUTRAL - {"repetition_penalty"}


def vllm_sampling_kwargs(generation_config) -> dict[str, Any]:
    """``vllm.SamplingParams`` fields that sample as ``generate`` would with this config. vLLM's own
    reading of generation_config.json ignores ``do_sample`` and generate's top_k default of 50."""
    used = effective_config(generation_config)
    kwargs = {"repetition_penalty": float(used["repetition_penalty"])}
    if not used["do_sample"]:
        return {**kwargs, "temperature": 0.0}
    return {**kwargs, "temperature": float(used["temperature"]), "top_p": float(used["top_p"]),
            "top_k": int(used["top_k"]) if used["top_k"] else -1}


def batch_seed(seed: int, prompts: list) -> int:
    """The torch seed of one sampled batch: from the run's seed and the batch's own prompts, so a batch
    samples the same tokens whatever ran before it in the process."""
    digest = hashlib.sha256(repr((seed, prompts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
