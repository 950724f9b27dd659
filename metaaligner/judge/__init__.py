"""LLM judges on any OpenAI-compatible endpoint: prompts as data, seeded position swapping, anchored
answer parsing, a SQLite cache keyed on the full request, concurrency, retries and cost control.

    from metaaligner.judge import judge_outputs
    result = judge_outputs("outputs/hh", "judged/hh", targets=["aligned_responses", "origin_responses"],
                           dataset="hh-rlhf", base_url="http://127.0.0.1:8000/v1", judge_model="gpt-4")
    # the paper as published: released prompts and parser, gpt-4-turbo-preview, API-default decoding
    judge_outputs("outputs/hh", "judged/hh-paper", targets=["aligned_responses"], profile="paper")

Modules: ``registry`` (prompts.yaml: prompt sets, parsers, prices), ``profiles`` (profiles.yaml:
named judging profiles ``clean`` and ``paper``), ``positions`` (swap/unswap, verdicts), ``engine``
(openai client, cost meter), ``cache`` (SQLite), ``runner`` (plan, run, dry run), ``metrics`` (win
rates, bootstrap).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from metaaligner.errors import MetaAlignerError
from metaaligner.judge.cache import Completion, JudgeCache, request_key
from metaaligner.judge.engine import CostMeter, Decoding, JudgeCallError, OpenAIChatEngine
from metaaligner.judge.profiles import load_profile, resolve_judge
from metaaligner.judge.registry import JudgePrompt, default_prices, get_prompt
from metaaligner.judge.runner import (
    JudgeRunner,
    JudgeSettings,
    RunResult,
    discover_inputs,
    drop_training_prompts,
    dry_run_plan,
    plan_control_tasks,
    plan_tasks,
    write_control_files,
    write_run_summary,
)

log = logging.getLogger(__name__)

__all__ = ["Completion", "CostMeter", "Decoding", "JudgeCache", "JudgeCallError", "JudgePrompt", "JudgeRunner",
           "JudgeSettings", "OpenAIChatEngine", "RunResult", "default_prices", "get_prompt", "judge_outputs",
           "load_profile", "request_key", "resolve_dataset", "resolve_judge"]


def resolve_dataset(dataset: str | None, files: list[tuple[str, Path]]):
    """The dataset config named by ``dataset``, else by the ``template`` provenance column that the
    aligner writes into its output CSVs."""
    from metaaligner.errors import DataError
    from metaaligner.io import read_records
    from metaaligner.registry.datasets import available, load_dataset_config

    if dataset:
        return load_dataset_config(dataset)
    names = set()
    for _, path in files:
        rows = read_records(path)
        if rows and rows[0].get("template"):
            name = str(rows[0]["template"])
            if name not in available():  # a value read from data names a shipped config, never a path
                raise DataError(path, f"template {name!r} is not a shipped dataset config ({', '.join(available())}); "
                                      "pass --template NAME_OR_PATH", row=1, column="template")
            names.add(name)
    if len(names) == 1:
        return load_dataset_config(names.pop())
    raise MetaAlignerError("name the dataset config with --dataset (hh-rlhf, ultrafeedback, imhi or a YAML path); "
                           f"the inputs' template columns give {sorted(names) or 'nothing'}")


def judge_outputs(input_path: str | Path, output_dir: str | Path, *, targets: list[str],
                  aspects: list[str] | None = None, dataset: str | None = None, mode: str = "pairwise",
                  judge_prompt: str | None = None, base_url: str | None = None, judge_model: str | None = None,
                  concurrency: int = 8, seed: int = 0, temperature: float | None = None,
                  max_tokens: int | None = None, both_orders: bool = False, dry_run: bool = False,
                  resume: bool = False, limit: int = 0, max_cost: float = 0.0,
                  price_per_1k_input: float | None = None, price_per_1k_output: float | None = None,
                  max_retries: int = 6, timeout: float = 60.0, use_cache: bool = True,
                  cache_path: str | Path | None = None, objectives_file: str | None = None,
                  add_objective: list[str] | None = None, max_failures: int = 20, progress: bool = True,
                  engine: Any = None, profile: str | None = None, parser: str | None = None,
                  columns: dict[str, str] | None = None, overwrite: bool = False,
                  controls: bool | None = None) -> RunResult | dict[str, Any]:
    """Judge every row of the aligner output file(s) at ``input_path`` for each target and objective.

    ``profile`` (``clean`` by default, ``paper``, or a YAML file) sets the prompt set, judge model,
    decoding and parser; ``judge_prompt``, ``judge_model``, ``parser``, ``temperature`` and
    ``max_tokens`` override its parts when given. An ``output_dir`` holding another judge's run
    (``run.json``: model, prompt, parser, endpoint, decoding) is refused unless ``overwrite``; its
    summaries never mix two judges' rows.

    ``controls`` (None: on for the probe judge, which costs nothing; off for endpoints, which may
    bill): after the real rows, judge the control answers ('.', a refusal, the first half, the answer
    twice) against the original answers of the same rows (``metaaligner.judge.controls``); written to
    ``<mode>/<policy>.controls.json``. A judge engine with ``is_training_prompt`` (the probe) has every
    row whose query it was trained on left out and counted (``excluded_training_prompts``).

    Returns the ``RunResult`` (or, with ``dry_run``, the plan: calls, cached, estimated cost).
    """
    from metaaligner.io import redact_url, write_json
    from metaaligner.judge.probe import PROMPTS_FILE, ProbeEngine, judge_model_id
    from metaaligner.registry.objectives import build_registry

    output_dir = Path(output_dir)
    if judge_model == "probe" and engine is None:  # the offline probe judge (metaaligner/judge/probe.py)
        engine, judge_model, judge_prompt = ProbeEngine(), judge_model_id(), str(PROMPTS_FILE)
    files = discover_inputs(input_path, exclude=output_dir)
    config = resolve_dataset(dataset, files)
    registry = build_registry(objectives_file, add_objective)
    keys = list(aspects or [])
    if not keys:
        keys = list(config.objectives) + (list(config.unseen_objectives) if mode == "rating" else [])
    objectives = registry.resolve(keys, config.objective_group)
    judge_profile, prompt, judge_model, decoding = resolve_judge(
        profile, mode, config.judge_family, judge_prompt=judge_prompt, judge_model=judge_model, parser=parser,
        temperature=temperature, max_tokens=max_tokens, seed=seed)
    settings = JudgeSettings(mode=mode, prompt=prompt, judge_model=judge_model, decoding=decoding, seed=seed,
                             both_orders=both_orders, endpoint=redact_url(base_url) or "",
                             empty_cells=judge_profile.empty_cells)
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
    tasks = plan_tasks(files, config.name, objectives, targets, settings, output_dir, limit=limit, columns=columns)
    if controls is None:
        controls = isinstance(engine, ProbeEngine)
    control_tasks = plan_control_tasks(files, config.name, objectives, settings, output_dir, limit=limit,
                                       columns=columns) if controls else []
    is_training_prompt = getattr(engine, "is_training_prompt", None)
    excluded = drop_training_prompts(tasks, is_training_prompt) if is_training_prompt else {}
    if is_training_prompt:
        drop_training_prompts(control_tasks, is_training_prompt)

    if output_dir.exists() and not output_dir.is_dir():
        raise MetaAlignerError(f"{output_dir}: is a file, but --output_dir is a folder; choose another path")
    output_dir.mkdir(parents=True, exist_ok=True)
    if not dry_run and not overwrite:
        check_same_judge(output_dir / "run.json", settings)
    cache = JudgeCache(cache_path or output_dir / "judge_cache.sqlite") if use_cache else None
    try:
        if dry_run:
            runner = JudgeRunner(settings, None, cache, meter, concurrency=concurrency, resume=resume)
            return {**dry_run_plan(tasks + control_tasks, runner, output_dir, resume=resume),
                    "profile": judge_profile.name, "control_tasks": len(control_tasks), "excluded": excluded}
        if engine is None:
            engine = OpenAIChatEngine(judge_model, base_url=base_url, timeout=timeout, max_retries=max_retries)
        write_json(output_dir / "run.json", {"judge_config": settings.fingerprint(),
            **settings.describe(), "profile": judge_profile.name, "prompt_user": prompt.user,
            "prompt_system": prompt.system,
            "reminder": prompt.reminder, "dataset": config.name, "targets": targets,
            "objectives": [o.key for o in objectives], "inputs": [str(p) for _, p in files], "limit": limit,
            "judge_quality": getattr(engine, "caption", None), "controls": bool(controls),
            "excluded_training_prompts": excluded,
            "base_url": redact_url(base_url), "concurrency": concurrency, "max_retries": max_retries,
            "timeout": timeout,
            "price_per_1k_input": price_in, "price_per_1k_output": price_out, "max_cost": max_cost,
            "cache": str(cache.path) if cache else None, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        runner = JudgeRunner(settings, engine, cache, meter, concurrency=concurrency, resume=resume,
                             max_failures=max_failures, progress=progress, overwrite=overwrite)
        result = runner.run(tasks)
        result.excluded = excluded
        write_run_summary(output_dir, result.summaries, settings.fingerprint())
        if control_tasks and result.stopped is None and not result.failed:
            run_controls(result, control_tasks, settings, engine, cache, meter, output_dir,
                         dict(concurrency=concurrency, resume=resume, max_failures=max_failures, progress=progress,
                              overwrite=overwrite))
        return result
    finally:
        if cache is not None:
            cache.close()


def run_controls(result: RunResult, tasks: list, settings: JudgeSettings, engine: Any, cache, meter: CostMeter,
                 output_dir: Path, options: dict[str, Any]) -> None:
    """Judge the control tasks after the real ones (same engine, cache and spending cap) and write
    the ``.controls.json`` files; ``result.control_run`` and ``result.controls`` hold the outcome."""
    runner = JudgeRunner(settings, engine, cache, meter, **options)
    result.control_run = runner.run(tasks)
    finished = {(s["policy"], s["target"], s["objective"]) for s in result.control_run.summaries}
    result.controls = write_control_files(output_dir, tasks, finished, settings)


def check_same_judge(run_json: Path, settings: JudgeSettings) -> None:
    """Refuse an output folder whose ``run.json`` names another judge configuration."""
    import json

    from metaaligner.io import fingerprint_diff

    try:
        old = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(old, dict) or old.get("judge_config") in (None, settings.fingerprint()):
        return
    new = settings.describe()
    what = fingerprint_diff({k: old.get(k) for k in new}, new) or "the prompt texts differ"
    raise MetaAlignerError(f"{run_json.parent}: holds a run of another judge configuration ({what}); use another "
                           "--output_dir, or pass --overwrite to judge into it anyway (its summary then holds "
                           "only the new judge's rows)")
