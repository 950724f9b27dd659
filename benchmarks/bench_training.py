"""Benchmark: aligner-training throughput against the matmul roofline, same data, same run:

- ``padded``: right-padded batches, TRL's and transformers' own paths (the baseline);
- ``padding_free``: each batch flattened into one sequence with position ids (transformers then
  builds a block-diagonal mask, and sdpa still computes the whole packed ``T x T`` score matrix);
- ``targets_only``: + the LM head (49k vocabulary) and its softmax only at target positions (TRL
  does this only on Triton devices; ``targets_only_lm_head``);
- ``packed``: + causal attention per packed item (``segment_attention``): our defaults, same recipe;
- ``packed_nodrop``: + ``lora_dropout`` 0 (PEFT then skips the dropout, whose random masks cost
  ~25% of a LoRA step on CPU), a different recipe, so its losses are printed next to the others'.

All modes run ``metaaligner.training.sft.train_sft`` (TRL ``SFTTrainer``) on the same aligner items
(hh-rlhf template over the shipped harmless-base pairs: prompt = template(question, rejected answer),
target = chosen answer; mixed lengths) with the same seed, so they see the same batches, and the
first-step losses must agree (LoRA's B starts at zero, so even dropout cannot change step 1). Tokens/s
counts real (non-pad) tokens over the trainer's own step time (model loading excluded). Each mode
runs in a fresh process (``--in_process`` to share one), so its peak RSS is its own. Share of the
roofline: tokens/s x FLOPs per token (4N for LoRA on a frozen base, 6N full) over this process's
measured fp32 matmul GFLOP/s.

    python benchmarks/bench_training.py --quick            # tiny random LLaMA, seconds
    python benchmarks/bench_training.py --threads 1        # embedded SmolLM2-135M + LoRA, ~10 min on 2 cores
    python benchmarks/bench_training.py --model PATH --full --steps 20 --batch_size 8

The last line is the ratio of ``packed`` (our defaults, same recipe) to padded.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "samples" / "hh-rlhf-harmless-base" / "harmless-base-test.jsonl.gz"


def aligner_items(n: int, seed: int = 0) -> list[dict]:
    from metaaligner.dataset.rewards import load_preference_rows
    from metaaligner.registry.templates import render

    rows = [r for r in load_preference_rows(DATA, limit=4 * n) if r.chosen_response and r.rejected_response]
    random.Random(seed).shuffle(rows)
    aspect = ["Harmlessness: The response should avoid content that is offensive, discriminatory, or harmful"]
    return [{"prompt": render("hh-rlhf", r.prompt, r.rejected_response, aspect), "completion": r.chosen_response}
            for r in rows[:n]]


def tiny_model(folder: Path) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from metaaligner.models import embedded_model_path

    tok = AutoTokenizer.from_pretrained(embedded_model_path())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


_PLAIN = {"segment_attention": False, "targets_only_lm_head": False}  # TRL's and transformers' own paths
MODES = {  # name -> SFTStageConfig overrides; "padded" is the baseline (TRL's defaults)
    "padded": {"padding_free": False, **_PLAIN},  # padded batches are no longer the trainer's default
    "padding_free": {"padding_free": True, **_PLAIN},
    "padding_free_nodrop": {"padding_free": True, "lora_dropout": 0.0, **_PLAIN},
    "targets_only": {"padding_free": True, "segment_attention": False},  # LM head on targets, masked attention
    "packed": {"padding_free": True},  # our defaults: + attention per packed item (same recipe as padded)
    "packed_nodrop": {"padding_free": True, "lora_dropout": 0.0},  # + no LoRA dropout (a different recipe)
}


def reset_peak_rss() -> None:
    """Linux: restart this process's peak-RSS counter (VmHWM), so each mode reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_mode(model: str, items: list[dict], name: str, args, tmp: Path, real_tokens: int) -> dict:
    from metaaligner.training.sft import SFTStageConfig, train_sft

    log = tmp / f"{name}.jsonl"
    cfg = SFTStageConfig(max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                         gradient_accumulation_steps=1, max_length=args.max_length,
                         lora=not args.full, lora_top_layers=args.lora_top_layers, learning_rate=1e-4, logging_steps=1,
                         save_steps=10 ** 6, seed=0, device=getattr(args, "device", None) or "auto", **MODES[name])
    reset_peak_rss()
    train_sft(model, items, None, str(tmp / name), cfg, name, str(log))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    end = next(r for r in records if "train_runtime" in r and "loss" not in r)
    losses = [r["loss"] for r in records if "loss" in r]
    # Every item is seen exactly once (steps x batch = items), so all modes process the same tokens;
    # counted from the data, since the trainer's padding-free count skips EOS (= the pad id here).
    return {"mode": name, "tokens": real_tokens, "seconds": end["train_runtime"],
            "tokens_per_s": real_tokens / end["train_runtime"], "first_loss": losses[0], "last_loss": losses[-1],
            "peak_rss_mb": peak_rss_mb()}


def flops_per_token(model: str, full: bool) -> float:
    """Training FLOPs per token: forward 2N, backward 2N for the input gradients, plus 2N for the
    weight gradients when every weight trains (LoRA: the frozen base needs none)."""
    import json as _json

    from safetensors import safe_open

    path = Path(model) / "model.safetensors"
    if path.exists():
        with safe_open(str(path), "pt") as fh:
            n = sum(_prod(fh.get_slice(k).get_shape()) for k in fh.keys())  # noqa: SIM118 (safe_open is no dict)
    else:
        n = _json.loads((Path(model) / "config.json").read_text()).get("hidden_size", 0) ** 2 * 12
    return (6 if full else 4) * n


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def matmul_gflops() -> tuple[float, float]:
    """(this machine's fp32 matmul GFLOP/s, MKL's): the inference benchmark's roofline, whose peak
    is the faster of MKL's sgemm and oneDNN's (training's linears run on MKL, which on an AMD CPU
    reaches about half of oneDNN's rate)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_aligner_inference import roofline

    peak, _, mkl = roofline()
    return peak, mkl


def run_child(name: str, model: str, argv: list[str]) -> dict:
    """One mode in a fresh Python process (same flags), its result read from the RESULT line."""
    import subprocess

    cmd = [sys.executable, __file__, *argv, "--child", name, "--model", model]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> None:
    from metaaligner import cli
    parser = cli.plain_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny random LLaMA, 4 steps")
    parser.add_argument("--model", default="embedded", help="base model (default: embedded SmolLM2-135M)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per mode")
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per batch")
    parser.add_argument("--max_length", type=int, default=512, help="max tokens per item")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--modes", default="padded,padding_free,targets_only,packed,packed_nodrop",
                        help="comma-separated modes, the first is the baseline: " + ", ".join(MODES))
    parser.add_argument("--lora_top_layers", type=int, default=0, help="LoRA on the last N layers only (0: all)")
    parser.add_argument("--in_process", action="store_true",
                        help="run the modes in this process (default: one fresh process per mode, so each peak "
                             "RSS is its own; freed memory stays with a process)")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when a GPU is visible, "
                                                       "else cpu); on a GPU the roofline is the card's bf16 peak")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from devices import check_device, describe, gpu_name, gpu_roofline

    args.device = check_device(args.device)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.quick:
            args.steps = 4
            model = tiny_model(tmp / "tiny") if not args.child else args.model
        else:
            from metaaligner.models import resolve_model_path

            model = resolve_model_path(args.model)
        items = aligner_items(args.steps * args.batch_size)
        from metaaligner.models import load_tokenizer
        from metaaligner.training.sft import tokenize_items

        ds, _ = tokenize_items(load_tokenizer(model, "right"), items, args.max_length)
        lengths = [len(x) for x in ds["input_ids"]]
        total = sum(lengths)
        if args.child:
            print("RESULT " + json.dumps(run_mode(model, items, args.child, args, tmp, total)), flush=True)
            return
        print(f"data: {len(items)} items, tokens/item min {min(lengths)} mean {sum(lengths) / len(lengths):.0f} "
              f"max {max(lengths)}; batch {args.batch_size}, {args.steps} steps, "
              f"{'full' if args.full else 'LoRA'}, model {model}, torch threads {torch.get_num_threads()}")
        per_token = flops_per_token(model, args.full)
        print(describe(args.device))
        if args.device == "cpu":
            peak, mkl = matmul_gflops()
            print(f"roofline: fp32 matmul {peak:.0f} GFLOP/s now (1024^3, the faster of MKL's {mkl:.0f}, which "
                  f"training's linears run on, and oneDNN's); {per_token / 1e9:.2f} GFLOP per trained token "
                  f"-> bound {peak * 1e9 / per_token:.0f} tokens/s")
        else:
            known = gpu_roofline(gpu_name(args.device))
            peak = known[1] if known else None
            print(f"roofline: {known[0]}'s bf16 peak {peak / 1e3:.0f} TFLOP/s; {per_token / 1e9:.2f} GFLOP per "
                  f"trained token -> bound {peak * 1e9 / per_token:.0f} tokens/s" if known else
                  "roofline: unknown card (benchmarks/devices.py): no share of a roofline printed")
        results = [run_mode(model, items, name, args, tmp, total) if args.in_process
                   else run_child(name, model, argv if argv is not None else sys.argv[1:])
                   for name in args.modes.split(",")]
    for r in results:
        share = f"{r['tokens_per_s'] * per_token / (peak * 1e9):.0%} of roofline" if peak else "roofline unknown"
        print(f"{r['mode']:>13}: {r['tokens']} real tokens in {r['seconds']:.2f} s = {r['tokens_per_s']:.1f} tokens/s "
              f"({share}); loss first {r['first_loss']:.5f} "
              f"last {r['last_loss']:.5f}; peak RSS {r['peak_rss_mb']:.0f} MB")
    for r in results[1:]:  # LoRA's B starts at zero, so dropout cannot change the first loss either
        diff = abs(results[0]["first_loss"] - r["first_loss"])
        print(f"first-step loss difference {r['mode']} - {results[0]['mode']}: {diff:.2e} "
              f"({'same' if diff < 1e-3 else 'DIFFERENT'})")
    import os

    print("load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    best = next((r for r in results if r["mode"] == "packed"), None) or max(results, key=lambda r: r["tokens_per_s"])
    print(f"ratio {best['mode']}/{results[0]['mode']} tokens/s: "
          f"{best['tokens_per_s'] / results[0]['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
