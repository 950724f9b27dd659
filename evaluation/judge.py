r"""Judge aligner outputs with an LLM on any OpenAI-compatible endpoint (GPT-4 in the paper).

Pairwise vs the golden answer (Table 2/3), per objective, candidate position seeded per row:

    OPENAI_API_KEY=... python evaluation/judge.py --input outputs/hh-rlhf --dataset hh-rlhf \
        --target aligned_responses,origin_responses --aspects harmlessness,helpfulness,humour \
        --judge_model gpt-4 --output_dir judged/hh-rlhf --concurrency 16 --seed 0

The paper as published (profile ``paper``: released prompts and substring parser, gpt-4-turbo-preview,
API-default decoding; ``clean`` is the default profile); any part can be overridden, e.g. ``--parser``:

    OPENAI_API_KEY=... python evaluation/judge.py --input outputs/hh-rlhf --template hh-rlhf --profile paper \
        --output_dir judged/hh-rlhf-paper
    python evaluation/judge.py --input outputs/hh-rlhf --template hh-rlhf --profile paper --parser released_choice \
        --output_dir judged/hh-rlhf-paper-strict --dry_run

Rating 0-10 (the rating study; seen + unseen UltraFeedback objectives by default), against a local server:

    python evaluation/judge.py --input outputs/uf/gpt-3.5-turbo.csv --dataset ultrafeedback --mode rating \
        --base_url http://127.0.0.1:8000/v1 --judge_model /path/to/served/model --output_dir judged/uf-rating

``--dry_run`` prints the number of calls and a cost estimate without calling; a re-run reuses the
SQLite cache in ``--output_dir`` (0 calls); ``--resume`` continues an interrupted run.

Several processes: under ``torchrun --nproc_per_node N`` each rank judges its slice of every input file
and rank 0 merges; jobs started on their own take ``--shard I/N`` and one ``--merge`` run joins them:

    python evaluation/judge.py --input outputs/hh-rlhf --dataset hh-rlhf --judge_model probe \
        --output_dir judged/hh-rlhf --shard 0/2      # and --shard 1/2, anywhere, at any time
    python evaluation/judge.py --input outputs/hh-rlhf --dataset hh-rlhf --judge_model probe \
        --output_dir judged/hh-rlhf --merge

Controls: ``--controls`` also judges four control answers ('.', a canned refusal, the first half of
the answer, the answer twice) against each row's original answer, into ``<mode>/<policy>.controls.json``;
a judge that prefers '.' on more than half of the rows is unusable for that table. On by default
for ``--judge_model probe`` (free); opt-in for endpoints, where it adds 4 calls per row and objective
(``--dry_run --controls`` prices them). The probe also leaves out the rows whose query it was
trained on, and counts them.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner import cli
from metaaligner.cli import deprecated_aliases, parse, run_main, split_csv
from metaaligner.sharding import MERGE_HELP, SHARD_HELP


@dataclass
class JudgeConfig:
    input: str = field(default=None, metadata={"help": "aligner output CSV (query, goldens, origin_responses, "
                                                       "aligned_responses) or a folder of them (one per policy)"})
    output_dir: str = field(default=None,
                            metadata={"help": "where per-row CSVs, summaries, run.json and the cache go"})
    target: str = field(default="aligned_responses,origin_responses",
                        metadata={"help": "column(s) to judge, comma-separated: aligned_responses, origin_responses"})
    aspects: str = field(default="", metadata={"help": "objective keys, comma-separated; default: the dataset "
                                                       "config's objectives (+ unseen ones in rating mode)"})
    dataset: str = field(default="", metadata={"help": "dataset config (hh-rlhf | ultrafeedback | imhi | path.yaml): "
                                                       "objective group and judge family; default: the inputs' "
                                                       "template column", **deprecated_aliases("--template")})
    query_column: str = field(default="query", metadata={"help": "input column holding the query"})
    goldens_column: str = field(default="goldens",
                                metadata={"help": "input column holding the golden answer (pairwise)"})
    objectives_file: str = field(default=None, metadata={"help": "YAML/JSON of extra objectives key -> description"})
    add_objective: list[str] = field(default_factory=list,
                                     metadata={"help": "extra objective 'key=Description: ...' (repeatable)",
                                               "action": "append"})
    mode: str = field(default="pairwise", metadata={"help": "pairwise (vs golden) or rating (0-10)",
                                                    "choices": ["pairwise", "rating"]})
    profile: str = field(default="clean", metadata={"help": "judging profile (metaaligner/judge/profiles.yaml): "
                                                            "clean (default: strict [[x]] parser, greedy) | paper "
                                                            "(released prompts and substring parser, "
                                                            "gpt-4-turbo-preview, API-default decoding) | a YAML "
                                                            "file; "
                                                            "the flags below override its parts"})
    judge_prompt: str = field(default=None, metadata={"help": "prompt set: clean | released (the paper's, byte "
                                                              "for byte) | path to a YAML set; default: the "
                                                              "profile's"})
    parser: str = field(default=None, metadata={"help": "verdict parser of metaaligner/judge/prompts.yaml: released "
                                                        "(substring: the candidate's digit anywhere = win, else '0' = "
                                                        "tie, else loss) | released_choice | bracket_choice | ...; "
                                                        "default: the profile's, else the prompt set's own"})
    base_url: str = field(default=None, metadata={"help": "OpenAI-compatible endpoint, e.g. "
                                                          "http://127.0.0.1:8000/v1; default: the OpenAI API. "
                                                          "The key is read from OPENAI_API_KEY only"})
    judge_model: str = field(default=None, metadata={"help": "model name sent to the endpoint; default: the "
                                                             "profile's (clean: gpt-4, paper: gpt-4-turbo-preview); "
                                                             "'probe' = the offline probe judge "
                                                             "(metaaligner/judge/probe.py, no server)"})
    concurrency: int = field(default=8, metadata={**cli.check(ge=1),
                                                  "help": "requests in flight (1 = the released sequential loop)"})
    seed: int = field(default=0, metadata={"help": "seed of the per-row candidate position and of the request"})
    temperature: float = field(default=None, metadata={**cli.check(ge=0.0),
                                                       "help": "judge sampling temperature; default: the profile's "
                                                               "(clean: 0; paper: not sent)"})
    max_tokens: int = field(default=0, metadata={**cli.check(ge=0),
                                                 "help": "reply token limit; 0 = the profile's (clean: the prompt "
                                                         "set's; paper: not sent)"})
    both_orders: bool = field(default=False, metadata={**cli.check(not_with={"mode": ("rating",)}),
                                                       "help": "judge each pair in both positions; a win needs "
                                                               "both orders to agree (MT-Bench convention)"})
    dry_run: bool = field(default=False, metadata={"help": "print the calls and a cost estimate; call nothing"})
    resume: bool = field(default=False, metadata={"help": "keep rows already written by an interrupted run (only one "
                                                          "with the same judge, objectives and inputs)"})
    overwrite: bool = field(default=False, metadata={"help": "judge into an --output_dir that holds another judge's "
                                                             "run or outputs made with other settings"})
    limit: int = field(default=0, metadata={**cli.check(ge=0),
                                            "help": "judge only the first N rows of each file (0 = all)"})
    max_cost: float = field(default=0.0,
                            metadata={**cli.check(ge=0.0),
                                      "help": "stop cleanly before spending more USD than this (0 = no limit)"})
    price_per_1k_input: float = field(default=-1.0,
                                      metadata={**cli.check(ge=0.0, also=(-1.0,)),
                                                "help": "USD per 1k prompt tokens; -1 = registry default"})
    price_per_1k_output: float = field(default=-1.0,
                                       metadata={**cli.check(ge=0.0, also=(-1.0,)),
                                                 "help": "USD per 1k reply tokens; -1 = registry default"})
    max_retries: int = field(default=6,
                             metadata={**cli.check(ge=0),
                                       "help": "client retries with exponential backoff on 429/5xx/timeouts"})
    timeout: float = field(default=60.0, metadata={**cli.check(gt=0.0),
                                                   "help": "seconds per request before it counts as timed out"})
    cache: bool = field(default=True, metadata={"help": "use the SQLite cache (--no_cache disables it)"})
    cache_path: str = field(default=None, metadata={"help": "cache file; default: <output_dir>/judge_cache.sqlite"})
    max_failures: int = field(default=20, metadata={**cli.check(ge=1),
                                                    "help": "stop submitting after this many calls failed for good"})
    controls: bool = field(default=False, metadata={"help": "also judge the control answers ('.', a refusal, the "
                                                            "first half, the answer twice) against the original "
                                                            "answers: 4 more calls per row and objective (default: "
                                                            "on for --judge_model probe only)"})
    no_controls: bool = field(default=False, metadata={"help": "no controls, even for the probe"})
    shard: str = field(default=None, metadata={"help": SHARD_HELP + " (each input file's rows are sliced; the shards "
                                                                     "go beside each verdict file)"})
    merge: bool = field(default=False, metadata={"help": MERGE_HELP + "; then writes the summaries and controls"})


def make_parser():
    return cli.make_parser(JudgeConfig, description=__doc__)


def _flatten(values) -> list[str]:
    out = []
    for value in values or []:
        out.extend(_flatten(value) if isinstance(value, (list, tuple)) else [str(value)])
    return out


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def control_lines(result) -> list[str]:
    """One line per policy: each control's wins against the original answer, and the verdict on the judge."""
    from metaaligner.judge.controls import LABELS

    if result.control_run is None and not result.controls:
        return []
    lines = [f"controls: {result.control_run.line()}"] if result.control_run is not None else ["controls:"]
    for info in result.controls:
        wins: dict[str, list[int]] = {}
        for entry in info["controls"]:
            wins.setdefault(entry["control"], [0, 0])
            wins[entry["control"]][0] += entry["wins"]
            wins[entry["control"]][1] += entry["n"]
        cells = ", ".join(f"{LABELS.get(c, c)} {w}/{n}" for c, (w, n) in wins.items())
        verdict = (f"judge UNUSABLE for these rows: prefers '.' to the original on {info['dot_wins']} of "
                   f"{info['dot_rows']} rows" if info["unusable"] else "'.' is not preferred on most rows")
        over = f" (rows x {info['objectives']} objectives)" if info.get("objectives", 1) > 1 else ""
        lines.append(f"  {info['policy']}: control beats the original answer{over}: {cells}; {verdict}")
    return lines


def judge_run(config: JudgeConfig):
    """The ``JudgeRun`` the flags describe."""
    from metaaligner.judge import JudgeRun

    return JudgeRun(
        config.input, config.output_dir, targets=split_csv(config.target), aspects=split_csv(config.aspects),
        dataset=config.dataset or None, mode=config.mode, judge_prompt=config.judge_prompt or None,
        profile=config.profile, parser=config.parser or None,
        base_url=config.base_url, judge_model=config.judge_model or None, concurrency=config.concurrency,
        seed=config.seed, temperature=config.temperature, max_tokens=config.max_tokens or None,
        both_orders=config.both_orders, dry_run=config.dry_run, resume=config.resume, limit=config.limit,
        max_cost=config.max_cost, price_per_1k_input=config.price_per_1k_input,
        price_per_1k_output=config.price_per_1k_output, max_retries=config.max_retries, timeout=config.timeout,
        use_cache=config.cache, cache_path=config.cache_path, objectives_file=config.objectives_file,
        add_objective=_flatten(config.add_objective), overwrite=config.overwrite,
        columns={"query": config.query_column, "goldens": config.goldens_column},
        controls=True if config.controls else False if config.no_controls else None)


def summary_lines(result) -> list[str]:
    """One line per finished output file: its counts and win rates (pairwise) or mean rating."""
    lines = []
    for summary in result.summaries:
        if summary["mode"] == "pairwise":
            lines.append(f"  {summary['policy']} {summary['target']} {summary['objective']}: n={summary['n']} "
                         f"W/T/L/invalid={summary['wins']}/{summary['ties']}/{summary['losses']}/{summary['invalid']} "
                         f"win={summary['win']:.3f} (W+T/2)/N={_fmt(summary['win_half_tie'])} "
                         f"paper (W+T)/(W+T+L)={_fmt(summary['win_plus_tie'])}")
        else:
            mean = "n/a" if summary["mean"] is None else f"{summary['mean']:.2f}"
            lines.append(f"  {summary['policy']} {summary['target']} {summary['objective']}: mean rating {mean} "
                         f"({summary['valid']} valid, {summary['invalid']} invalid)")
    return lines


def main(config: JudgeConfig) -> None:
    from metaaligner.errors import MetaAlignerError
    from metaaligner.judge import judge_outputs
    from metaaligner.judge.runner import format_dry_run
    from metaaligner.sharding import plan_shards

    if not config.input or not config.output_dir:
        raise MetaAlignerError("--input and --output_dir are required")
    cli.quiet_http_logs()  # also when main() is called without run_main
    plan = plan_shards(config.shard, config.merge)
    result = judge_outputs(run=judge_run(config), plan=plan)
    if config.dry_run:
        print(format_dry_run(result, result.get("judge_model") or config.judge_model))
        if result.get("control_tasks"):
            print(f"  the calls include {result['control_tasks']} control outputs (--no_controls drops them)")
        return
    print(("merged the shards: " if plan.merge else "") + result.line()
          + (f" ({plan.label}: shards written; merge with --merge)" if plan.given else ""))
    for policy, count in result.excluded.items():
        print(f"  {policy}: {count} input row(s) left out: their query is among the judge's training prompts")
    for line in summary_lines(result) + control_lines(result):
        print(line)
    print(f"outputs in {config.output_dir}")
    if result.stopped == "max_cost":
        raise MetaAlignerError(f"stopped before exceeding --max_cost {config.max_cost:g} "
                               f"(spent ${result.cost_usd:.4f}); "
                               "re-run with --resume and a higher --max_cost to continue")
    if result.failed:
        where, why = result.failed[0]
        raise MetaAlignerError(f"{len(result.failed)} row(s) failed after retries (first: {where}: {why}); "
                               "they were not written; re-run with --resume to retry them")


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
