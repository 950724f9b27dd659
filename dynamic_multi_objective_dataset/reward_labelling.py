r"""Stage 1: score preference pairs with one reward per objective (offline by default).

    # offline, CPU: the embedded SmolLM2 answers "does the answer meet <objective>?" (logit Yes - No)
    python dynamic_multi_objective_dataset/reward_labelling.py \
        --input samples/hh-rlhf-harmless-base/harmless-base-test.jsonl.gz --limit 64 \
        --output runs/hh/rewards.csv --reward_names harmless,helpful,humor --batch_size 16

    # the released reward models (hub or local copies), one shard per GPU, merged in input order
    accelerate launch --num_processes 8 dynamic_multi_objective_dataset/reward_labelling.py \
        --input hh-rlhf-train.jsonl.gz --output runs/hh/rewards.csv \
        --reward_names harmless,helpful,humor --scorer classifier --batch_size 64

    # jobs a scheduler starts on their own (a Slurm array of 4): each its slice, then one merge
    python dynamic_multi_objective_dataset/reward_labelling.py --input pairs.jsonl --output runs/rewards.csv \
        --shard $SLURM_ARRAY_TASK_ID/4
    python dynamic_multi_objective_dataset/reward_labelling.py --input pairs.jsonl --output runs/rewards.csv --merge

    # computable checks as rewards (no model): the edit-bench demo aligner's labels
    python dynamic_multi_objective_dataset/reward_labelling.py --input runs/edit/pairs.csv \
        --output runs/edit/rewards.csv --reward_names harmlessness,repeat,len --scorer rule --normalize false

Writes ``prompt, chosen_response, rejected_response, chosen_score{i}, rejected_score{i}`` (i in
``--reward_names`` order; rounded to ``--round`` decimals, then z-scored over chosen + rejected) and
``<output stem>.reward_stats.json`` (each reward's name, model, mean, std; dropped rows by reason).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

from metaaligner.cli import check
from metaaligner.sharding import MERGE_HELP, SHARD_HELP

log = logging.getLogger("reward_labelling")


@dataclass
class RewardLabellingConfig:
    input: str = field(metadata={"help": "HH-RLHF JSONL(.gz) with chosen/rejected transcripts, or a CSV/JSONL with "
                                         "prompt, chosen_response, rejected_response"})
    output: str = field(metadata={"help": "output CSV (or .jsonl); the stats go to "
                                          "<stem>.reward_stats.json beside it"})
    reward_names: str = field(default="harmless,helpful,humor", metadata={
        "help": "comma-separated rewards, in score-column order: harmless, helpful, humor (registered), or any "
                "objective key for the LLM scorer (e.g. honesty, ultrafeedback:helpfulness)"})
    scorer: str = field(default="llm", metadata={
        "help": "llm: yes/no logit gap of a causal LM (offline default); classifier: the released reward models; "
                "rule: minus the violations of a computable check (metaaligner/editbench/checks.py: harmlessness, "
                "repeat, len, disclaimer, no_caps, ask_back, word_limit)"})
    model: str | None = field(default=None, metadata={
        "help": "causal LM for --scorer llm: local path or hub name (default: the embedded SmolLM2-135M-Instruct)"})
    reward_models: list[str] = field(default_factory=list, metadata={
        "help": "override a reward's classifier with a local path: name=PATH, name=pair:PATH or name=response:PATH "
                "(one or more; an overridden name always uses that classifier)"})
    objectives_file: str | None = field(default=None,
                                        metadata={"help": "YAML/JSON of extra objectives key -> description"})
    add_objective: list[str] = field(default_factory=list, metadata={
        "help": "extra objective 'key=description' for the LLM scorer (one or more)"})
    objective_group: str = field(default="hh-rlhf", metadata={
        "help": "objective group used to look up LLM-scored names (hh-rlhf, ultrafeedback, imhi)"})
    batch_size: int = field(default=16,
                            metadata={**check(ge=1),
                                      "help": "sequences per forward pass (length-sorted, padded per batch)"})
    chunk_size: int = field(default=512, metadata={**check(ge=1),
                                                   "help": "rows scored between checkpoints (--resume granularity)"})
    max_length: int = field(default=1024, metadata={**check(ge=1),
        "help": "max tokens per scorer input (capped by the tokenizer's own limit); longer transcripts are dropped"})
    min_tokens: int = field(default=8, metadata={**check(ge=0),
                                                 "help": "transcripts shorter than this many tokens are dropped"})
    round: int = field(default=1, metadata={**check(ge=0, also=(-1,)),
        "help": "round raw scores to this many decimals before normalising (released behaviour; -1: off)"})
    normalize: bool = field(default=True, metadata={"help": "z-score each reward over chosen + rejected"})
    chat_template: str = field(default="auto", metadata={
        "help": "LLM scorer: wrap the question in the tokenizer's chat template (auto: if it has one | yes | no)"})
    device: str | None = field(default=None,
                               metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if any)"})
    dtype: str | None = field(default=None,
                              metadata={"help": "float32 | bfloat16 | float16 (default: float32 on CPU)"})
    limit: int | None = field(default=None, metadata={**check(ge=1), "help": "score only the first N input rows"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted run from its shard checkpoints"})
    shard_timeout_s: float = field(default=7200.0, metadata={**check(gt=0.0),
        "help": "torchrun/accelerate launch: how long rank 0 waits for the other ranks' shards (jobs started on "
                "their own take --shard I/N and never wait)"})
    shard: str | None = field(default=None, metadata={"help": SHARD_HELP})
    merge: bool = field(default=False, metadata={"help": MERGE_HELP + "; loads the scorers to check the shards' "
                                                                      "fingerprint"})


def main(cfg: RewardLabellingConfig) -> dict | None:
    from metaaligner.cli import split_csv
    from metaaligner.dataset.labelling import label_shard, labelling_shards, load_preference_rows
    from metaaligner.dataset.rewards import build_scorers, parse_overrides, resolve_rewards
    from metaaligner.distributed import dist_env
    from metaaligner.registry.objectives import build_registry
    from metaaligner.sharding import ShardPlan, plan_shards

    plan = plan_shards(cfg.shard, cfg.merge)
    rows = load_preference_rows(cfg.input, cfg.limit)
    registry = build_registry(cfg.objectives_file, cfg.add_objective)
    specs = resolve_rewards(split_csv(cfg.reward_names), cfg.scorer, cfg.model, parse_overrides(cfg.reward_models),
                            registry, cfg.objective_group)
    device = cfg.device or _default_device(dist_env()[2], plan.count)
    scorers = build_scorers(specs, device=device, dtype=cfg.dtype, max_length=cfg.max_length,
                            chat_template=cfg.chat_template)
    shards, hashes = labelling_shards(cfg.output, rows, scorers, cfg.min_tokens)
    start = time.perf_counter()
    if not plan.merge:  # one process too writes its (whole) shard, then merges it
        label_shard(rows, scorers, cfg.output, batch_size=cfg.batch_size, chunk_size=cfg.chunk_size,
                    min_tokens=cfg.min_tokens, resume=cfg.resume,
                    plan=plan if plan.sharded else ShardPlan(launched=True))
    seconds = time.perf_counter() - start
    mine = 0 if plan.merge else len(plan.rows(len(rows)))
    if plan.sharded and not plan.merges_after:
        print(f"reward_labelling[{plan.label}]: scored {mine} rows in {seconds:.1f}s -> {shards.path(plan)}; "
              + ("merge with --merge once every shard is there" if plan.given else "rank 0 merges"))
        return None
    if plan.launched:
        shards.wait(shards.run_paths(plan), cfg.shard_timeout_s)
    paths = shards.run_paths(plan if plan.sharded else ShardPlan()) if not plan.merge else None
    return _finish(cfg, rows, scorers, shards.collect(hashes, paths), plan, mine, seconds)


def _finish(cfg: RewardLabellingConfig, rows, scorers, by_row: dict, plan, mine: int, seconds: float) -> dict:
    """The output table and stats from every row's raw scores; the shards removed."""
    from metaaligner.dataset.labelling import finalise, scorer_info
    from metaaligner.distributed import in_input_order
    from metaaligner.sharding import remove_shards

    results, _ = in_input_order(by_row, len(rows))
    stats = finalise(rows, results, [scorer_info(s) for s in scorers], cfg.output,
                     round_digits=cfg.round if cfg.round >= 0 else None, normalize=cfg.normalize,
                     extra_stats={"input": cfg.input, "processes": plan.count, "batch_size": cfg.batch_size,
                                  "seconds_rank0": round(seconds, 2),
                                  "rows_per_s_rank0": round(mine / max(seconds, 1e-9), 2)})
    remove_shards(cfg.output, len(rows))     # those of an earlier process count too
    dropped = ", ".join(f"{k}={v}" for k, v in stats["dropped"].items()) or "none"
    print(f"reward_labelling: {stats['rows_in']} rows in, {stats['rows_out']} out, "
          f"dropped {sum(stats['dropped'].values())} "
          f"({dropped}); {len(scorers)} rewards x {plan.count} process(es); rank 0: {mine} rows in {seconds:.1f}s "
          f"({mine / max(seconds, 1e-9):.2f} rows/s) -> {cfg.output}")
    for reason, ids in stats["dropped_row_ids"].items():
        log.warning("%d rows dropped as %s (never written as rewards), e.g. input rows %s",
                    stats["dropped"][reason], reason, ids[:10])
    return stats


def _default_device(local_rank: int, world: int) -> str | None:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return None


def make_parser():
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(RewardLabellingConfig, description=__doc__)


if __name__ == "__main__":
    from metaaligner.cli import parse, run_main
    sys.exit(run_main(main, *parse(make_parser())))
