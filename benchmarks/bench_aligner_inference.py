"""Aligner inference throughput: the released way (batch 1, one ``generate`` per row) against ours
(batched, left-padded, length-sorted) on the same rows, model and machine, in one run.

    python benchmarks/bench_aligner_inference.py            # 32 HH-RLHF Claude-3 rows, 64 new tokens, greedy
    python benchmarks/bench_aligner_inference.py --quick    # 8 rows, 16 new tokens (a smoke run)

Throughput = generated tokens (up to EOS) per wall second; CPU seconds of this process are printed
too, because on a shared machine the wall time of each phase also measures the neighbours' load. Both paths use the embedded SmolLM2-135M
model already in memory, greedy decoding, and the hh-rlhf template with all three objectives. Ours
is run at several batch sizes, with and without the length sort; it also checks that the batched
text equals the batch-1 text row by row. The last line is the ratio best-ours / released.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO / "samples/HH-RLHF_model_output/Claude-3.csv.gz"), help="policy-output table")
    parser.add_argument("--rows", type=int, default=32, help="rows to align")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_sizes", default="8,16,32", help="comma-separated batch sizes for ours")
    parser.add_argument("--model", default=None, help="aligner model (default: the embedded SmolLM2-135M)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="8 rows, 16 new tokens, batch size 8")
    return parser.parse_args(argv)


def released_loop(model, tokenizer, prompts, max_new_tokens):
    """What the released script does with --batch_size 1: one generate call per row."""
    import torch

    texts, tokens = [], 0
    stop = {tokenizer.pad_token_id, tokenizer.eos_token_id} - {None}
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        n = next((i for i, t in enumerate(new) if t in stop), len(new))
        tokens += n
        texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return texts, tokens


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.rows, args.max_new_tokens, args.batch_sizes = 8, 16, "8"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from metaaligner.aligner.inference import build_prompts, load_policy_rows
    from metaaligner.generation import GenerationParams
    from metaaligner.generation.hf import HFGenerator
    from metaaligner.models import load_causal_lm
    from metaaligner.registry.objectives import ObjectiveRegistry

    rows = load_policy_rows(args.data, limit=args.rows)
    descriptions = ObjectiveRegistry.builtin().descriptions("harmlessness,helpfulness,humour", "hh-rlhf")
    prompts = build_prompts("hh-rlhf", [r["query"] for r in rows], [r["answer"] for r in rows], descriptions)
    model, tokenizer, device = load_causal_lm(args.model, device=args.device)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    print(f"{len(prompts)} rows from {Path(args.data).name}, prompt tokens min/mean/max "
          f"{min(lengths)}/{sum(lengths) / len(lengths):.0f}/{max(lengths)}, {args.max_new_tokens} new tokens, "
          f"greedy, {device}, torch threads {torch.get_num_threads()}")
    released_loop(model, tokenizer, prompts[:1], 4)  # warm-up

    start, cpu_start = time.perf_counter(), time.process_time()
    reference, ref_tokens = released_loop(model, tokenizer, prompts, args.max_new_tokens)
    ref_s, ref_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    ref_tps = ref_tokens / ref_s
    print(f"{'released: batch 1, one generate per row':<44} {ref_tokens:>6} tok {ref_s:>8.1f} s "
          f"{ref_tps:>8.2f} tok/s  cpu {ref_cpu:>7.1f} s")

    best = (0.0, "", 0.0)
    for sort in (True, False):
        for size in [int(b) for b in args.batch_sizes.split(",")]:
            if not sort and size >= len(prompts):
                continue  # one batch: sorting changes nothing
            gen = HFGenerator(model_obj=model, tokenizer=tokenizer, sort_by_length=sort)
            params = GenerationParams(max_new_tokens=args.max_new_tokens, batch_size=size)
            start, cpu_start = time.perf_counter(), time.process_time()
            texts = gen.generate(prompts, params)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            tokens = gen.stats["generated_tokens"]
            same = sum(a == b for a, b in zip(texts, reference))
            label = f"ours: batch {size}, {'length-sorted' if sort else 'unsorted'}"
            print(f"{label:<44} {tokens:>6} tok {seconds:>8.1f} s {tokens / seconds:>8.2f} tok/s  cpu {cpu:>7.1f} s "
                  f"({tokens / seconds / ref_tps:.2f}x wall, {ref_cpu / cpu * tokens / ref_tokens:.2f}x cpu; "
                  f"{same}/{len(prompts)} identical to batch 1)")
            if sort and tokens / seconds > best[0]:
                best = (tokens / seconds, label, ref_cpu / cpu * tokens / ref_tokens)
    print(f"ratio ours/released tokens per second: {best[0] / ref_tps:.2f}x wall, {best[2]:.2f}x cpu time ({best[1]})")


if __name__ == "__main__":
    sys.exit(main())
