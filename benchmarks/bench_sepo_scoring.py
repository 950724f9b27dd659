"""Benchmark: SePO token scoring, batched length-sorted forward passes vs one sequence at a time.

Both modes score the same HH-RLHF pairs (oracle + reference forward per sequence) with the same
code path (``metaaligner.methods.sepo.token_rewards``), only the batch size differs; rewards must agree.
The oracle is the embedded SmolLM2-135M with perturbed weights, the reference the embedded model;
the pairs are the first N HH-RLHF harmless-base pairs whose prompt fits ``--max_length``.

    python benchmarks/bench_sepo_scoring.py --quick          # 8 pairs, max_length 128
    python benchmarks/bench_sepo_scoring.py --pairs 64 --batch_size 16 --max_length 512
    python benchmarks/bench_sepo_scoring.py --device cuda   # on a GPU (default when one is visible)

Prints tokens/s (prompt + response tokens through both models) per mode; the last line is the ratio.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "samples" / "hh-rlhf-harmless-base" / "harmless-base-test.jsonl.gz"


def main(argv: list[str] | None = None) -> None:
    from metaaligner import cli
    parser = cli.plain_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="8 pairs, max_length 128")
    parser.add_argument("--pairs", type=int, default=64, help="preference pairs to score")
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per batch in the batched mode")
    parser.add_argument("--max_length", type=int, default=512, help="max prompt + response tokens")
    parser.add_argument("--model", default="embedded", help="model for oracle and reference")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when a GPU is visible, "
                                                       "else cpu)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from devices import check_device, describe

    args.device = check_device(args.device)
    if args.quick:
        args.pairs, args.max_length = 8, 128

    import torch

    from metaaligner.io import read_records
    from metaaligner.methods.sepo import pairs_from_records, prepare_rows, token_rewards
    from metaaligner.models import load_causal_lm

    if args.threads:
        torch.set_num_threads(args.threads)
    reference, tokenizer, device = load_causal_lm(args.model, device=args.device)
    oracle, _, _ = load_causal_lm(args.model, device=args.device)
    print(describe(str(device)))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in oracle.parameters():
            p.add_(torch.randn(p.shape, generator=generator).to(p.device, p.dtype) * 1e-3)

    pairs, _ = pairs_from_records(read_records(DATA)[:args.pairs * 20])
    items = [it for it in prepare_rows(pairs, tokenizer, args.max_length, add_eos=True)
             if "skip_reason" not in it][:args.pairs]  # the first N pairs whose prompt fits max_length
    seqs = [s for it in items for s in ((it["prompt_ids"], it["chosen_ids"]), (it["prompt_ids"], it["rejected_ids"]))]
    tokens = sum(len(p) + len(r) for p, r in seqs)
    lengths = sorted(len(p) + len(r) for p, r in seqs)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {len(items)} pairs, {len(seqs)} sequences, "
          f"{tokens} tokens (length min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]})")
    pad = tokenizer.pad_token_id

    token_rewards(oracle, reference, seqs[:2], pad, device, batch_size=2)  # warm-up
    results = {}
    for name, batch_size in (("one sequence at a time", 1),
                             (f"batched (length-sorted, {args.batch_size})", args.batch_size)):
        start = time.perf_counter()
        rewards = token_rewards(oracle, reference, seqs, pad, device, batch_size=batch_size)
        elapsed = time.perf_counter() - start
        results[batch_size] = (rewards, tokens / elapsed)
        print(f"{name:>36}: {elapsed:7.2f} s  {tokens / elapsed:9.1f} tokens/s")
    single, batched = results[1][0], results[args.batch_size][0]
    diff = max(abs(a - b) for x, y in zip(single, batched) for a, b in zip(x, y))
    print(f"max |reward batched - reward single| = {diff:.2e}")
    print(f"ratio batched/single tokens/s: {results[args.batch_size][1] / results[1][1]:.2f}x")


if __name__ == "__main__":
    main()
