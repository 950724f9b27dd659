r"""``metaaligner serve`` under load: N concurrent clients (real HTTP, the ``openai`` client) against the proxy
with the in-process aligner and a local scripted policy, once per ``--max_batch_size`` in the same run.

    python benchmarks/bench_serve.py                                    # 16 clients x 2 requests, 32 new tokens
    python benchmarks/bench_serve.py --clients 16 --requests_per_client 4 --max_new_tokens 64
    python benchmarks/bench_serve.py --aligner_path metaaligner/data/demo_aligner --batch_sizes 16,4,1
    python benchmarks/bench_serve.py --quick                            # 8 clients x 1 request, 16 new tokens
    python benchmarks/bench_serve.py --device cuda                      # the aligner on a GPU

The policy is the project's scripted OpenAI-compatible server (``metaaligner.testing``) answering each
question with the shipped HH-RLHF sample's Claude-3 answer to it, at once, so the time measured is the
proxy's and its aligner's (its listen backlog is 128, not the stdlib's 5, so that 16 connections
opened at once are not stalled 1 s by the kernel's retry). Each client sends its
requests one after another (``objectives`` harmlessness,helpfulness); all clients start together
(each first opens its connection with one ``GET /v1/models`` and the proxy answers one chat request,
then they wait for one another). Per batch size, one line: requests, wall seconds, requests/s,
generated tokens/s (the aligner's own count, from ``/metrics``), p50 and p99 latency of one
request, the mean rows the aligner decoded together in a step (``metaaligner_aligner_step_rows``;
with ``--continuous false`` the mean batch, ``metaaligner_aligner_batch_size``), and the
check that every request was answered exactly once with its own policy answer as ``original``. The
last lines: the ratio of requests/s of the first batch size to the last, the load average before
and after, the CPU count and the torch threads (``--threads``, default 1: on a shared machine a
busy neighbour stalls every step of a multi-threaded decode). Each batch size starts a fresh proxy
(model load and warm-up not timed). With ``--offline`` (default) the same prompts also go through
the ``Aligner`` API in this process at the first and last batch size, no HTTP: the engine's own
ratio, which the proxy's is compared with; then the same rows with one new token each at the largest
batch size (the engine's prefill, compute-bound work every batch size repeats per row) and the ceiling
it puts on any batch ratio: the batch-1 seconds over the prefill seconds; and the compute bound: the
fewest seconds the largest batch's linears need at the matmul peak (measured before the runs on a
CPU; ``least_seconds``), and the ceiling that puts on any batch ratio, the batch-1 seconds over it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from metaaligner import cli  # noqa: E402


@dataclass
class BenchServeConfig:
    clients: int = field(default=16, metadata={**cli.check(ge=1), "help": "concurrent clients"})
    requests_per_client: int = field(default=2, metadata={
        **cli.check(ge=1), "help": "requests each client sends, one after another"})
    max_new_tokens: int = field(default=32, metadata={**cli.check(ge=1), "help": "the proxy's --max_new_tokens"})
    batch_sizes: str = field(default="16,1", metadata={
        "help": "--max_batch_size values to compare, in this order (the ratio is first/last)"})
    batch_wait_ms: float = field(default=20.0, metadata={
        **cli.check(ge=0.0), "help": "the proxy's --batch_wait_ms (its default; with --continuous false a first batch "
                                    "may start before all 16 client threads of this one process have sent, so 50 "
                                    "compares whole batches)"})
    continuous: bool = field(default=True, metadata={
        "help": "the proxy's --continuous: requests join a running batch between decoding steps (false: they "
                "wait for the next batch)"})
    threads: int = field(default=1, metadata={
        **cli.check(ge=1), "help": "the proxy's --threads (torch threads), also the offline engine's"})
    aligner_path: str = field(default="embedded", metadata={
        "help": "the proxy's --aligner_path (default: the embedded SmolLM2-135M-Instruct)"})
    samples: str = field(default="samples/HH-RLHF_model_output/Claude-3.csv.gz", metadata={
        "help": "questions and policy answers (query, generated_text)"})
    repeat: int = field(default=1, metadata={
        **cli.check(ge=1), "help": "rounds; each round runs every batch size once, in order, so a shared machine's "
                                  "drift meets them alike; the ratio is of the median requests/s"})
    quick: bool = field(default=False, metadata={
        "help": "a short run: 8 clients x 1 request, 16 new tokens, no offline engine timing"})
    device: str = field(default=None, metadata={
        "help": "the proxy's --device for its in-process aligner: cpu, cuda or cuda:N (default: cuda when visible)"})
    offline: bool = field(default=True, metadata={
        "help": "also time the same prompts through the engine directly (Aligner API, no HTTP), at the first and "
                "last batch size: what the proxy is compared with"})


def make_parser():
    return cli.make_parser(BenchServeConfig, description=__doc__)


def transcript_to_messages(query: str) -> list[dict]:
    """An HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as chat messages, the final empty
    assistant cue dropped (the proxy writes it back: its hh-rlhf query format)."""
    parts = re.split(r"\n\n(Human|Assistant):", query)
    messages = []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if text.strip() or role == "user":
            messages.append({"role": role, "content": text.strip()})
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    return messages


def load_rows(path: str, n: int) -> list[tuple[list[dict], str]]:
    """``n`` (messages, policy answer) pairs with distinct last user messages."""
    from metaaligner.io import read_table

    rows, seen = [], set()
    for row in read_table(REPO / path, required=["query", "generated_text"]):
        messages = transcript_to_messages(str(row["query"]))
        if not messages or messages[-1]["content"] in seen or not str(row["generated_text"]).strip():
            continue
        seen.add(messages[-1]["content"])
        rows.append((messages, str(row["generated_text"]).strip()))
        if len(rows) == n:
            return rows
    raise SystemExit(f"error: {path}: only {len(rows)} usable rows, {n} needed")


def metrics(url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=60) as response:
        text = response.read().decode()
    out = {}
    for name in ("metaaligner_aligner_generated_tokens_total", "metaaligner_aligner_batch_size_sum",
                 "metaaligner_aligner_batch_size_count", "metaaligner_aligner_step_rows_sum",
                 "metaaligner_aligner_step_rows_count"):
        match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        out[name] = float(match.group(1)) if match else 0.0
    return out


def start_proxy(config: BenchServeConfig, batch_size: int, policy_url: str, log: Path):
    from metaaligner.testing.waits import wait_for, wait_for_http

    out = log.with_suffix(".out")
    env = {k: v for k, v in os.environ.items() if k != "METAALIGNER_API_KEY"}
    with open(out, "w") as stdout, open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "metaaligner", "serve", "--port", "0",
                                    "--aligner_path", config.aligner_path, "--policy_base_url", policy_url,
                                    "--max_new_tokens", str(config.max_new_tokens),
                                    "--max_batch_size", str(batch_size), "--batch_wait_ms", str(config.batch_wait_ms),
                                    "--continuous", str(config.continuous).lower(),
                                    "--objectives", "harmlessness,helpfulness", "--threads", str(config.threads),
                                    "--device", config.device],
                                   stdout=stdout, stderr=stderr, env=env, cwd=REPO)
    found = {}

    def ready() -> bool:
        match = re.search(r"serving (http://\S+) ", out.read_text())
        found.update(url=match.group(1)) if match else None
        return bool(match)

    wait_for(ready, "the proxy's 'serving' line", process=process, log=log)
    wait_for_http(found["url"] + "/health", process=process, log=log)
    return process, found["url"]


def run_one(config: BenchServeConfig, batch_size: int, rows, policy, workdir: Path) -> dict:
    import openai

    from metaaligner.testing.waits import wait_for

    policy.reset_counts()
    process, url = start_proxy(config, batch_size, policy.base_url, workdir / f"proxy-{batch_size}.log")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
        # one request first, so the client's and the proxy's first-call set-up is not in the timed part
        client.chat.completions.create(model="claude-3", messages=rows[0][0],
                                       extra_body={"objectives": ["harmlessness"]})
        policy.reset_counts()
        before = metrics(url)

        began: dict[str, float] = {}
        barrier = threading.Barrier(config.clients, action=lambda: began.setdefault("t", time.perf_counter()))

        def one_client(c: int) -> list[tuple[int, float, str, str]]:
            client.models.list()  # each client's connection opened before the clock starts
            barrier.wait()
            done = []
            for r in range(config.requests_per_client):
                i = c * config.requests_per_client + r
                start = time.perf_counter()
                resp = client.chat.completions.create(model="claude-3", messages=rows[i][0],
                                                      extra_body={"objectives": ["harmlessness", "helpfulness"]})
                done.append((i, time.perf_counter() - start, resp.model_extra["metaaligner"]["original"],
                             resp.choices[0].message.content))
            return done

        with ThreadPoolExecutor(max_workers=config.clients) as pool:
            results = [x for part in pool.map(one_client, range(config.clients)) for x in part]
        wall = time.perf_counter() - began["t"]
        # answers go out as rows end; the engine call's own metrics come when it returns
        n = config.clients * config.requests_per_client
        wait_for(lambda: metrics(url)["metaaligner_aligner_batch_size_sum"]
                 - before["metaaligner_aligner_batch_size_sum"] >= n, "the aligner's last call to end",
                 process=process)
        after = metrics(url)
    finally:
        process.terminate()
        process.wait(timeout=120)
    n = config.clients * config.requests_per_client
    latencies = sorted(t for _, t, _, _ in results)
    answered_once = (sorted(i for i, *_ in results) == list(range(n)) and policy.request_count == n
                     and all(original == rows[i][1] for i, _, original, _ in results))
    batches = after["metaaligner_aligner_batch_size_count"] - before["metaaligner_aligner_batch_size_count"]
    rows_aligned = after["metaaligner_aligner_batch_size_sum"] - before["metaaligner_aligner_batch_size_sum"]
    tokens = after["metaaligner_aligner_generated_tokens_total"] - before["metaaligner_aligner_generated_tokens_total"]
    steps = after["metaaligner_aligner_step_rows_count"] - before["metaaligner_aligner_step_rows_count"]
    step_rows = after["metaaligner_aligner_step_rows_sum"] - before["metaaligner_aligner_step_rows_sum"]
    # continuous batching: one engine call may align every request, so rows a step is the batch size
    batch = f"mean rows a step {step_rows / steps:.1f}" if steps else \
        f"mean batch {rows_aligned / batches if batches else 0.0:.1f}"
    return {"batch_size": batch_size, "requests": n, "wall": wall, "rps": n / wall, "tps": tokens / wall,
            "tokens": tokens, "p50": latencies[len(latencies) // 2],
            "p99": latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))],
            "batch": batch, "answered_once": answered_once}


def linear_params(model) -> tuple[int, int]:
    """(weights of the decoder's linears, weights of the lm_head): the multiply-adds one token's
    forward runs through its linears, and one row of logits."""
    import torch

    head = model.get_output_embeddings()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    return body, head.weight.numel()


def least_seconds(body: int, head: int, prefill_tokens: int, generated: int, rows: int, gflops: float) -> float:
    """The fewest seconds any schedule needs for a run's linears at ``gflops``: every prompt token
    the engine must read (``prefill_tokens``, the batch's shared start once) and every generated
    token but each row's first (prefill gives it) go through the decoder's linears once, and each
    generated token needs one row of logits; 2 FLOP a weight. Attention and everything else are left
    out, so the true least time is longer."""
    forwards = prefill_tokens + max(generated - rows, 0)
    return 2 * (body * forwards + head * generated) / (gflops * 1e9)


def offline_rates(config: BenchServeConfig, rows, sizes: list[int]) -> dict:
    """Seconds to align the same rows (the same prompts the proxy builds) with the ``Aligner`` API in this
    process, ``batch_size`` rows per engine call, guard included, after a warm-up call. Also the work of
    the first size's run (``work``: the engine's prompt tokens read and tokens generated, the model's
    linear weights) and the prefill alone at the largest size (``prefill``)."""
    from dataclasses import replace

    import torch

    from metaaligner.aligner import Aligner
    from metaaligner.generation import GenerationParams
    from metaaligner.serve.conversation import to_query

    torch.set_num_threads(config.threads)
    aligner = Aligner(config.aligner_path, params=GenerationParams(max_new_tokens=config.max_new_tokens),
                      device=config.device)
    queries = [to_query(messages, "transcript") for messages, _ in rows]
    answers = [answer for _, answer in rows]
    aligner.align(queries[:1], answers[:1], ["harmlessness", "helpfulness"])  # load and warm up
    out = {}
    stats = aligner.generator.stats
    for size in sizes:
        aligner.params = replace(aligner.params, batch_size=size)
        before = dict(stats)
        start = time.perf_counter()
        aligner.align(queries, answers, ["harmlessness", "helpfulness"])
        out[size] = time.perf_counter() - start
        if size == sizes[0]:
            out["work"] = {key: stats.get(key, 0) - before.get(key, 0)
                           for key in ("prefill_tokens", "generated_tokens", "prompts")}
            out["work"]["params"] = linear_params(aligner.generator.model)
    # the engine's own prefill: every row's prompt read, one new token each, at the largest batch size
    aligner.params = replace(aligner.params, batch_size=max(sizes), max_new_tokens=1)
    start = time.perf_counter()
    aligner.align(queries, answers, ["harmlessness", "helpfulness"])
    out["prefill"] = time.perf_counter() - start
    return out


def peak_rates(config: BenchServeConfig) -> tuple[float | None, float | None]:
    """(matmul GFLOP/s, memory-copy GB/s) the compute bound uses: on a CPU measured now at
    ``--threads`` (before any timing, so the machine's state is the runs'); on a GPU the card's
    datasheet bf16 peak when it is in devices.py (the aligner runs float32 there unless told
    otherwise, so the bound is loose) and no copy rate."""
    import torch

    if config.device == "cpu":
        from bench_aligner_inference import roofline

        torch.set_num_threads(config.threads)
        gflops, gbs, _ = roofline()
        return gflops, gbs
    from devices import gpu_name, gpu_roofline

    known = gpu_roofline(gpu_name(config.device))
    return (known[1] if known else None), None


def main(config: BenchServeConfig) -> int:
    from metaaligner.testing.openai_server import ScriptedOpenAIServer, last_user_text

    cli.quiet_libraries()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from devices import check_device, describe

    config.device = check_device(config.device)
    if config.quick:
        config.clients, config.requests_per_client, config.max_new_tokens, config.offline = 8, 1, 16, False
    sizes = [int(s) for s in cli.split_csv(config.batch_sizes)]
    n = config.clients * config.requests_per_client
    rows = load_rows(config.samples, n)
    answers = {messages[-1]["content"]: answer for messages, answer in rows}
    load_before = os.getloadavg()
    gflops, gbs = peak_rates(config)
    print(f"{config.clients} clients x {config.requests_per_client} requests, {config.max_new_tokens} new tokens, "
          f"aligner {config.aligner_path}, --batch_wait_ms {config.batch_wait_ms:g}, --continuous "
          f"{str(config.continuous).lower()}; load average "
          + " ".join(f"{x:.2f}" for x in load_before), flush=True)
    results = []
    with ScriptedOpenAIServer(lambda req: answers[last_user_text(req)], models=["claude-3"], max_lifetime_s=7200,
                              keep_bodies=False) as policy, tempfile.TemporaryDirectory() as tmp:
        for round_ in range(config.repeat):
            for size in sizes:
                r = run_one(config, size, rows, policy, Path(tmp))
                results.append(r)
                head = f"round {round_ + 1}, " if config.repeat > 1 else ""
                print(f"{head}--max_batch_size {size:>3}: {r['requests']} requests in {r['wall']:.1f} s = "
                      f"{r['rps']:.2f} req/s, {r['tps']:.1f} tokens/s ({r['tokens']:.0f} tokens), latency p50 "
                      f"{r['p50']:.2f} s p99 "
                      f"{r['p99']:.2f} s, {r['batch']}, every request answered once with its "
                      f"own answer: {'yes' if r['answered_once'] else 'NO'}, load average now "
                      f"{os.getloadavg()[0]:.2f}", flush=True)
    if config.offline:
        offline = offline_rates(config, rows, [sizes[0], sizes[-1]])
        prefill, work = offline.pop("prefill"), offline.pop("work")
        for size, seconds in offline.items():
            print(f"offline engine, batch {size:>3}: {n} rows in {seconds:.1f} s = {n / seconds:.2f} rows/s",
                  flush=True)
        print(f"ratio offline rows/s batch {sizes[0]} / {sizes[-1]}: {offline[sizes[-1]] / offline[sizes[0]]:.2f}x")
        print(f"prefill alone (the same engine, 1 new token per row, batch {max(sizes)}): {n} rows in "
              f"{prefill:.1f} s; ceiling on any batch ratio here = offline batch-{sizes[-1]} seconds / prefill "
              f"seconds = {offline[sizes[-1]] / prefill:.2f}x", flush=True)
        if gflops and work.get("prefill_tokens"):
            body, head = work["params"]
            least = least_seconds(body, head, work["prefill_tokens"], work["generated_tokens"], work["prompts"],
                                  gflops)
            print(f"compute bound at batch {sizes[0]}: {work['prefill_tokens']} prompt tokens read and "
                  f"{work['generated_tokens']} generated through {body / 1e6:.1f}M linear weights + a "
                  f"{head / 1e6:.1f}M lm_head, at the {gflops:.1f} GFLOP/s matmul peak, take at least {least:.1f} s; "
                  f"ceiling on any batch ratio here = offline batch-{sizes[-1]} seconds / that = "
                  f"{offline[sizes[-1]] / least:.2f}x", flush=True)
    import statistics

    import torch

    median = {s: statistics.median(r["rps"] for r in results if r["batch_size"] == s) for s in sizes}
    print("load average before " + " ".join(f"{x:.2f}" for x in load_before) + ", after "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f"; {os.cpu_count()} CPUs, torch threads "
          f"{config.threads}; {torch.__version__}")
    print(describe(config.device))
    if config.device == "cpu":
        print(f"CPU roofline (this process, {config.threads} thread(s)): fp32 matmul {gflops:.1f} GFLOP/s, "
              f"memory copy {gbs:.1f} GB/s")
    print(f"ratio requests/s --max_batch_size {sizes[0]} / {sizes[-1]}: {median[sizes[0]] / median[sizes[-1]]:.2f}x"
          + (" (medians of the rounds)" if config.repeat > 1 else ""))
    return 0 if all(r["answered_once"] for r in results) else 1


if __name__ == "__main__":
    (config,) = cli.parse(make_parser())
    sys.exit(main(config))
