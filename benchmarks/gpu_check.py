r"""GPU check: aligner-inference and training tokens/s on one GPU, two model shapes, one run, one table.

    bash scripts/gpu_check.sh                          # one H100/H200: under 8 minutes (GPU_CHECK_TIMEOUT_S)
    bash scripts/gpu_check.sh --tokenizer .gpu_check/tokenizer   # with a carried tokenizer folder
    bash scripts/gpu_check.sh --tiny                   # tiny sizes on the CPU (tests/test_scale_out.py runs this)

Meant for a lent GPU machine with no network, where at most 64 MiB travels with a call: the embedded
model's weights (538 MB) do not, so the weights are RANDOM, built here from two configs: the embedded
model's shape (SmolLM2-135M: hidden 576, 30 layers, 9 heads, 3 KV heads) and a 1.1B Llama shape
(TinyLlama-1.1B: hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632). Throughput does not depend on
the weights' values; the output lines say so. The end-of-sequence rows of the output layer are zeroed, so
every row generates exactly ``--new_tokens`` (a random model would otherwise stop anywhere).

Tokenizer: ``--tokenizer DIR`` (e.g. the embedded model's tokenizer.json, 3.5 MB, copied into an ignored
folder that the call carries:
``mkdir -p .gpu_check/tokenizer && cp ~/.cache/metaaligner/smollm2-135m-instruct-f32/tokenizer*.json
.gpu_check/tokenizer/ && echo /.gpu_check/ >> .git/info/exclude``), else the embedded model's when it is
installed, else a byte-level stand-in built here (one token per byte; prompts are then cut to 1,000 bytes,
the start and the end kept). A tokenizer with more tokens than a shape's vocabulary widens that
vocabulary (said in the output).

Per shape: aligner inference on ``--rows`` HH-RLHF aligner prompts (samples/, hh-rlhf template, 3
objectives), greedy, ``--new_tokens`` each: ``released`` (batch 1, one ``generate`` per row, as the
released script ran), ``padded`` (left-padded ``generate`` batches of ``--batch_size``, length-sorted)
and ``fast`` (our hf backend's fast engine, ``HFGenerator``), each with a warm-up first; then training:
``--train_steps`` AdamW steps (after one untimed) of LoRA r=16 on every linear (peft; full fine-tuning
where peft is missing) on ``--train_batch`` sequences of ``--train_len`` tokens, a plain loop (TRL is
not on the GPU machine), loss on every token. The model runs bf16 on a GPU, float32 on the CPU (the hf
backend's rule). Roofline column: released = tokens/s over the batch-1 decode bound (weights read once a
token at the card's HBM bandwidth); training = FLOPs/s (4N a token for LoRA, 6N full) over the card's
bf16 peak (``benchmarks/devices.py``); "--" on the CPU or an unknown card.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The two shapes, from their published config.json files (SmolLM2-135M-Instruct as embedded here, TinyLlama-1.1B).
SHAPES = {
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
                     "rope_theta": 100000.0, "tie_word_embeddings": True, "rms_norm_eps": 1e-5},
    "llama-1.1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
                   "num_key_value_heads": 4, "head_dim": 64, "vocab_size": 32000, "max_position_embeddings": 2048,
                   "rope_theta": 10000.0, "tie_word_embeddings": False, "rms_norm_eps": 1e-5},
}
# --tiny: the same head layout scaled down (a CPU smoke run of every line of this script).
TINY = {"smollm2-135m": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 3,
                         "num_key_value_heads": 1, "head_dim": 16},
        "llama-1.1b": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "head_dim": 16}}
METHODS = ("released", "padded", "fast")
LABELS = {"released": "released: batch 1 loop", "padded": "padded generate, batch {b}",
          "fast": "fast engine, batch {b}", "train": "{kind}, AdamW"}
COLUMNS = ("shape", "work", "method", "tokens", "seconds", "tokens/s", "x released", "roofline", "peak GPU memory")
BYTE_LIMIT = 1000  # a byte-level stand-in's prompts: the first 400 and the last 600 bytes


def make_parser() -> argparse.ArgumentParser:
    from metaaligner import cli
    parser = cli.plain_parser(__doc__)
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when visible, else cpu)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes and sizes (CPU smoke run); also GPU_CHECK_TINY=1")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--rows", type=int, default=None, help="aligner prompts (default 32; tiny 3)")
    parser.add_argument("--new_tokens", type=int, default=None, help="new tokens per row (default 64; tiny 4)")
    parser.add_argument("--batch_size", type=int, default=None, help="rows per batch (default 32; tiny 3)")
    parser.add_argument("--train_steps", type=int, default=None, help="timed training steps (default 10; tiny 2)")
    parser.add_argument("--train_batch", type=int, default=None, help="sequences per step (default 8; tiny 2)")
    parser.add_argument("--train_len", type=int, default=None, help="tokens per sequence (default 512; tiny 32)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the embedded model's, "
                                                          "else a byte-level stand-in)")
    parser.add_argument("--byte_tokenizer", action="store_true", help="use the byte-level stand-in")
    parser.add_argument("--budget_s", type=float, default=420.0,
                        help="skip what would start after this many seconds (rows say 'skipped')")
    return parser


def sizes(args) -> dict:
    tiny = args.tiny
    defaults = {"rows": (32, 3), "new_tokens": (64, 4), "batch_size": (32, 3), "train_steps": (10, 2),
                "train_batch": (8, 2), "train_len": (512, 32)}
    return {k: getattr(args, k) if getattr(args, k) is not None else v[1 if tiny else 0] for k, v in defaults.items()}


def byte_tokenizer():
    """A byte-level tokenizer built here: <unk> 0, <s> 1, </s> 2 (also the pad), then one token per byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(alphabet)}}
    inner = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def load_tokenizer(args):
    """(tokenizer, where it came from, byte-level stand-in?)."""
    from transformers import AutoTokenizer

    if args.tokenizer:
        return AutoTokenizer.from_pretrained(args.tokenizer), args.tokenizer, False
    if not args.byte_tokenizer:
        try:
            from metaaligner.models import embedded_model_path

            folder = embedded_model_path()
            return AutoTokenizer.from_pretrained(folder), f"the embedded model's ({folder})", False
        except Exception as exc:  # no embedded model on this machine (a GPU machine without our installs)
            print(f"note: no embedded tokenizer here ({type(exc).__name__}); using a byte-level stand-in", flush=True)
    return byte_tokenizer(), "a byte-level stand-in built here (one token per byte)", True


def aligner_prompts(rows: int, byte_level: bool) -> list[str]:
    """HH-RLHF aligner prompts as aligner inference builds them (samples/, hh-rlhf, 3 objectives)."""
    from metaaligner.aligner.inference import build_prompts, load_policy_rows
    from metaaligner.registry.objectives import ObjectiveRegistry

    data = load_policy_rows(REPO / "samples/HH-RLHF_model_output/Claude-3.csv.gz", limit=rows)
    descriptions = ObjectiveRegistry.builtin().descriptions("harmlessness,helpfulness,humour", "hh-rlhf")
    prompts = build_prompts("hh-rlhf", [r["query"] for r in data], [r["answer"] for r in data], descriptions)
    if byte_level:
        prompts = [p if len(p.encode()) <= BYTE_LIMIT else p[:400] + p[-600:] for p in prompts]
    return prompts


def build_model(name: str, tokenizer, device: str, tiny: bool):
    """A random-weight LlamaForCausalLM of the named shape; (model, note on the vocabulary)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {**SHAPES[name], **(TINY[name] if tiny else {})}
    theta = shape.pop("rope_theta")
    vocab = max(shape["vocab_size"], len(tokenizer))
    note = "" if vocab == shape["vocab_size"] else \
        f"; vocabulary {shape['vocab_size']} widened to the tokenizer's {vocab}"
    shape["vocab_size"] = vocab
    config = LlamaConfig(**shape, rope_parameters={"rope_theta": theta, "rope_type": "default"},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():  # never predict the end: every row generates exactly --new_tokens
        head = model.get_output_embeddings().weight
        for token in {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}:
            head[token].zero_()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    return model, note


def generated(new_ids, stop: set[int]) -> int:
    return next((i for i, t in enumerate(new_ids) if t in stop), len(new_ids))


def run_released(model, tokenizer, prompts: list[str], new: int, batch: int):
    import torch

    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    texts, tokens = [], 0
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=new, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=tokenizer.pad_token_id)
        ids = out[0, inputs["input_ids"].shape[1]:].tolist()
        tokens += generated(ids, stop)
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts, tokens


def run_padded(model, tokenizer, prompts: list[str], new: int, batch: int):
    import torch

    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: -len(tokenizer(prompts[i])["input_ids"]))
    texts, tokens = [""] * len(prompts), 0
    for start in range(0, len(order), batch):
        part = order[start:start + batch]
        inputs = tokenizer([prompts[i] for i in part], return_tensors="pt", padding=True).to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=new, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=tokenizer.pad_token_id)
        for row, i in enumerate(part):
            ids = out[row, inputs["input_ids"].shape[1]:].tolist()
            tokens += generated(ids, stop)
            texts[i] = tokenizer.decode(ids, skip_special_tokens=True)
    return texts, tokens


def run_fast(model, tokenizer, prompts: list[str], new: int, batch: int):
    from metaaligner.generation import GenerationParams
    from metaaligner.generation.hf import HFGenerator

    gen = HFGenerator(model_obj=model, tokenizer=tokenizer, engine="fast")
    texts = gen.generate(prompts, GenerationParams(max_new_tokens=new, batch_size=batch))
    return texts, gen.stats["generated_tokens"]


RUNNERS = {"released": run_released, "padded": run_padded, "fast": run_fast}


def timed(device: str, fn, *a):
    from devices import synchronize

    synchronize(device)
    start = time.perf_counter()
    out = fn(*a)
    synchronize(device)
    return out, time.perf_counter() - start


def train(model, tokenizer, prompts: list[str], device: str, steps: int, batch: int, length: int):
    """(tokens, seconds, kind, FLOPs per token) of a plain training loop (peak memory: ``peak_memory``)."""
    import torch

    ids = []
    while len(ids) < batch * length:
        for p in prompts:
            ids.extend(tokenizer(p)["input_ids"])
    data = torch.tensor(ids[:batch * length], device=device).view(batch, length)
    params = sum(p.numel() for p in model.parameters())
    try:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        kind, per_token = "LoRA r16 (peft)", 4 * params
    except ImportError:
        if device.startswith("cuda"):
            model = model.float()  # fp32 master weights, bf16 autocast below
        kind, per_token = "full fine-tuning (no peft here)", 6 * params
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else _null()

    def step():
        with autocast:
            loss = model(input_ids=data, labels=data).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up, untimed
    _, seconds = timed(device, lambda: [step() for _ in range(steps)])
    return steps * batch * length, seconds, kind, per_token


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory(device: str) -> str:
    """The GPU memory allocated at most since ``reset_peak`` ("--" on the CPU)."""
    if not device.startswith("cuda"):
        return "--"
    import torch

    return f"{torch.cuda.max_memory_allocated(torch.device(device)) / 2**30:.1f} GiB"


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    args.tiny = args.tiny or os.environ.get("GPU_CHECK_TINY", "") not in ("", "0")
    import warnings

    import torch
    from devices import check_device, describe, gpu_name, gpu_roofline

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not results
    began = time.perf_counter()
    device = check_device(args.device)
    size = sizes(args)
    roof = gpu_roofline(gpu_name(device)) if device.startswith("cuda") else None
    tokenizer, source, byte_level = load_tokenizer(args)
    prompts = aligner_prompts(size["rows"], byte_level)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    print(f"gpu_check: {describe(device)}; torch {torch.__version__}", flush=True)
    print(f"weights: RANDOM (no trained weights travel to the GPU machine), shapes of "
          f"{', '.join(args.shapes.split(','))}{' scaled down (--tiny)' if args.tiny else ''}; "
          f"{'bf16' if device.startswith('cuda') else 'float32'}; tokenizer: {source}", flush=True)
    print(f"prompts: {len(prompts)} HH-RLHF aligner prompts, tokens min/mean/max {min(lengths)}/"
          f"{sum(lengths) / len(lengths):.0f}/{max(lengths)}; {size['new_tokens']} new tokens each, greedy",
          flush=True)
    print("", flush=True)
    print(row(*COLUMNS), flush=True)
    print(row(*["---"] * len(COLUMNS)), flush=True)
    failures = 0
    for name in [s.strip() for s in args.shapes.split(",") if s.strip()]:
        if name not in SHAPES:
            print(f"error: --shapes {name}: choose from {', '.join(SHAPES)}", file=sys.stderr)
            return 2
        model, note = build_model(name, tokenizer, device, args.tiny)
        params = sum(p.numel() for p in model.parameters())
        weight_bytes = next(model.parameters()).element_size()
        label = f"{name} ({params / 1e6:.0f}M{note})"
        work = f"inference {len(prompts)}x{size['new_tokens']}"
        run_released(model, tokenizer, prompts[:1], 2, 1)  # warm-up (kernels, allocator), untimed
        reference, base = None, None
        for method in METHODS:
            cells = [label, work, LABELS[method].format(b=size["batch_size"])]
            if time.perf_counter() - began > args.budget_s:
                print(row(*cells, "skipped", f"over --budget_s {args.budget_s:.0f}", "--", "--", "--", "--"),
                      flush=True)
                continue
            reset_peak(device)
            try:
                (texts, tokens), seconds = timed(device, RUNNERS[method], model, tokenizer, prompts,
                                                 size["new_tokens"], size["batch_size"])
            except Exception as exc:  # one method failing (an older transformers there) leaves the others
                failures += 1
                print(row(*cells, "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}", "--", "--",
                          "--", "--"), flush=True)
                continue
            tps = tokens / seconds
            base = base or (tps if method == "released" else None)
            share = "--"
            if method == "released" and roof:
                share = f"{tps / (roof[2] * 1e9 / (params * weight_bytes)):.0%}"
            ratio = f"{tps / base:.2f}x" if base else "--"
            print(row(*cells, tokens, f"{seconds:.2f}", f"{tps:.1f}", ratio, share, peak_memory(device)), flush=True)
            reference = reference or texts
        cells = [label, f"training {size['train_batch']}x{size['train_len']} x {size['train_steps']} steps"]
        reset_peak(device)
        if time.perf_counter() - began > args.budget_s:
            print(row(*cells, LABELS["train"].format(kind="training"), "skipped",
                      f"over --budget_s {args.budget_s:.0f}", "--", "--", "--", "--"), flush=True)
        else:
            try:
                tokens, seconds, kind, per_token = train(model, tokenizer, prompts, device,
                                                                 size["train_steps"], size["train_batch"],
                                                                 size["train_len"])
                share = f"{tokens / seconds * per_token / (roof[1] * 1e9):.0%}" if roof else "--"
                print(row(*cells, LABELS["train"].format(kind=kind), tokens, f"{seconds:.2f}",
                          f"{tokens / seconds:.1f}", "--", share, peak_memory(device)), flush=True)
            except Exception as exc:
                failures += 1
                print(row(*cells, LABELS["train"].format(kind="training"), "failed",
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}", "--", "--", "--", "--"),
                      flush=True)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"\ntotal {time.perf_counter() - began:.0f} s; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
