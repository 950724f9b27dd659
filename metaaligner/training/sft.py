"""One supervised fine-tuning stage on ``{"prompt", "completion"}`` items with TRL's ``SFTTrainer``.

Objective (each step of the aligner curriculum and the SFT baseline):

    L(theta) = - sum_t log p_theta(target_t | prompt, target_<t),   target = completion + EOS,

the loss taken on the target tokens only (prompt labels are -100). ``prompt_format="vicuna_v1.1"``
wraps the prompt as FastChat's ``train_mem.py`` did (``format_prompt``): its Vicuna v1.1 system line,
``USER: <prompt> ASSISTANT:``, the target after one space and closed by EOS (sep2 ``</s>``), the
system and user turn masked.

Why we tokenize ourselves instead of handing TRL raw text: TRL tokenizes ``prompt`` and
``prompt + completion`` and masks their common prefix. Our templates end in ``"Edit: "``, and a
tokenizer merges that trailing space into the completion's first word (SmolLM2: ``"Edit: "`` ends in
token 216, ``"Edit: Sure"`` ends in ``" Sure"`` = 16096), so the model would be trained on a context
it never sees at inference, where the prompt is tokenized on its own. Here the prompt is tokenized
exactly as ``aligner_inference.py`` does (``tokenizer(prompt)``, special tokens as the tokenizer adds
them), the completion separately without special tokens, then EOS is appended; TRL receives
``input_ids`` + ``labels`` and only pads, truncates nothing (we truncate, keeping the prompt's end
like inference does) and trains.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metaaligner.cli import check
from metaaligner.errors import MetaAlignerError
from metaaligner.training.common import TrainerConfigBase, override

log = logging.getLogger(__name__)

STAGE_DONE = "stage_done.json"


@dataclass
class SFTStageConfig(TrainerConfigBase):
    """Hyper-parameters of one SFT stage (the shared fields are documented in ``TrainerConfigBase``).

    Defaults are the paper's run (FastChat, lr 1e-5, weight decay 1e-5, warm-up ratio 0.05, cosine,
    2 epochs, 4096 tokens); ``configs/training/cpu.yaml`` scales them down for a laptop CPU.
    """

    learning_rate: float = override("learning_rate", 1e-5, "Peak learning rate (AdamW; paper: 1e-5)")
    num_train_epochs: float = override("num_train_epochs", 2.0, "Epochs per stage (ignored when max_steps > 0)")
    gradient_accumulation_steps: int = override("gradient_accumulation_steps", 4)
    warmup_ratio: float = override("warmup_ratio", 0.05)
    seed: int = override("seed", 42)
    weight_decay: float = field(default=1e-5, metadata={**check(ge=0.0), "help": "AdamW weight decay."})
    per_device_eval_batch_size: int = field(default=4, metadata={**check(ge=1), "help": "Sequences per device per eval batch."})
    max_length: int = field(default=4096, metadata={**check(ge=8), "help": "Tokens per sequence (prompt + target + EOS). Longer items keep the prompt's end (the '| Edit:' cue) and at least half the budget for the target."})
    padding_free: bool = field(default=True, metadata={"help": "Flatten each batch into one sequence with position ids instead of padding (same loss, fewer FLOPs and less memory on mixed lengths); with segment_attention and targets_only_lm_head the fast path benchmarks/bench_training.py measures. --padding_free false (false in YAML) trains on padded batches, as the released FastChat run did."})
    segment_attention: bool = field(default=True, metadata={"help": "With padding_free and sdpa: attend within each packed item (causal sdpa per item) instead of over the whole packed row with a block-diagonal mask. Same loss; --no_segment_attention (false in YAML) restores the masked path."})
    targets_only_lm_head: bool = field(default=True, metadata={"help": "Compute the LM head and its softmax only at target positions (TRL does this only on Triton devices). Same loss; --no_targets_only_lm_head (false in YAML) restores TRL's every-position scoring off Triton."})
    lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter (PEFT) instead of all weights."})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "Comma-separated module names for LoRA, or 'all-linear'."})
    lora_top_layers: int = field(default=0, metadata={**check(ge=0), "help": "Put LoRA only on the last N decoder layers (0: all). The backward pass then stops at layer L-N (faster; the frozen lower layers need no gradients)."})
    eval_steps: int = field(default=0, metadata={**check(ge=0), "help": "Evaluate on the val split every N steps (0: once at the end of the stage)."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda; precision follows it (float32 on CPU, bf16/fp16 on GPU)."})
    attn_implementation: str | None = field(default=None, metadata={"help": "Attention kernel (eager, sdpa, flash_attention_2); default: the model's."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer name as in transformers.TrainingArguments."})
    prompt_format: str = field(default="raw", metadata={"help": "raw: train on the prompt as inference feeds it (the released aligner_inference.py feeds the raw template); vicuna_v1.1: FastChat's Vicuna v1.1 conversation, as the released FastChat train_mem.py trained the aligners and the SFT baseline (system line, 'USER: <prompt> ASSISTANT:', the loss on the assistant turn and its EOS only)."})
    dataloader_num_workers: int = field(default=0, metadata={**check(ge=0), "help": "DataLoader worker processes."})
    torch_threads: int = field(default=0, metadata={**check(ge=0), "help": "CPU threads per process (0: torch's default). On a busy shared CPU, 1 avoids oversubscription (measured 3x faster here)."})

    def __post_init__(self):
        super().__post_init__()  # every field's rule (metaaligner.cli.check), also for configs built in Python

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def eval_kwargs(self, has_eval: bool) -> dict[str, Any]:
        """In-training evaluation only every ``eval_steps`` > 0 steps (else ``train_sft`` evaluates
        once at the end of the stage)."""
        if has_eval and self.eval_steps > 0:
            return {"eval_strategy": "steps", "eval_steps": self.eval_steps}
        return {"eval_strategy": "no"}


# ---------------------------------------------------------------- tokenization

# FastChat's conversation template "vicuna_v1.1" (fastchat/conversation.py): this system message, roles
# USER / ASSISTANT, SeparatorStyle.ADD_COLON_TWO with sep " " and sep2 "</s>", so one exchange reads
# "<system> USER: <prompt> ASSISTANT: <target></s>"; train.py's preprocess masks all but the target and
# its "</s>".
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
PROMPT_FORMATS = ("raw", "vicuna_v1.1")


def format_prompt(prompt: str, prompt_format: str = "raw") -> str:
    """The text before the target: the prompt itself (``raw``), or FastChat's Vicuna v1.1 conversation
    up to the assistant's role (``vicuna_v1.1``: ``"<system> USER: <prompt> ASSISTANT:"``)."""
    if prompt_format == "raw":
        return prompt
    if prompt_format == "vicuna_v1.1":
        return f"{VICUNA_SYSTEM} USER: {prompt} ASSISTANT:"
    raise MetaAlignerError(f"--prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")


def tokenize_item(tokenizer, prompt: str, completion: str, max_length: int | None,
                  prompt_format: str = "raw") -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated): prompt ids as inference builds them, completion ids + EOS;
    labels are -100 on the prompt. Over ``max_length``: the target keeps
    ``max(max_length - len(prompt), max_length // 2)`` tokens (cut at its end) and the prompt keeps its
    end (the template's ``| Edit:`` cue), like inference truncates.

    ``vicuna_v1.1``: the prompt is ``format_prompt``'s conversation and the target's tokens are those
    of `` <target>`` in the whole conversation, as FastChat tokenized it (``ASSISTANT: <target>``), so
    the first target token carries its leading space (FastChat's masking offsets assume the same)."""
    if tokenizer.eos_token_id is None:
        raise MetaAlignerError("the tokenizer has no EOS token; the target must end in EOS")
    text = format_prompt(prompt, prompt_format)
    p = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if prompt_format == "raw":
        c = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    else:
        whole = list(tokenizer(f"{text} {completion}", add_special_tokens=True)["input_ids"])
        if whole[:len(p)] != p:
            raise MetaAlignerError("vicuna_v1.1: the tokenizer merges the 'ASSISTANT:' cue into the target's first "
                                   "token, so the turn cannot be masked at a token boundary")
        c = whole[len(p):]
    c = c + [tokenizer.eos_token_id]
    truncated = False
    if max_length is not None and len(p) + len(c) > max_length:
        truncated = True
        keep_c = min(len(c), max(max_length - len(p), max_length // 2))
        keep_p = max_length - keep_c
        c = c[:keep_c]
        p = p[len(p) - keep_p:] if keep_p > 0 else []
    return p + c, [-100] * len(p) + c, truncated


def tokenize_items(tokenizer, items: list[dict], max_length: int | None, name: str = "train",
                   prompt_format: str = "raw"):
    """A ``datasets.Dataset`` of ``input_ids``/``labels`` and the count of truncated items."""
    from datasets import Dataset

    ids, labels, truncated = [], [], 0
    for i, item in enumerate(items):
        if not isinstance(item.get("prompt"), str) or not isinstance(item.get("completion"), str):
            raise MetaAlignerError(f"{name} item {i + 1}: needs text fields 'prompt' and 'completion'")
        x, y, cut = tokenize_item(tokenizer, item["prompt"], item["completion"], max_length, prompt_format)
        ids.append(x)
        labels.append(y)
        truncated += cut
    return Dataset.from_dict({"input_ids": ids, "labels": labels}), truncated


# ---------------------------------------------------------------- model loading

def _is_adapter(path: str) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def load_trainable_model(model_name_or_path: str | None, config: SFTStageConfig, device: str):
    """(model, tokenizer, peft_config): a full model, or base + existing adapter made trainable (a
    previous LoRA stage), or a full model plus a fresh ``LoraConfig`` when ``config.lora``."""
    from transformers import AutoModelForCausalLM

    from metaaligner.models import _adapter_base, load_tokenizer, pick_dtype, resolve_model_path

    path = resolve_model_path(model_name_or_path)
    adapter = path if _is_adapter(path) else None
    base = _adapter_base(path) if adapter else path
    # Full fine-tuning keeps float32 master weights (the trainer autocasts to bf16/fp16 on GPU, as
    # FastChat's FSDP run did); a frozen LoRA base is loaded in the device's compute dtype (PEFT keeps
    # the adapter weights in float32). CPU: float32 always.
    import torch

    lora_base = bool(adapter or config.lora)
    kwargs: dict[str, Any] = {"dtype": pick_dtype(device) if lora_base and device.startswith("cuda") else torch.float32}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:  # ValueError: a folder that is not a model ("Unrecognized model")
        raise MetaAlignerError(f"cannot load model {base!r}: {str(exc).splitlines()[0]}") from None
    tokenizer_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").exists() else base
    tokenizer = load_tokenizer(tokenizer_source, padding_side="right")
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    peft_config = None
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
        if config.gradient_checkpointing:
            model.enable_input_require_grads()
    elif config.lora:
        from peft import LoraConfig

        target_modules = config.lora_targets()
        layers = None
        if config.lora_top_layers > 0:
            n_layers = model.config.get_text_config().num_hidden_layers
            layers = list(range(max(0, n_layers - config.lora_top_layers), n_layers))
            if target_modules == "all-linear":  # PEFT wants explicit names together with layers_to_transform
                target_modules = decoder_linear_names(model)
        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=target_modules, layers_to_transform=layers, task_type="CAUSAL_LM")
    return model, tokenizer, peft_config


def decoder_linear_names(model) -> list[str]:
    """Names of the Linear layers inside the decoder blocks (q_proj, ..., down_proj for LLaMA)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and ".layers." in name}
    if not names:
        raise MetaAlignerError("lora_top_layers: found no Linear layers under '.layers.'; set lora_target_modules")
    return sorted(names)


def build_sft_args(config: SFTStageConfig, output_dir: str, has_eval: bool, device: str, lora: bool = False):
    """The ``trl.SFTConfig`` for one stage; precision set by device (TRL defaults to bf16=True);
    ``lora``: adapters are trained (``ddp_find_unused_parameters=False`` under DDP)."""
    from trl import SFTConfig

    kwargs = config.training_kwargs(
        SFTConfig, output_dir, device, has_eval, lora=lora,
        activation_checkpointing=config.gradient_checkpointing,  # transformers 5 name of gradient_checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        max_length=None,  # we truncate while tokenizing; None also lets padding_free run without packing
        logging_first_step=True, report_to="none", disable_tqdm=False, remove_unused_columns=False)
    kwargs.pop("gradient_checkpointing", None)
    return SFTConfig(**kwargs)


def _speed_paths(model, config: SFTStageConfig) -> None:
    """The two same-loss shortcuts of ``metaaligner.training.packed`` (each has a config switch)."""
    from metaaligner.training.packed import score_targets_only, use_segment_sdpa

    score_targets_only(config.targets_only_lm_head)
    if config.padding_free and config.segment_attention and use_segment_sdpa(model):
        log.info("padding-free batches: causal attention per packed item (segment_sdpa)")


def stage_done(output_dir: str | Path) -> dict | None:
    """The summary a finished stage left in its folder, or None."""
    marker = Path(output_dir) / STAGE_DONE
    if not marker.exists():
        return None
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------- the stage

def _build_trainer(model_name_or_path: str | None, train_items: list[dict], eval_items: list[dict] | None,
                   output_dir: str, config: SFTStageConfig, stage: str, log_path: str | None,
                   callbacks: list | None):
    """(trainer, truncated train items, truncated eval items): the model (``load_trainable_model``) on
    its fast paths, the tokenized items and TRL's ``SFTTrainer`` with the JSONL log callback."""
    from trl import SFTTrainer

    from metaaligner.models import pick_device
    from metaaligner.training.common import make_jsonl_callback

    device = pick_device(None if config.device == "auto" else config.device)
    model, tokenizer, peft_config = load_trainable_model(model_name_or_path, config, device)
    _speed_paths(model, config)
    train_ds, cut_train = tokenize_items(tokenizer, train_items, config.max_length, "train", config.prompt_format)
    eval_ds, cut_eval = (tokenize_items(tokenizer, eval_items, config.max_length, "eval", config.prompt_format)
                         if eval_items else (None, 0))
    lora = peft_config is not None or _is_adapter(str(model_name_or_path or ""))
    args = build_sft_args(config, output_dir, eval_ds is not None, device, lora=lora)
    all_callbacks = list(callbacks or [])
    if log_path:
        all_callbacks.append(make_jsonl_callback(log_path, stage))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=all_callbacks)
    return trainer, cut_train, cut_eval


def _record_stage(trainer, summary: dict[str, Any], output_dir: str, stage: str, log_path: str | None) -> None:
    """The main process appends the stage's end to the JSONL log and writes ``stage_done.json``."""
    if not trainer.is_world_process_zero():
        return
    from metaaligner.io import atomic_open, open_no_follow

    if log_path:
        with open_no_follow(log_path, "a") as fh:
            record = {k: v for k, v in summary.items() if k != "config"}
            fh.write(json.dumps({"stage": stage, "event": "stage_end", **record}) + "\n")
    with atomic_open(Path(output_dir) / STAGE_DONE) as fh:  # temp file + rename: never through a link
        fh.write(json.dumps(summary, indent=2))


def stage_fingerprint(args, model_name_or_path: str | None, train_items: list[dict], config: SFTStageConfig) -> dict:
    """What a resumed stage must share with its checkpoints (``training_fingerprint`` + the token budget
    and prompt format, which change the tokens trained on)."""
    from metaaligner.training.common import training_fingerprint

    return training_fingerprint(args, model_name_or_path, train_items, max_length=config.max_length,
                                prompt_format=config.prompt_format)


def check_finished_stage(output_dir: str | Path, model_name_or_path: str | None, train_items: list[dict],
                         config: SFTStageConfig) -> None:
    """Refuse to skip a finished stage (``--resume``) that was trained with other settings than these,
    naming each difference (old -> new); a stage without a recorded fingerprint is not checked."""
    from metaaligner.models import pick_device
    from metaaligner.training.common import RESUME_SETTINGS, fingerprint_differences

    path = Path(output_dir) / RESUME_SETTINGS
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MetaAlignerError(f"{path} is unreadable ({exc}); cannot check --resume's settings") from exc
    lora = config.lora or _is_adapter(str(model_name_or_path or ""))
    args = build_sft_args(config, str(output_dir), False, pick_device(None if config.device == "auto" else config.device),
                          lora=lora)
    diffs = fingerprint_differences(saved, stage_fingerprint(args, model_name_or_path, train_items, config))
    if diffs:
        raise MetaAlignerError(f"--resume: {output_dir} was finished with other settings ({'; '.join(diffs)}); "
                               "resume with its settings, or pass --overwrite to train it again")


def train_sft(model_name_or_path: str | None, train_items: list[dict], eval_items: list[dict] | None,
              output_dir: str, config: SFTStageConfig, stage: str, log_path: str | None,
              resume: bool = False, callbacks: list | None = None, overwrite: bool = False) -> str:
    """Fine-tune on ``{"prompt", "completion"}`` items (raw prompts, no chat template; loss on the
    completion + EOS only) and save the model (or the LoRA adapter) with its tokenizer to
    ``output_dir``, which is returned. Checkpoints go to ``output_dir/checkpoint-N``; ``resume``
    continues from the last complete one (weights, optimizer, scheduler, RNG, data position), refused
    when the settings differ; ``overwrite`` deletes an earlier run's checkpoints and starts over
    (``metaaligner.training.common.prepare_resume``).

    ``model_name_or_path`` may be None (the embedded model), a full model, or a LoRA adapter folder
    from an earlier stage (its adapter keeps training). ``callbacks`` are extra
    ``TrainerCallback`` objects (tests use them to stop mid-run).
    """
    import torch
    from transformers import set_seed

    from metaaligner.training.common import fit, free_device_memory, peak_memory, reset_peak_memory, summary_line

    if not train_items:
        raise MetaAlignerError(f"stage {stage!r}: no training items")
    started = time.time()
    reset_peak_memory()
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    set_seed(config.seed)
    trainer, cut_train, cut_eval = _build_trainer(model_name_or_path, train_items, eval_items, output_dir, config,
                                                  stage, log_path, callbacks)
    fingerprint = stage_fingerprint(trainer.args, model_name_or_path, train_items, config)
    result, checkpoint = fit(trainer, output_dir, resume, overwrite, fingerprint, log, also_clear=(STAGE_DONE,))
    eval_loss = trainer.evaluate().get("eval_loss") if trainer.eval_dataset is not None else None
    trainer.save_model(output_dir)
    memory = peak_memory()
    elapsed = time.time() - started
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    summary = {
        "stage": stage, "train_items": len(train_items), "eval_items": len(eval_items or []),
        "truncated_train": cut_train, "truncated_eval": cut_eval,
        "steps": trainer.state.global_step, "train_loss": result.training_loss, "eval_loss": eval_loss,
        "resumed_from": checkpoint, "wall_s": round(elapsed, 2), "tokens_seen": tokens,
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None, **memory,
        "processes": trainer.args.world_size, "padding_free": config.padding_free,
        "lora": bool(config.lora or _is_adapter(str(model_name_or_path or ""))),
        "base": str(model_name_or_path), "config": config.to_dict(),
    }
    _record_stage(trainer, summary, output_dir, stage, log_path)
    trainer.accelerator.wait_for_everyone()  # the next stage loads these files on every rank
    if trainer.is_world_process_zero():
        extra = f", eval loss {eval_loss:.4f}" if eval_loss is not None else ""
        print(summary_line(stage, f"{len(train_items)} items ({cut_train} truncated)", trainer,
                           result.training_loss, started, output_dir, memory, extra), flush=True)
    del trainer
    free_device_memory()
    return output_dir


WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "adapter_config.json", "*.bin")


def copy_model_files(src: str | Path, dst: str | Path) -> None:
    """Copy a saved model/adapter folder's files (not its checkpoints) into ``dst``; weight files in
    ``dst`` that ``src`` lacks (an earlier run's full model beside a new adapter) are removed, so the
    folder loads as what ``src`` holds."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for pattern in WEIGHT_FILES:
        for stale in dst.glob(pattern):
            if stale.is_file() and not (src / stale.name).exists():
                stale.unlink()
    for item in src.iterdir():
        if item.is_file() and item.name not in (STAGE_DONE, "training_args.bin"):
            shutil.copy2(item, dst / item.name)
