r"""Aligner inference throughput against the machine's roofline: the released way (batch 1, one
``generate`` per row) and ours on the same rows, model and machine, side by side in one run.

    python benchmarks/bench_aligner_inference.py --threads 1                 # 16x64 and 32x256 (long)
    python benchmarks/bench_aligner_inference.py --workloads 16x64 --threads 1
    python benchmarks/bench_aligner_inference.py --quick                     # 4 rows x 16 tokens (smoke)
    python benchmarks/bench_aligner_inference.py --device cuda --workloads 64x128   # on a GPU (its roofline)
    python benchmarks/bench_aligner_inference.py --workloads 8x64 --aligner metaaligner/data/demo_aligner \
        --prompt_lookup 10                                                    # n-gram speculation, trained aligner

``--device`` (default: cuda when a GPU is visible, else cpu) is where the model runs. On a GPU the
model is bf16 (the hf backend's rule) and the roofline is the card's datasheet peak, bf16 FLOP/s and HBM
bandwidth (``benchmarks/devices.py``; an unknown card gets no roofline); the lines on where the time
went are CPU-only. On the CPU, first the roofline: this process's own fp32 matmul GFLOP/s (1024^3,
the faster of MKL's sgemm and oneDNN's inner product on packed weights) and memory-copy GB/s. Then per
workload (ROWSxNEW: HH-RLHF Claude-3 rows, hh-rlhf template, 3 objectives, NEW new tokens, greedy,
float32) one line per method: generated tokens (up to EOS), wall seconds, tokens/s, the ratio to
the released way, the share of the roofline bound reached, and how many rows give the batch-1 text.
The bound of a workload is prefill of all prompt tokens at the matmul peak plus, per decode step,
max((weights + the live rows' KV cache at their real, unpadded lengths) / copy bandwidth, live rows
x 2 x params / matmul peak), with the rows' real generated lengths (KV bytes per token from the model
config); the weights-only bound of earlier versions is printed next to it, and so is the bound of the
released way (each row decoded alone: weights read once per row and step), whose ratio to ours is
what this machine allows batching to gain on the workload. That bound is for one token per row and
step; a step that checks draft tokens (the fast engine's prompt lookup) can pass it, so the last
line also prints the compute floor: every prompt and generated token through the model once at the
matmul peak (the start a batch's prompts share once), which the fast engine cannot pass.
Each fast method's line is followed by where its time went (prefill and decode, each against its
linears alone at the rate this model's shapes reach here) and by its engine floor: the work it ran
(``HFGenerator.stats``) at this machine's rates (those linears, the prefill's attention FLOPs at the
matmul peak, the decode's KV reads at the copy bandwidth), the ratio to the first method that would
leave (and for the linears alone: what the engine's work allows if nothing else took any time), and
the rest of its time (small ops, copies, Python), which no roofline term covers.
Methods: ``released`` (batch 1, one generate per row), ``generate`` (our previous path: padded,
length-sorted ``generate`` batches), ``fast`` (the hf backend's default engine: the template's
shared start prefilled once, each row's rest unpadded, rows decoded together over a pre-allocated
cache, prefill and decode linears on oneDNN-packed weights (q/k/v and gate/up projections as one
product each), decode attention in length groups, up to 8 draft tokens a step from prompt lookup,
checked by the greedy predictions), ``fast_noprefix`` (the same without the shared prefix),
``fast_nopack`` (the same with MKL on the unpacked weights), ``fast_nomerge`` (the same with every
packed linear its own product), ``fast_nogroup`` (the same with one padded attention call per
layer), ``fast_nospec`` (the same
without draft tokens: one token per row and step), ``fast_cold`` (the same with the model's kept
KV memory let go first, so that every KV buffer is on new memory, as in the first batch of a run;
the other fast methods reuse what the fast methods before them kept, as every later batch of a run
does, and each prints how many GB of new memory its KV buffers took),
``fast_bf16`` (the fast engine on the model loaded in bfloat16, as ``--dtype bfloat16`` does: the
lower-precision mode, which changes the text; its "identical" count is its agreement with the
float32 batch-1 text, and the roofline bound stays the float32 one). On a shared machine wall time
also measures the neighbours: compare methods of one run, read the load average printed at the
end, and the CPU seconds of this process per method (with --threads 1 they measure the work, not
the waiting). With ``--repeat N`` the methods run in N rounds, every method once a round in the
order given (so a machine's drift over a long run meets every method alike; the released loop alone
moved from 273 to 360 s within an hour on one shared machine): a method's line shows the median
wall and CPU seconds, each run's wall seconds, each round's ratio to the first method's run of the
same round, the fewest rows identical in any run, and the first run's new KV memory.
The last line is the ratio fast / released of the first workload.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from metaaligner.cli import check

REPO = Path(__file__).resolve().parent.parent


@dataclass
class BenchConfig:
    data: str = field(default=str(REPO / "samples/HH-RLHF_model_output/Claude-3.csv.gz"),
                      metadata={"help": "policy-output table (query, answer)"})
    workloads: str = field(default="16x64,32x256", metadata={"help": "comma-separated ROWSxNEW_TOKENS workloads"})
    batch_size: int = field(default=32, metadata={**check(ge=1), "help": "rows per batch for the batched methods"})
    methods: str = field(default="released,generate,fast",
                         metadata={"help": "methods to time: released, generate, fast_noprefix, "
                                           "fast_nopack, fast_nomerge, fast_nogroup, fast_nospec, fast_cold, fast, "
                                           "fast_bf16"})
    model: str | None = field(default=None, metadata={"help": "model (default: the embedded SmolLM2-135M)"})
    aligner: str | None = field(default=None, metadata={"help": "a LoRA aligner folder (merged into the base at "
                                                                "load), e.g. metaaligner/data/demo_aligner"})
    prompt_lookup: int = field(default=0, metadata={**check(ge=0),
                                                    "help": "also time the released way with prompt-lookup (n-gram) "
                                                            "speculation of N tokens (0: skip)"})
    threads: int = field(default=0, metadata={**check(ge=0),
                                              "help": "torch CPU threads (0: torch's default; 1 is steadier on a busy "
                                                      "shared CPU)"})
    repeat: int = field(default=1, metadata={**check(ge=1),
                                             "help": "rounds, each running every method once in order; a line shows "
                                                     "the median time, each run's and each round's ratio to the "
                                                     "first method (a shared machine's neighbours come and go)"})
    quick: bool = field(default=False, metadata={"help": "one 4x16 workload (a smoke run for run_all.py)"})
    device: str | None = field(default=None, metadata={"help": "cpu | cuda | cuda:N (default: cuda when a GPU is "
                                                               "visible, else cpu)"})


def make_parser() -> argparse.ArgumentParser:
    from metaaligner import cli
    parser = cli.plain_parser(__doc__)
    for f in fields(BenchConfig):
        if f.type in (bool, "bool"):
            parser.add_argument(f"--{f.name}", action="store_true", help=f.metadata["help"])
        else:
            kind = int if f.type in (int, "int") else str
            parser.add_argument(f"--{f.name}", type=kind, default=f.default, help=f.metadata["help"])
    return parser


def roofline() -> tuple[float, float, float]:
    """(fp32 matmul GFLOP/s, memory-copy GB/s, MKL's matmul GFLOP/s) measured now, in this process.
    The matmul peak is the faster of MKL's sgemm (``a @ b``) and oneDNN's inner product on packed
    weights (what the fast engine runs): on an AMD CPU MKL runs a generic path at half oneDNN's."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    mkl = _gflops(lambda: a @ b)
    onednn = mkl
    if torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(b, None)
        onednn = _gflops(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    src = torch.ones(64 * 2 ** 20)  # 256 MB, well past the caches
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    gbs = 5 * 2 * src.numel() * 4 / (time.perf_counter() - start) / 1e9  # read + write
    return max(mkl, onednn), gbs, mkl


def _gflops(matmul, n: int = 10) -> float:
    """GFLOP/s of a 1024^3 product."""
    for _ in range(3):
        matmul()
    start = time.perf_counter()
    for _ in range(n):
        matmul()
    return n * 2 * 1024 ** 3 / (time.perf_counter() - start) / 1e9


def _text_config_and_head_dim(model):
    text = model.config.get_text_config()
    return text, getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def kv_bytes_per_token(model) -> int:
    """Bytes of K and V one token adds to the cache, over all layers."""
    text, head_dim = _text_config_and_head_dim(model)
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * next(model.parameters()).element_size()


def matmul_params(model) -> tuple[int, int]:
    """(weights of the decoder layers, lm_head weights): what sets the FLOPs of one token (2 per
    weight; the norms' few weights count too); the input embedding is a lookup."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    params = sum(p.numel() for p in model.parameters())
    tied = head.data_ptr() == embed.data_ptr()
    return params - embed.numel() - (0 if tied else head.numel()), head.numel()


def bound_seconds(prompt_lengths: list[int], new_lengths: list[int], params: int, gflops: float, gbs: float,
                  kv_per_token: int = 0, weight_bytes: int = 4) -> float:
    """Roofline time of all rows decoded together: prefill at the matmul peak, then each decode step
    bound by reading the weights once (``weight_bytes`` per weight: 4 fp32, 2 bf16) plus the live rows'
    KV cache (``kv_per_token`` bytes per cached token, real lengths; 0: weights only), or by the live
    rows' matmuls, whichever is slower."""
    flops_per_token = 2 * params
    total = sum(prompt_lengths) * flops_per_token / (gflops * 1e9)
    for step in range(1, max(new_lengths, default=0)):
        live = [p for p, n in zip(prompt_lengths, new_lengths) if n > step]
        kv = kv_per_token * sum(p + step for p in live)
        total += max((params * weight_bytes + kv) / (gbs * 1e9), len(live) * flops_per_token / (gflops * 1e9))
    return total


def released_bound_seconds(prompt_lengths: list[int], new_lengths: list[int], params: int, gflops: float,
                           gbs: float, kv_per_token: int, weight_bytes: int = 4) -> float:
    """Roofline time of the released way: each row alone, so every decode step reads all weights."""
    return sum(bound_seconds([p], [n], params, gflops, gbs, kv_per_token, weight_bytes)
               for p, n in zip(prompt_lengths, new_lengths))


def floor_seconds(prompts: list[list[int]], new_lengths: list[int], body: int, head: int, gflops: float,
                  batch_size: int) -> float:
    """Compute floor: every prompt and generated token through the model once at the matmul peak
    (2 FLOPs per decoder weight, the lm_head only for generated tokens), except that the start the
    prompts of a batch share (the template's instruction) counts once per batch, as the fast engine
    prefills it (batches of ``batch_size`` in length order, the hf backend's)."""
    from metaaligner.generation.fast_greedy import shared_prefix_length

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    tokens = sum(len(p) for p in prompts)
    for begin in range(0, len(order), batch_size):
        batch = [prompts[i] for i in order[begin:begin + batch_size]]
        tokens -= (len(batch) - 1) * shared_prefix_length(batch)
    return 2 * (tokens * body + sum(new_lengths) * (body + head)) / (gflops * 1e9)


def released_loop(model, tokenizer, prompts: list[str], max_new_tokens: int, prompt_lookup: int = 0):
    """What the released script does with --batch_size 1: one generate call per row."""
    import torch

    texts, tokens = [], []
    stop = {tokenizer.pad_token_id, tokenizer.eos_token_id} - {None}
    extra = {"prompt_lookup_num_tokens": prompt_lookup} if prompt_lookup else {}
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id, **extra)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        tokens.append(next((i for i, t in enumerate(new) if t in stop), len(new)))
        texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return texts, tokens


BENCH_DEVICE = ["cpu"]  # set by main from --device


@functools.cache
def bf16_model(name: str | None):
    """The model loaded as ``--dtype bfloat16`` would (once; loading is not timed)."""
    from metaaligner.models import load_causal_lm

    return load_causal_lm(name, device=BENCH_DEVICE[0], dtype="bfloat16")[0]


def run_method(name: str, model, tokenizer, prompts: list[str], new: int, config: BenchConfig):
    """(texts, generated tokens per row, wall seconds, CPU seconds of this process, GB of new
    memory the KV buffers took, the fast engine's ``stats``: where its time went; {} for others)
    of one method."""
    from metaaligner.generation import GenerationParams, kv_pool
    from metaaligner.generation.hf import HFGenerator

    if name == "fast_bf16":
        model = bf16_model(config.aligner or config.model)
    if name == "fast_cold":
        kv_pool.release(model)  # as the first batch of a run: every KV buffer on new memory
    fresh = kv_pool.pool_for(model).fresh_bytes
    start, cpu = time.perf_counter(), time.process_time()
    work = {}
    if name in ("released", "prompt_lookup"):
        texts, tokens = released_loop(model, tokenizer, prompts, new,
                                      config.prompt_lookup if name != "released" else 0)
    else:
        gen = HFGenerator(model_obj=model, tokenizer=tokenizer, engine="generate" if name == "generate" else "fast",
                          share_prefix=name != "fast_noprefix", pack_weights=name != "fast_nopack",
                          group_attention=name != "fast_nogroup", merge_linears=name != "fast_nomerge",
                          ngram_speculation=0 if name == "fast_nospec" else None)
        texts = gen.generate(prompts, GenerationParams(max_new_tokens=new, batch_size=config.batch_size))
        tokens = [gen.stats["generated_tokens"]]
        work = gen.stats
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return texts, tokens, seconds, cpu, (kv_pool.pool_for(model).fresh_bytes - fresh) / 1e9, work


LABELS = {"released": "released: batch 1, one generate per row", "prompt_lookup": "released + prompt lookup (batch 1)",
          "generate": "ours: batch {b}, padded generate", "fast": "ours: batch {b}, fast engine",
          "fast_noprefix": "ours: batch {b}, fast, no shared prefix",
          "fast_nopack": "ours: batch {b}, fast, MKL (unpacked) weights",
          "fast_nogroup": "ours: batch {b}, fast, one padded attention",
          "fast_nomerge": "ours: batch {b}, fast, q/k/v, gate/up apart",
          "fast_nospec": "ours: batch {b}, fast, no draft tokens",
          "fast_cold": "ours: batch {b}, fast, KV on new memory",
          "fast_bf16": "ours: batch {b}, fast, bfloat16 (changes text)"}


def run_rounds(methods: list[str], rounds: int, run) -> list[list[tuple]]:
    """Each method's ``run(name)`` results, made round by round (every method once a round, in
    order): a shared machine's drift over a long benchmark then meets every method alike. With
    more than one round, each run's time goes to stderr as it ends."""
    results = [[] for _ in methods]
    for done in range(1, rounds + 1):
        for runs, name in zip(results, methods):
            runs.append(run(name))
            if rounds > 1:
                print(f"  round {done}/{rounds}: {name} {runs[-1][2]:.1f} s", file=sys.stderr, flush=True)
    return results


def round_ratios(runs: list[tuple], first: list[tuple]) -> str:
    """Each round's tokens/s ratio to the first method's run of that round (more than one round)."""
    if len(runs) < 2:
        return ""
    ratios = (sum(r[1]) / r[2] / (sum(f[1]) / f[2]) for r, f in zip(runs, first))
    return f", round ratios {'/'.join(f'{x:.2f}' for x in ratios)}x"


def summarise(runs: list[tuple]) -> tuple[float, float, str]:
    """(median wall seconds, median CPU seconds, each run's wall seconds when more than one) of
    ``run_method`` results."""
    import statistics

    walls = [r[2] for r in runs]
    spread = f", runs {'/'.join(f'{w:.1f}' for w in walls)} s" if len(runs) > 1 else ""
    return statistics.median(walls), statistics.median(r[3] for r in runs), spread


def kv_note(name: str, fresh_gb: float) -> str:
    """How much new memory the fast engine's KV buffers took (the rest was kept from before)."""
    return f", KV buffers {fresh_gb:.2f} GB new" if name.startswith("fast") else ""


@functools.cache
def linear_gflops(model, rows: int) -> float:
    """GFLOP/s of the model's own linears (all layers in order, then the lm_head) on ``rows`` rows,
    on the weights and kernels the fast engine uses for that many rows (``packed_linears``), best
    of 3: the rate this machine gives at this model's shapes, below the square product's peak.
    Measured once per model and row count in a run, so that methods with the same phase shapes
    are priced at the same rate (on a shared machine two measurements minutes apart differed by
    a quarter)."""
    import torch

    from metaaligner.generation.packed_linear import _linears, packed_linears

    linears = _linears(model)
    inputs = {n: torch.randn(rows, n) for n in {m.in_features for m in linears}}
    flops = sum(2 * rows * m.in_features * m.out_features for m in linears)
    best = float("inf")
    with torch.inference_mode(), packed_linears(model):
        for _ in range(4):  # the first packs and warms up
            start = time.perf_counter()
            for m in linears:
                m(inputs[m.in_features])
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def attention_flops_per_pair(model) -> int:
    """FLOPs of one query-key pair over all layers and query heads: q.k and p.v, 2 per dim each."""
    text, head_dim = _text_config_and_head_dim(model)
    return 4 * text.num_hidden_layers * text.num_attention_heads * head_dim


def time_split(work: dict, generated: int, model, rows: int, roof: tuple[float, float],
               ref_tps: float) -> str:
    """A fast method's time in prefill and decode, each against its linears alone at the rate the
    model's own shapes reach here (``linear_gflops``), then the engine floor: the work it ran at this
    machine's rates (those linears, the prefill's attention FLOPs at the matmul peak, the decode's
    KV reads at the copy bandwidth) and the ratio to the first method that leaves, and that ratio
    for the linears alone (what the engine's work allows with nothing else taking any time); the
    rest of its time is what is not bound by the machine (small ops, copies, Python)."""
    body, head = matmul_params(model)
    steps, token_rows = work["decode_steps"], work["decode_token_rows"]
    pre_rows = max(round(work["prefill_tokens"] / max(rows, 1)), 1)
    pre_rate = linear_gflops(model, pre_rows)
    pre_linears = 2 * (work["prefill_tokens"] * body + rows * head) / pre_rate / 1e9
    step_rows = max(round(token_rows / max(steps, 1)), 1)
    step_rate = linear_gflops(model, step_rows) if steps else 0.0
    dec_linears = 2 * token_rows * (body + head) / step_rate / 1e9 if steps else 0.0
    pre_attention = work["prefill_attention_pairs"] * attention_flops_per_pair(model) / roof[0] / 1e9
    kv_gb = work["decode_kv_slots"] * kv_bytes_per_token(model) / 1e9
    linears = pre_linears + dec_linears
    floor = linears + pre_attention + kv_gb / roof[1]
    spent = work["prefill_seconds"] + work["decode_seconds"]
    return (f"    prefill {work['prefill_seconds']:.1f} s for {work['prefill_tokens']} tokens (its linears alone "
            f"at {pre_rate:.0f} GFLOP/s, the model's rate at {pre_rows} rows here: {pre_linears:.1f} s); "
            f"decode {work['decode_seconds']:.1f} s in {steps} steps that ran {token_rows} token-rows "
            f"({_token_rows_note(work.get('decode_pads_skipped', 0))}) for {generated} generated tokens "
            f"(linears alone at "
            f"{step_rate:.0f} GFLOP/s, the rate at {step_rows} rows: {dec_linears:.1f} s)\n"
            f"    engine floor {floor:.1f} s = {generated / floor / ref_tps:.2f}x the first method (its linears "
            f"alone: {linears:.1f} s = {generated / linears / ref_tps:.2f}x): that work at this "
            f"machine's rates (the linears above, the prefill's attention at the matmul peak: "
            f"{pre_attention:.1f} s, the decode's {kv_gb:.1f} GB of KV reads at the copy bandwidth: "
            f"{kv_gb / roof[1]:.1f} s); the other {spent - floor:.1f} s ({(spent - floor) / spent:.0%}) is small ops, "
            f"copies and Python")


def _token_rows_note(pads: int) -> str:
    # pads that fill a step's width run attention and small ops; on packed weights not the linears
    return f"next tokens and draft tokens; {pads} pads skipped there" if pads else "next tokens, draft tokens, pads"


def run_workload(spec: str, model, tokenizer, config: BenchConfig, roof: tuple[float, float] | None,
                 params: int, kv_per_token: int) -> float | None:
    """One workload's lines; ``roof`` None (a GPU not in the table): no roofline share, bound or floor."""
    from metaaligner.aligner.inference import build_prompts, load_policy_rows
    from metaaligner.registry.objectives import ObjectiveRegistry

    n_rows, new = (int(x) for x in spec.lower().split("x"))
    rows = load_policy_rows(config.data, limit=n_rows)
    descriptions = ObjectiveRegistry.builtin().descriptions("harmlessness,helpfulness,humour", "hh-rlhf")
    prompts = build_prompts("hh-rlhf", [r["query"] for r in rows], [r["answer"] for r in rows], descriptions)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    weight_bytes = next(model.parameters()).element_size()
    lengths = [len(i) for i in ids]
    print(f"\nworkload {len(prompts)}x{new}: prompt tokens min/mean/max {min(lengths)}/"
          f"{sum(lengths) / len(lengths):.0f}/{max(lengths)} (total {sum(lengths)})", flush=True)
    methods = [m.strip() for m in config.methods.split(",") if m.strip()]
    if config.prompt_lookup:
        methods.append("prompt_lookup")
    results = run_rounds(methods, max(config.repeat, 1),
                         lambda name: run_method(name, model, tokenizer, prompts, new, config))
    reference, ref_tps, ref_cpu, ratio = None, None, None, None
    for name, runs in zip(methods, results):
        texts, tokens, _, _, fresh, work = runs[0]
        seconds, cpu, spread = summarise(runs)
        spread += round_ratios(runs, results[0]) if runs is not results[0] else ""
        if reference is None:  # the first method (released by default) is the reference text
            reference, per_row = texts, tokens
            # the bound needs each row's generated length, which only the batch-1 loop reports
            per_row_known = len(per_row) == len(prompts)
            new_lengths = [t + 1 for t in per_row]  # the stop token is generated too
            bound = bound_seconds(lengths, new_lengths, params, *roof, kv_per_token, weight_bytes) \
                if per_row_known and roof else None
            versus = "batch 1" if name in ("released", "prompt_lookup") else name
        tps = sum(tokens) / seconds
        ref_tps, ref_cpu = ref_tps or tps, ref_cpu or cpu
        same = min(sum(a == b for a, b in zip(r[0], reference)) for r in runs)  # the worst run's
        label = LABELS[name].format(b=config.batch_size)
        share = f"{bound / seconds:.0%}" if bound else "--"
        print(f"{label:<44} {sum(tokens):>6} tok {seconds:>8.1f} s {tps:>8.2f} tok/s  {tps / ref_tps:>5.2f}x  "
              f"{share:>4} of roofline  {same}/{len(prompts)} identical to {versus}  "
              f"(cpu {cpu:.1f} s, {ref_cpu / cpu:.2f}x{kv_note(name, fresh)}{spread})", flush=True)
        if name == "fast":
            ratio = tps / ref_tps
        # rates are the CPU's fp32 ones
        if work.get("decode_steps") is not None and name != "fast_bf16" and str(model.device) == "cpu":
            print(time_split(work, sum(tokens), model, len(prompts), roof, ref_tps), flush=True)
    if roof is None:
        print("roofline bound: not computed, the device's peak is unknown (benchmarks/devices.py)", flush=True)
        return ratio
    if bound is None:
        print("roofline bound: needs each row's generated length; put released first in --methods", flush=True)
        return ratio
    old_bound = bound_seconds(lengths, new_lengths, params, *roof, weight_bytes=weight_bytes)
    released_bound = released_bound_seconds(lengths, new_lengths, params, *roof, kv_per_token, weight_bytes)
    print(f"roofline bound {bound:.1f} s (weights + KV reads; weights only: {old_bound:.1f} s) = "
          f"{sum(per_row) / bound:.1f} tok/s = {sum(per_row) / bound / ref_tps:.2f}x the first method; "
          f"released way's bound {released_bound:.1f} s, so this machine allows batching "
          f"{released_bound / bound:.2f}x on this workload", flush=True)
    floor = floor_seconds(ids, new_lengths, *matmul_params(model), roof[0], config.batch_size)
    print(f"compute floor {floor:.1f} s (every prompt and generated token once at the matmul peak, a batch's "
          f"shared start once) = "
          f"{sum(per_row) / floor / ref_tps:.2f}x the first method", flush=True)
    return ratio


def main(config: BenchConfig) -> None:
    import torch

    from metaaligner.models import load_causal_lm

    if config.threads:
        torch.set_num_threads(config.threads)
    workloads = "4x16" if config.quick else config.workloads
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from devices import check_device, describe, gpu_name, gpu_roofline

    BENCH_DEVICE[0] = check_device(config.device)
    model, tokenizer, device = load_causal_lm(config.aligner or config.model, device=BENCH_DEVICE[0])
    params = sum(p.numel() for p in model.parameters())
    kv_per_token = kv_bytes_per_token(model)
    weight_bytes = next(model.parameters()).element_size()
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    print(describe(str(device)), flush=True)
    if str(device) == "cpu":
        peak, gbs, mkl = roofline()
        roof = (peak, gbs)
        where = f"fp32 matmul {roof[0]:.0f} GFLOP/s (1024^3, the faster of MKL's {mkl:.0f} and oneDNN's), " \
                f"memory copy {roof[1]:.1f} GB/s"
    else:
        known = gpu_roofline(gpu_name(str(device)))
        roof = known[1:] if known else None
        where = f"{known[0]}'s bf16 {roof[0] / 1e3:.0f} TFLOP/s, HBM {roof[1]:.0f} GB/s" if known else "unknown"
    step = f"{params * weight_bytes / roof[1] / 1e6:.2f} ms" if roof else "? ms"
    print(f"roofline: {where}; "
          f"model {params / 1e6:.0f}M params = {params * weight_bytes / 1e6:.0f} MB {dtype} -> batch-1 decode step "
          f">= {step}; KV cache {kv_per_token / 1e3:.0f} KB per token; "
          f"torch threads {torch.get_num_threads()}, {device}", flush=True)
    released_loop(model, tokenizer, ["warm up"], 2)
    ratios = [run_workload(w, model, tokenizer, config, roof, params, kv_per_token) for w in workloads.split(",")]
    print("\nload average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    first = ratios[0]
    print(f"ratio ours/released tokens per second: {first:.2f}x wall (fast engine, {workloads.split(',')[0]})"
          if first else "ratio ours/released: fast engine not run")


if __name__ == "__main__":
    sys.exit(main(BenchConfig(**vars(make_parser().parse_args()))))
