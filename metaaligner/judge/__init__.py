"""LLM judges on any OpenAI-compatible endpoint: prompts as data, seeded position swapping, anchored
answer parsing, a SQLite cache keyed on the full request, concurrency, retries and cost control.

    from metaaligner.judge import judge_outputs
    result = judge_outputs("outputs/hh", "judged/hh", targets=["aligned_responses", "origin_responses"],
                           dataset="hh-rlhf", base_url="http://127.0.0.1:8000/v1", judge_model="gpt-4")

Modules: ``registry`` (prompts.yaml: prompt sets, parsers, prices), ``positions`` (swap/unswap,
verdicts), ``engine`` (openai client, cost meter), ``cache`` (SQLite), ``runner`` (plan, run, dry run),
``metrics`` (win rates, bootstrap).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from metaaligner.errors import MetaAlignerError
from metaaligner.judge.cache import Completion, JudgeCache, request_key
from metaaligner.judge.engine import CostMeter, Decoding, JudgeCallError, OpenAIChatEngine
from metaaligner.judge.registry import JudgePrompt, default_decoding, default_prices, get_prompt
from metaaligner.judge.runner import (JudgeRunner, JudgeSettings, RunResult, discover_inputs, dry_run_plan,
                                      plan_tasks, write_run_summary)

log = logging.getLogger(__name__)

__all__ = ["Completion", "CostMeter", "Decoding", "JudgeCache", "JudgeCallError", "JudgePrompt", "JudgeRunner",
           "JudgeSettings", "OpenAIChatEngine", "RunResult", "default_prices", "get_prompt", "judge_outputs",
           "request_key", "resolve_dataset"]


def resolve_dataset(dataset: str | None, files: list[tuple[str, Path]]):
    """The dataset config named by ``dataset``, else by the ``template`` provenance column that the
    aligner writes into its output CSVs."""
    from metaaligner.datasets import load_dataset_config
    from metaaligner.io import read_records

    if dataset:
        return load_dataset_config(dataset)
    names = set()
    for _, path in files:
        rows = read_records(path)
        if rows and rows[0].get("template"):
            names.add(str(rows[0]["template"]))
    if len(names) == 1:
        return load_dataset_config(names.pop())
    raise MetaAlignerError("name the dataset config with --template (hh-rlhf, ultrafeedback, imhi or a YAML path); "
                           f"the inputs' template columns give {sorted(names) or 'nothing'}")


def judge_outputs(input_path: str | Path, output_dir: str | Path, *, targets: list[str],
                  aspects: list[str] | None = None, dataset: str | None = None, mode: str = "pairwise",
                  judge_prompt: str = "clean", base_url: str | None = None, judge_model: str = "gpt-4",
                  concurrency: int = 8, seed: int = 0, temperature: float | None = None,
                  max_tokens: int | None = None, both_orders: bool = False, dry_run: bool = False,
                  resume: bool = False, limit: int = 0, max_cost: float = 0.0,
                  price_per_1k_input: float | None = None, price_per_1k_output: float | None = None,
                  max_retries: int = 6, timeout: float = 60.0, use_cache: bool = True,
                  cache_path: str | Path | None = None, objectives_file: str | None = None,
                  add_objective: list[str] | None = None, max_failures: int = 20, progress: bool = True,
                  engine: Any = None) -> RunResult | dict[str, Any]:
    """Judge every row of the aligner output file(s) at ``input_path`` for each target and objective.

    Returns the ``RunResult`` (or, with ``dry_run``, the plan: calls, cached, estimated cost).
    """
    from metaaligner.io import write_json
    from metaaligner.objectives import build_registry

    output_dir = Path(output_dir)
    if judge_model == "probe" and engine is None:  # the offline probe judge (metaaligner/judge/probe.py)
        from metaaligner.judge.probe import PROMPTS_FILE, ProbeEngine, judge_model_id
        engine, judge_model, judge_prompt = ProbeEngine(), judge_model_id(), str(PROMPTS_FILE)
    files = discover_inputs(input_path, exclude=output_dir)
    config = resolve_dataset(dataset, files)
    registry = build_registry(objectives_file, add_objective)
    keys = list(aspects or [])
    if not keys:
        keys = list(config.objectives) + (list(config.unseen_objectives) if mode == "rating" else [])
    objectives = registry.resolve(keys, config.objective_group)
    prompt = get_prompt(judge_prompt, mode, config.judge_family)
    decoding_defaults = default_decoding()
    decoding = Decoding(temperature=float(decoding_defaults.get("temperature", 0.0) if temperature is None else temperature),
                        seed=seed, max_tokens=int(max_tokens or prompt.max_tokens))
    settings = JudgeSettings(mode=mode, prompt=prompt, judge_model=judge_model, decoding=decoding, seed=seed,
                             both_orders=both_orders)
    prices = default_prices(judge_model)
    price_in = price_per_1k_input if price_per_1k_input is not None and price_per_1k_input >= 0 else \
        (prices[0] if prices else 0.0)
    price_out = price_per_1k_output if price_per_1k_output is not None and price_per_1k_output >= 0 else \
        (prices[1] if prices else 0.0)
    if prices is None and price_per_1k_input is None and base_url is None:
        log.warning("no registry price for %s: costs count as 0 (pass --price_per_1k_input/output)", judge_model)
    if max_cost > 0 and price_in == 0 and price_out == 0:
        log.warning("--max_cost has no effect: %s has no price (pass --price_per_1k_input/output)", judge_model)
    meter = CostMeter(price_in, price_out, max_cost)
    tasks = plan_tasks(files, config.name, objectives, targets, settings, output_dir, limit=limit)

    output_dir.mkdir(parents=True, exist_ok=True)
    cache = JudgeCache(cache_path or output_dir / "judge_cache.sqlite") if use_cache else None
    try:
        if dry_run:
            runner = JudgeRunner(settings, None, cache, meter, concurrency=concurrency, resume=resume)
            return dry_run_plan(tasks, runner, output_dir, resume=resume)
        if engine is None:
            engine = OpenAIChatEngine(judge_model, base_url=base_url, timeout=timeout, max_retries=max_retries)
        write_json(output_dir / "run.json", {
            **settings.describe(), "prompt_user": prompt.user, "prompt_system": prompt.system,
            "reminder": prompt.reminder, "dataset": config.name, "targets": targets,
            "objectives": [o.key for o in objectives], "inputs": [str(p) for _, p in files], "limit": limit,
            "judge_quality": getattr(engine, "caption", None),
            "base_url": base_url, "concurrency": concurrency, "max_retries": max_retries, "timeout": timeout,
            "price_per_1k_input": price_in, "price_per_1k_output": price_out, "max_cost": max_cost,
            "cache": str(cache.path) if cache else None, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        runner = JudgeRunner(settings, engine, cache, meter, concurrency=concurrency, resume=resume,
                             max_failures=max_failures, progress=progress)
        result = runner.run(tasks)
        write_run_summary(output_dir, result.summaries)
        return result
    finally:
        if cache is not None:
            cache.close()
