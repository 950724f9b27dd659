"""OpenAI-compatible backend: any endpoint speaking ``/v1/completions`` or ``/v1/chat/completions``
(api.openai.com, vLLM's or ``transformers serve``'s server, ...).

The key comes from ``OPENAI_API_KEY`` only (never a flag, never logged); without it a placeholder
is sent, which local servers accept. Requests run concurrently in a thread pool; retries with
backoff are the client's own (``max_retries``). One string per prompt, in input order.

Raw prompts go to ``/v1/completions`` (what the aligners were trained on); ``chat_template=True``
sends each prompt as one user message to ``/v1/chat/completions`` (chat policies).

A LoRA adapter is served by the server under its own model name (``vllm serve BASE --enable-lora
--lora-modules NAME=FOLDER``) and used here by that name, like any model (``LORA_SERVING``).

``decoding="checkpoint"`` sends no temperature or top_p, so the server's defaults decide (vLLM's
server: the model's generation config). No tokenizer here, so ``long_prompts="shorten"`` cannot
count tokens: prompts go whole and the server's own context limit applies.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from metaaligner.errors import MetaAlignerError
from metaaligner.generation import GenerationParams

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
PLACEHOLDER_KEY = "EMPTY"


def resolve_api_key(base_url: str | None) -> str:
    """The one key rule, for this backend and the judge: ``OPENAI_API_KEY`` from the environment only
    (never a flag, never logged); a local server (``base_url``) without one gets a placeholder."""
    key = os.environ.get(API_KEY_ENV, "")
    if key:
        from metaaligner.io import register_secret

        register_secret(key)  # redacted from every message printed or stored (metaaligner.io.redact_text)
        return key
    if base_url:
        return PLACEHOLDER_KEY  # local OpenAI-compatible servers accept any key
    raise MetaAlignerError(f"set {API_KEY_ENV} in the environment to call the OpenAI API, "
                           "or pass --base_url for a local OpenAI-compatible server")


# How a LoRA adapter reaches this backend: the server applies it and serves it under its own model name.
LORA_SERVING = ("serve it under its own name from the adapter's base model (vllm serve BASE --enable-lora "
                "--lora-modules NAME=ADAPTER_FOLDER --max-lora-rank R, R at least the adapter's r) and pass that "
                "NAME as the model (--aligner_path NAME with --template, or the script's model flag); "
                "docs/scaling_out.md")


def check_not_local_adapter(model: str) -> None:
    """A local LoRA adapter folder cannot be sent to a server by path: one line saying how to serve it."""
    from pathlib import Path

    folder = Path(str(model)).expanduser()
    if (folder / "adapter_config.json").is_file():
        raise MetaAlignerError(f"{model} is a local LoRA adapter folder, which --backend openai cannot send to the "
                               f"server; {LORA_SERVING}")


class OpenAIGenerator:
    name = "openai"

    def __init__(self, model: str | None = None, base_url: str | None = None, chat_template: bool = False,
                 max_retries: int = 3, timeout: float = 600.0, max_workers: int | None = None, **_unused):
        from openai import OpenAI

        if not model:
            raise MetaAlignerError("the openai backend needs a model name (--aligner_path/--model)")
        check_not_local_adapter(model)
        key = resolve_api_key(base_url)
        self.model = str(model)
        self.base_url = base_url
        self.chat_template = chat_template
        self.max_retries = max_retries
        self.max_workers = max_workers
        self.client = OpenAI(api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout)
        self.stats = {"prompts": 0, "prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0}
        self._lock = threading.Lock()

    def _request(self, prompt: str, params: GenerationParams) -> str:
        common = {"model": self.model, "max_tokens": params.max_new_tokens, "seed": params.seed}
        if params.decoding != "checkpoint":
            common.update(temperature=max(params.temperature, 0.0), top_p=params.top_p)
        if self.chat_template:
            response = self.client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
            text = response.choices[0].message.content if response.choices else ""
        else:
            response = self.client.completions.create(prompt=prompt, **common)
            text = response.choices[0].text if response.choices else ""
        usage = getattr(response, "usage", None)
        if usage is not None:
            with self._lock:
                self.stats["prompt_tokens"] += getattr(usage, "prompt_tokens", 0) or 0
                self.stats["generated_tokens"] += getattr(usage, "completion_tokens", 0) or 0
        return (text or "").strip()

    def decoding_used(self, params: GenerationParams) -> dict:
        if params.decoding == "checkpoint":
            return {"decoding": "checkpoint", "sent": "no temperature or top_p: the server's defaults"}
        return {"decoding": "greedy" if params.greedy else "sample", "temperature": params.temperature,
                "top_p": params.top_p}

    def generate(self, prompts: list[str], params: GenerationParams, progress: bool = False) -> list[str]:
        import openai
        from tqdm.auto import tqdm

        if not prompts:
            return []
        start = time.time()
        results: list[str] = [""] * len(prompts)
        workers = max(1, self.max_workers or params.batch_size)
        with ThreadPoolExecutor(max_workers=workers) as pool, \
                tqdm(total=len(prompts), desc="requests", unit="row", disable=not progress) as bar:
            futures = [pool.submit(self._request, p, params) for p in prompts]
            try:
                for i, future in enumerate(futures):
                    results[i] = future.result()
                    bar.update(1)
            except openai.OpenAIError as exc:
                for f in futures:
                    f.cancel()
                from metaaligner.io import redact_text

                where = self.base_url or "the OpenAI API"
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise MetaAlignerError(redact_text(f"request {i + 1} of {len(prompts)} to {where} failed "
                                                   f"(after {self.max_retries} retries): {type(exc).__name__}: "
                                                   f"{message}")) from None
        self.stats["prompts"] += len(prompts)
        self.stats["seconds"] += time.time() - start
        return results
