"""Run every ``benchmarks/bench_*.py`` (``--quick`` by default) and print one table:
work, the naive (released) way, ours, the ratio, the goal.

    python benchmarks/run_all.py                       # all benchmarks, --quick, table on stdout
    python benchmarks/run_all.py --output table.md     # also write the Markdown table
    python benchmarks/run_all.py --full --only judge,training --log_dir runs/bench
    python benchmarks/run_all.py --full --device cuda  # on a GPU (each benchmark's default when one is visible)

Each benchmark runs in its own process, one after the other, and measures naive and ours in the same
run (so both see the same machine load); this script only parses their printed summaries (the ratio
is each script's last line). A script whose summary cannot be parsed is listed with its last line so
nothing is silently dropped. The load average before and after is printed: on a shared machine the
absolute numbers move with the neighbours, the ratios much less.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
NO_MODEL = ("bench_judge.py",)  # talks to a scripted HTTP server: no model, no device
NUM = r"([0-9]+(?:\.[0-9]+)?)"


@dataclass(frozen=True)
class Spec:
    """How to read one benchmark's output: what it measures, and regexes whose group 1 is the number
    (the largest match counts for ``ours``, which may be printed for several settings)."""

    work: str
    naive: str
    ours: str
    unit: str
    goal: str
    goal_ratio: float | None
    naive_re: str
    ours_re: str
    ratio_re: str = NUM + r"x"


SPECS = {
    "bench_aligner_inference.py": Spec(
        "aligner inference (embedded SmolLM2-135M, greedy)", "batch 1, one generate per row",
        "fast engine (shared prefix, unpadded prefill, batched decode on packed weights)", "generated tok/s",
        ">= 2.2x (16x64)", 2.2,
        r"^released: batch 1, one generate per row\s+\d+ tok\s+[\d.]+ s\s+" + NUM + r" tok/s",
        r"^ours: batch \d+, fast engine\s+\d+ tok\s+[\d.]+ s\s+" + NUM + r" tok/s"),
    "bench_reward_labelling.py": Spec(
        "reward labelling (LLM scorer, 3 rewards x 2 responses)", "batch 1, one sequence per pass",
        "length-sorted batches, prefix-shared questions", "pairs/s", ">= 5x", 5.0,
        r"^released: batch 1, one sequence per pass\s+[\d.]+\s+" + NUM, r"^ours: [^\n]*\(bs \d+\)\s+[\d.]+\s+" + NUM),
    "bench_judge.py": Spec(
        "LLM judge (scripted server, fixed delay per request)", "sequential, no cache (released loop)",
        "--concurrency 16 + SQLite cache", "rows/s", ">= 8x, 0 requests on a cached re-run", 8.0,
        r"^released way \(sequential, no cache\)\s+\d+\s+[\d.]+\s+" + NUM + r"\s+\d+\s*$",
        r"^ours \(--concurrency \d+\)\s+\d+\s+[\d.]+\s+" + NUM + r"\s+\d+\s*$"),
    "bench_training.py": Spec(
        "aligner training steps (TRL SFTTrainer)", "padded batches",
        "packed (attention per item, LM head on targets)", "tokens/s",
        ">= 2x", 2.0, r"^\s*padded: [^\n]*?= " + NUM + r" tokens/s",
        r"^\s*packed: [^\n]*?= " + NUM + r" tokens/s"),
    "bench_sepo_scoring.py": Spec(
        "SePO token scoring (oracle + reference)", "one sequence at a time", "length-sorted batches", "tokens/s",
        "none set (> 1x)", 1.0, r"one sequence at a time:\s+[\d.]+ s\s+" + NUM + r" tokens/s",
        r"batched \(length-sorted, \d+\):\s+[\d.]+ s\s+" + NUM + r" tokens/s"),
    "bench_serve.py": Spec(
        "metaaligner serve under 16 concurrent clients (embedded SmolLM2-135M aligner)", "--max_batch_size 1",
        "--max_batch_size 16 (requests batched in the aligner)", "req/s", ">= 3x", 3.0,
        r"--max_batch_size\s+1: \d+ requests in [\d.]+ s = " + NUM + r" req/s",
        r"--max_batch_size\s+(?!1:)\d+: \d+ requests in [\d.]+ s = " + NUM + r" req/s"),
}


@dataclass
class Row:
    script: str
    work: str
    naive: str
    ours: str
    ratio: str
    goal: str
    met: str
    seconds: float
    note: str = ""


def _numbers(pattern: str, text: str, group: int) -> list[float]:
    return [float(m.group(group)) for m in re.finditer(pattern, text, flags=re.M)]


def parse(script: str, output: str, returncode: int, seconds: float) -> Row:
    lines = [line for line in output.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    spec = SPECS.get(script)
    if returncode != 0 or spec is None:
        why = f"exit code {returncode}" if returncode != 0 else "no parser for this script"
        return Row(script, spec.work if spec else script, "?", "?", "?", spec.goal if spec else "?", "?", seconds,
                   f"{why}; last line: {last[:160]}")
    ratio_m = re.search(spec.ratio_re, last)
    group = 1
    naive = _numbers(spec.naive_re, output, group)
    ours = _numbers(spec.ours_re, output, group)
    note = ""
    if not ratio_m:
        note = f"last line has no ratio: {last[:160]}"
    if not naive or not ours:
        note = (note + "; " if note else "") + "naive/ours lines not found (summary format changed?)"
    ratio = float(ratio_m.group(1)) if ratio_m else None
    met = "?" if ratio is None or spec.goal_ratio is None else ("yes" if ratio >= spec.goal_ratio else "no")
    fmt = lambda v: f"{v:,.2f} {spec.unit}" if v < 100 else f"{v:,.0f} {spec.unit}"  # noqa: E731
    return Row(script, spec.work, f"{spec.naive}: {fmt(naive[0])}" if naive else spec.naive,
               f"{spec.ours}: {fmt(max(ours))}" if ours else spec.ours,
               f"{ratio:.2f}x" if ratio is not None else "?", spec.goal, met, seconds, note)


def extra_notes(script: str, output: str) -> str:
    """Facts a benchmark prints besides the ratio that the goal column needs."""
    if script == "bench_judge.py":
        m = re.search(r"cached re-run requests: (\d+)", output)
        return f"cached re-run: {m.group(1)} requests" if m else ""
    if script == "bench_aligner_inference.py":
        m = re.search(r"(\d+/\d+) identical to batch 1", output)
        return f"batched text == batch-1 text on {m.group(1)} rows" if m else ""
    if script in ("bench_reward_labelling.py", "bench_sepo_scoring.py"):
        m = re.search(r"max \|[^\n]*", output)
        return m.group(0)[:100] if m else ""
    if script == "bench_serve.py":
        m = re.search(r"mean (batch|rows a step) ([\d.]+), every request answered once with its own answer: (\w+)",
                      output)
        return f"mean {m.group(1)} {m.group(2)}; every request answered once: {m.group(3)}" if m else ""
    if script == "bench_training.py":
        m = re.search(r"first-step loss difference packed[^\n]*", output)
        return m.group(0)[:100] if m else ""
    return ""


def markdown(rows: list[Row], header: str) -> str:
    out = [header, "", "| work | naive way | ours | ratio | goal | met | notes |", "|---|---|---|---|---|---|---|"]
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731  (a '|' in a note would split the cell)
    for r in rows:
        out.append("| " + " | ".join(cell(x) for x in (r.work, r.naive, r.ours, r.ratio, r.goal, r.met, r.note))
                   + " |")
    return "\n".join(out) + "\n"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def gpu_note(device: str | None) -> str:
    """", GPU <name>" when the benchmarks run on a GPU (the --device given, or a visible one by default)."""
    try:
        import torch
    except ImportError:
        return ""
    if (device or "cuda").startswith("cuda") and torch.cuda.is_available():
        return f", GPU {torch.cuda.get_device_name(torch.device(device or 'cuda'))}"
    return ""


def main(argv: list[str] | None = None) -> int:
    from metaaligner import cli
    parser = cli.plain_parser(__doc__)
    parser.add_argument("--full", action="store_true", help="run without --quick (minutes each)")
    parser.add_argument("--only", default=None, help="comma-separated name parts, e.g. judge,training")
    parser.add_argument("--output", default=None, help="also write the table as Markdown to this file")
    parser.add_argument("--log_dir", default=None, help="keep each benchmark's full output here")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per benchmark")
    parser.add_argument("--device", default=None, help="passed to every benchmark that loads a model (all but "
                                                       "bench_judge.py); default: each one's own (cuda when visible)")
    args = parser.parse_args(argv)

    scripts = sorted(p for p in HERE.glob("bench_*.py"))
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        scripts = [p for p in scripts if any(w in p.name for w in wanted)]
    if not scripts:
        print("error: no benchmark matched", file=sys.stderr)
        return 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    load_before = loadavg()
    rows, start = [], time.time()
    for script in scripts:
        cmd = [sys.executable, str(script)] + ([] if args.full else ["--quick"])
        if args.device and script.name not in NO_MODEL:
            cmd += ["--device", args.device]
        print(f"running {' '.join(cmd[1:])} ...", flush=True)
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=args.timeout)
            output, code = proc.stdout, proc.returncode
            if code != 0:
                output += "\n" + proc.stderr[-2000:]
        except subprocess.TimeoutExpired as exc:
            output, code = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), 124
        seconds = time.time() - t0
        if args.log_dir:
            Path(args.log_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.log_dir) / f"{script.stem}.log").write_text(output, encoding="utf-8")
        row = parse(script.name, output, code, seconds)
        extra = extra_notes(script.name, output)
        row.note = "; ".join(x for x in (row.note, extra) if x)
        rows.append(row)
        print(f"  {row.ratio} ({seconds:.0f} s)", flush=True)
    machine = f"{platform.machine()} CPU x {os.cpu_count()}" + gpu_note(args.device)
    header = (f"Benchmarks ({'full' if args.full else '--quick'}), {machine}, "
              f"load average {load_before} before / {loadavg()} after, {time.time() - start:.0f} s in all")
    table = markdown(rows, header)
    print()
    print(table, end="")
    if args.output:
        Path(args.output).write_text(table, encoding="utf-8")
        print(f"\nwrote {args.output}")
    return 0 if all(r.ratio != "?" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
