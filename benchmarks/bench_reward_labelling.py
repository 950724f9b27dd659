r"""Reward labelling throughput: the released way (one sequence per forward pass, batch 1, full
logits) against ours (length-sorted batches; for the LLM scorer, each pair's 2 x R questions packed
into one prefix-shared tree), same run, same rows, same model. Prints rows/s and the ratio last.

    python benchmarks/bench_reward_labelling.py --quick            # 2 pairs, embedded SmolLM2 LLM scorer
    python benchmarks/bench_reward_labelling.py --rows 8 --batch_size 8
    python benchmarks/bench_reward_labelling.py --classifier PATH   # a sequence-classifier reward model instead
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "hh-rlhf-harmless-base" / "harmless-base-test.jsonl.gz"


def main() -> None:
    from metaaligner import cli
    parser = cli.plain_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="2 pairs")
    parser.add_argument("--rows", type=int, default=8, help="preference pairs to score")
    parser.add_argument("--batch_size", type=int, default=8, help="pairs scored per forward pass by our way")
    parser.add_argument("--model", default=None, help="causal LM for the LLM scorer (default: embedded SmolLM2)")
    parser.add_argument("--reward_names", default="harmless,helpful,humor",
                        help="comma-separated reward scorers (the REWARDS registry)")
    parser.add_argument("--classifier", default=None, help="benchmark this sequence classifier (pair input) instead")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when a GPU is visible, "
                                                       "else cpu)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from devices import check_device, describe

    args.device = check_device(args.device)
    n = 2 if args.quick else args.rows

    import torch

    from metaaligner.dataset.rewards import (
        LLMScorer,
        RewardSpec,
        build_scorers,
        load_preference_rows,
        resolve_rewards,
        score_sequences,
    )

    rows = [r for r in load_preference_rows(SAMPLE, limit=4 * n + 8) if r.status == "ok"][:n]
    if args.classifier:
        specs = [RewardSpec(name, "pair", args.classifier) for name in args.reward_names.split(",")]
    else:
        specs = resolve_rewards(args.reward_names.split(","), scorer="llm", model=args.model)
    scorers = build_scorers(specs, device=args.device)
    n_seq = 2 * len(rows) * len(scorers)
    print(f"{len(rows)} pairs x {len(scorers)} rewards x 2 responses = {n_seq} scores; model "
          f"{scorers[0].model_name}; {describe(args.device)}; torch threads {torch.get_num_threads()}")

    def naive() -> list[float]:
        # As released: for each reward, for each row, one forward pass on one sequence, full logits.
        out = []
        for scorer in scorers:
            for r in rows:
                for response in (r.chosen_response, r.rejected_response):
                    ids = torch.tensor([scorer.encode(r.prompt, response)])
                    model = scorer.judge.model if isinstance(scorer, LLMScorer) else scorer.model
                    with torch.inference_mode():
                        logits = model(input_ids=ids.to(model.device)).logits[0, -1].float()
                    if isinstance(scorer, LLMScorer):
                        out.append((logits[scorer.judge.yes_id] - logits[scorer.judge.no_id]).item())
                    else:
                        out.append(logits[0].item())
        return out

    def ours() -> list[float]:
        if isinstance(scorers[0], LLMScorer):
            judge = scorers[0].judge
            per_pair = judge.score_pairs([(r.prompt, r.chosen_response, r.rejected_response) for r in rows],
                                         [s.description for s in scorers], args.batch_size)
            return [v for k in range(len(scorers)) for c, rj in per_pair for v in (c[k], rj[k])]
        out = []
        for scorer in scorers:
            seqs = [scorer.encode(r.prompt, resp) for r in rows for resp in (r.chosen_response, r.rejected_response)]
            out += score_sequences(scorer, seqs, args.batch_size)
        return out

    # Warm-up (first-call costs, and the packing self-check) on one pair, excluded from timing.
    saved = rows
    rows = rows[:1]
    ours()
    naive()
    rows = saved

    t0 = time.perf_counter()
    base = naive()
    t_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = ours()
    t_ours = time.perf_counter() - t0
    diff = max(abs(a - b) for a, b in zip(base, fast))
    print(f"{'method':<52}{'seconds':>10}{'rows/s':>10}")
    print(f"{'released: batch 1, one sequence per pass':<52}{t_naive:>10.1f}{len(rows) / t_naive:>10.3f}")
    label = "ours: batched, length-sorted" + (", prefix-shared" if isinstance(scorers[0], LLMScorer) else "")
    print(f"{label + f' (bs {args.batch_size})':<52}{t_ours:>10.1f}{len(rows) / t_ours:>10.3f}")
    print(f"max |score difference| between the two: {diff:.2e}")
    print(f"ratio ours/released rows/s: {t_naive / t_ours:.2f}x")


if __name__ == "__main__":
    main()
