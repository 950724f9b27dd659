"""Judge throughput: the released way (one request at a time) against ours (``--concurrency 16``), and the
calls a cached re-run makes, against a local OpenAI-compatible server with a fixed per-request delay.

    python benchmarks/bench_judge.py            # 128 HH-RLHF Claude-3 rows, 200 ms per request
    python benchmarks/bench_judge.py --quick    # 48 rows, 100 ms per request

The server is ``python -m metaaligner.testing.openai_server`` in its own process on 127.0.0.1 (stdlib
HTTP, answers ``[[1]]`` after the delay; its ``/stats`` counts requests), so it does not share the
client's GIL; both ways go through the real ``openai`` client and the full judge pipeline (prompt
rendering, parsing, per-row output). The sequential run uses no cache,
like the released loop; ours starts from an empty cache, then runs again on the same output folder.
A 2-row warm-up run loads the modules first, so no run pays import time.
The last line is the ratio ours / sequential in rows per second.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    from metaaligner import cli
    parser = cli.plain_parser(__doc__)
    parser.add_argument("--data", default=str(REPO / "samples/HH-RLHF_model_output/Claude-3.csv.gz"),
                        help="policy-output table (query, goldens, generated_text); synthetic rows if missing")
    parser.add_argument("--rows", type=int, default=128, help="rows judged by each way")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the server takes per request")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight for our way")
    parser.add_argument("--quick", action="store_true", help="48 rows, 0.1 s per request")
    return parser.parse_args(argv)


def make_input(path: Path, data: str, n: int) -> Path:
    from metaaligner.io import read_table, write_csv

    if Path(data).exists():
        rows = read_table(data, required=["query", "goldens", "generated_text"])[:n]
    else:
        rows = [{"query": f"question {i}", "goldens": f"golden {i}", "generated_text": f"answer {i}"}
                for i in range(n)]
    out = [{"query": r["query"], "goldens": r["goldens"], "origin_responses": r["generated_text"],
            "aligned_responses": r["generated_text"] + " I hope this helps.", "template": "hh-rlhf"} for r in rows]
    write_csv(path, out, ["query", "goldens", "origin_responses", "aligned_responses", "template"])
    return path


class ServerProcess:
    """The scripted server in a child process; ``requests`` reads its counter over HTTP."""

    def __init__(self, delay: float):
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-m", "metaaligner.testing.openai_server", "--port", "0",
                                      "--reply", "[[1]]", "--delay", str(delay), "--lifetime", "1800"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            self.proc.kill()
            raise SystemExit(f"scripted server did not start: {line!r}")
        self.base_url = line.split()[1]

    @property
    def request_count(self) -> int:
        import json
        import urllib.request

        with urllib.request.urlopen(self.base_url.replace("/v1", "/stats"), timeout=10) as resp:
            return int(json.load(resp)["requests"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def run(inp: Path, out: Path, server, concurrency: int, use_cache: bool):
    from metaaligner.judge import judge_outputs

    before = server.request_count
    start = time.perf_counter()
    result = judge_outputs(inp, out, targets=["aligned_responses"], aspects=["harmlessness"], dataset="hh-rlhf",
                           base_url=server.base_url, judge_model="bench-judge", concurrency=concurrency,
                           use_cache=use_cache, progress=False)
    seconds = time.perf_counter() - start
    if result.failed or result.rows_done != result.rows_total:
        raise SystemExit(f"benchmark run lost rows: {result.line()}")
    return result.rows_done, seconds, server.request_count - before


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.rows, args.delay = 48, 0.1
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    server = ServerProcess(args.delay)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-judge-") as tmp:
            tmp = Path(tmp)
            inp = make_input(tmp / "in" / "Claude-3.csv", args.data, args.rows)
            warm = make_input(tmp / "warm" / "w.csv", args.data, 2)
            run(warm, tmp / "warm-out", server, 1, use_cache=False)  # load the modules before timing
            seq = run(inp, tmp / "sequential", server, 1, use_cache=False)
            ours = run(inp, tmp / "ours", server, args.concurrency, use_cache=True)
            cached = run(inp, tmp / "ours", server, args.concurrency, use_cache=True)
    finally:
        server.stop()
    print(f"judge benchmark: {args.rows} rows, server delay {args.delay * 1000:.0f} ms/request, "
          f"scripted server process on 127.0.0.1")
    print(f"{'run':<38}{'rows':>6}{'seconds':>10}{'rows/s':>10}{'requests':>10}")
    for name, (rows, seconds, requests) in [("released way (sequential, no cache)", seq),
                                            (f"ours (--concurrency {args.concurrency})", ours),
                                            ("ours, re-run (cache)", cached)]:
        print(f"{name:<38}{rows:>6}{seconds:>10.2f}{rows / seconds:>10.1f}{requests:>10}")
    print(f"cached re-run requests: {cached[2]} (goal 0)")
    ratio = (ours[0] / ours[1]) / (seq[0] / seq[1])
    print(f"speedup ours/sequential: {ratio:.1f}x (goal >= 8x)")


if __name__ == "__main__":
    main()
