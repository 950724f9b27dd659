"""transformers backend: batched, left-padded, prompts sorted by length to cut padding."""
from __future__ import annotations

import logging

from metaaligner.generation import GenerationParams

log = logging.getLogger(__name__)


class HFGenerator:
    name = "hf"

    def __init__(self, model: str | None = None, device: str | None = None, dtype: str | None = None,
                 lora_path: str | None = None, device_map: str | None = None, max_input_tokens: int | None = None,
                 chat_template: bool = False, trust_remote_code: bool = False, model_obj=None, tokenizer=None):
        from metaaligner.models import load_causal_lm, pick_device

        if model_obj is not None:  # an already-loaded model (tests, the Python API)
            self.model, self.tokenizer = model_obj, tokenizer
            self.device = str(next(model_obj.parameters()).device)
            self.tokenizer.padding_side = "left"
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        else:
            self.model, self.tokenizer, self.device = load_causal_lm(
                model, device=pick_device(device), dtype=dtype, lora_path=lora_path,
                device_map=device_map, trust_remote_code=trust_remote_code)
        self.max_input_tokens = max_input_tokens
        self.chat_template = chat_template
        self.truncated = 0

    def _encode(self, prompt: str) -> list[int]:
        if self.chat_template:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        else:
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if self.max_input_tokens and len(ids) > self.max_input_tokens:
            # Keep the end: the template's "| Edit: " cue sits there.
            self.truncated += 1
            ids = ids[-self.max_input_tokens:]
        return list(ids)

    def generate(self, prompts: list[str], params: GenerationParams, progress: bool = False) -> list[str]:
        import torch
        from tqdm.auto import tqdm

        encoded = [self._encode(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
        results: list[str | None] = [None] * len(prompts)
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        bar = tqdm(total=len(prompts), desc="generate", unit="row", disable=not progress)
        for start in range(0, len(order), params.batch_size):
            idx = order[start:start + params.batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, padding=True,
                                       return_tensors="pt").to(self.model.device)
            kwargs = {"max_new_tokens": params.max_new_tokens, "do_sample": not params.greedy,
                      "pad_token_id": self.tokenizer.pad_token_id}
            if not params.greedy:
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
                kwargs.update(temperature=params.temperature, top_p=params.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                out = self.model.generate(**batch, **kwargs)
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i, text in zip(idx, texts):
                results[i] = text.strip()
            bar.update(len(idx))
        bar.close()
        return [r if r is not None else "" for r in results]
