"""LLM judges on any OpenAI-compatible endpoint: prompts as data, seeded position swapping, anchored
answer parsing, a SQLite cache keyed on the full request, concurrency, retries and cost control.

    from metaaligner.judge import judge_outputs
    result = judge_outputs("outputs/hh", "judged/hh", targets=["aligned_responses", "origin_responses"],
                           dataset="hh-rlhf", base_url="http://127.0.0.1:8000/v1", judge_model="gpt-4")
    # the paper as published: released prompts and parser, gpt-4-turbo-preview, API-default decoding
    judge_outputs("outputs/hh", "judged/hh-paper", targets=["aligned_responses"], profile="paper")
    # the same as one config
    judge_outputs(run=JudgeRun("outputs/hh", "judged/hh-paper", targets=["aligned_responses"], profile="paper"))

Modules: ``run_config`` (``JudgeRun``: what is judged, how, where it goes), ``registry``
(prompts.yaml: prompt sets, parsers, prices), ``profiles`` (profiles.yaml: named judging profiles
``clean`` and ``paper``), ``positions`` (swap/unswap, verdicts), ``engines`` (engines by name:
``openai``, ``probe``), ``engine`` (openai client, cost meter), ``probe`` (the offline judge),
``cache`` (SQLite), ``runner`` (plan, run, dry run), ``metrics`` (win rates, bootstrap).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from metaaligner.errors import MetaAlignerError
from metaaligner.judge.cache import Completion, JudgeCache, request_key
from metaaligner.judge.engine import CostMeter, Decoding, JudgeCallError, OpenAIChatEngine
from metaaligner.judge.engines import ENGINES, engine_name, make_engine, pinned_judge
from metaaligner.judge.profiles import load_profile, resolve_judge
from metaaligner.judge.registry import JudgePrompt, default_prices, get_prompt
from metaaligner.judge.run_config import JudgeRun
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

__all__ = ["ENGINES", "Completion", "CostMeter", "Decoding", "JudgeCache", "JudgeCallError", "JudgePrompt", "JudgeRun",
           "JudgeRunner",
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


@dataclass
class _JudgePlan:
    """What one judge run will do: its settings, tasks (real and control) and where they come from."""

    engine: Any
    name: str
    settings: JudgeSettings
    judge_profile: Any
    prompt: JudgePrompt
    config: Any
    objectives: list
    files: list
    tasks: list
    control_tasks: list
    controls: bool
    excluded: dict
    prices: tuple[float, float]


def judge_outputs(input_path: str | Path | None = None, output_dir: str | Path | None = None, *,
                  run: JudgeRun | None = None, plan=None, **options: Any) -> RunResult | dict[str, Any] | None:
    """Judge every row of the aligner output file(s) for each target and objective, as ``run`` (a
    ``JudgeRun``) says; without ``run``, the arguments are ``JudgeRun``'s fields
    (``judge_outputs(input_path, output_dir, targets=[...], ...)``).

    ``profile`` (``clean`` by default, ``paper``, or a YAML file) sets the prompt set, judge model,
    decoding and parser; ``judge_prompt``, ``judge_model``, ``parser``, ``temperature`` and
    ``max_tokens`` override its parts when given. The engine comes from ``judge.engines`` by
    ``judge_model`` (``probe``: the offline probe, which fixes its own model and prompt set; else the
    OpenAI-compatible endpoint) unless ``run.engine`` is given. An ``output_dir`` holding another
    judge's run (``run.json``: model, prompt, parser, endpoint, decoding) is refused unless
    ``overwrite``; its summaries never mix two judges' rows.

    ``controls`` (None: on for the probe judge, which costs nothing; off for endpoints, which may
    bill): after the real rows, judge the control answers ('.', a refusal, the first half, the answer
    twice) against the original answers of the same rows (``metaaligner.judge.controls``); written to
    ``<mode>/<policy>.controls.json``. A judge engine with ``is_training_prompt`` (the probe) has every
    row whose query it was trained on left out and counted (``excluded_training_prompts``).

    ``plan`` (``sharding.ShardPlan``; default: from ``torchrun``'s ``WORLD_SIZE``): a sharded process
    judges its slice of every input file's rows into shards (rank 0 of a launched run then merges
    them); ``--merge`` writes the outputs from the shards the ``--shard I/N`` jobs left.

    Returns the ``RunResult`` (or, with ``dry_run``, the plan: calls, cached, estimated cost).
    """
    from metaaligner.sharding import plan_shards

    if run is None:
        run = JudgeRun(input_path=input_path, output_dir=output_dir, **options)
    elif input_path is not None or output_dir is not None or options:
        raise MetaAlignerError("judge_outputs: give either run=JudgeRun(...) or its fields, not both")
    plan = plan or plan_shards()
    output_dir = Path(run.output_dir)
    job = _plan_run(run, output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise MetaAlignerError(f"{output_dir}: is a file, but --output_dir is a folder; choose another path")
    output_dir.mkdir(parents=True, exist_ok=True)
    if not run.dry_run and not run.overwrite and not plan.merge:
        check_same_judge(output_dir / "run.json", job.settings)
    if plan.merge:
        return _merge_run(run, job, output_dir, plan)
    cache = JudgeCache(run.cache_path or output_dir / "judge_cache.sqlite") if run.use_cache else None
    try:
        if run.dry_run:
            runner = JudgeRunner(job.settings, None, cache, CostMeter(*job.prices, run.max_cost),
                                 concurrency=run.concurrency, resume=run.resume)
            return {**dry_run_plan(job.tasks + job.control_tasks, runner, output_dir, resume=run.resume),
                    "profile": job.judge_profile.name, "control_tasks": len(job.control_tasks),
                    "excluded": job.excluded}
        return _judge(run, job, output_dir, cache, plan)
    finally:
        if cache is not None:
            cache.close()


def _plan_run(run: JudgeRun, output_dir: Path) -> _JudgePlan:
    """Resolve the judge (profile, engine, prompt, decoding) and plan every task."""
    from metaaligner.io import redact_url
    from metaaligner.registry.objectives import build_registry

    engine, judge_model, judge_prompt = run.engine, run.judge_model, run.judge_prompt
    name = engine_name(judge_model)
    pinned = pinned_judge(name) if engine is None else None
    if pinned:   # an engine that fixes its judge (the offline probe) is made at once; an endpoint only to call it
        engine, (judge_model, judge_prompt) = make_engine(name, run), pinned
    files = discover_inputs(run.input_path, exclude=output_dir)
    config = resolve_dataset(run.dataset, files)
    registry = build_registry(run.objectives_file, run.add_objective)
    keys = list(run.aspects or [])
    if not keys:
        keys = list(config.objectives) + (list(config.unseen_objectives) if run.mode == "rating" else [])
    objectives = registry.resolve(keys, config.objective_group)
    judge_profile, prompt, judge_model, decoding = resolve_judge(
        run.profile, run.mode, config.judge_family, judge_prompt=judge_prompt, judge_model=judge_model,
        parser=run.parser, temperature=run.temperature, max_tokens=run.max_tokens, seed=run.seed)
    settings = JudgeSettings(mode=run.mode, prompt=prompt, judge_model=judge_model, decoding=decoding, seed=run.seed,
                             both_orders=run.both_orders, endpoint=redact_url(run.base_url) or "",
                             empty_cells=judge_profile.empty_cells)
    tasks = plan_tasks(files, config.name, objectives, run.targets, settings, output_dir, limit=run.limit,
                       columns=run.columns)
    controls = _is_probe(engine) if run.controls is None else run.controls
    control_tasks = plan_control_tasks(files, config.name, objectives, settings, output_dir, limit=run.limit,
                                       columns=run.columns) if controls else []
    is_training_prompt = getattr(engine, "is_training_prompt", None)
    excluded = drop_training_prompts(tasks, is_training_prompt) if is_training_prompt else {}
    if is_training_prompt:
        drop_training_prompts(control_tasks, is_training_prompt)
    return _JudgePlan(engine, name, settings, judge_profile, prompt, config, objectives, files, tasks, control_tasks,
                      controls, excluded, _prices(run, judge_model))


def _judge(run: JudgeRun, job: _JudgePlan, output_dir: Path, cache, plan) -> RunResult | None:
    """Judge the tasks (a sharded process: its slice), then the controls; write the summaries where
    this process writes the outputs (one process, or rank 0 of a launched run after merging)."""
    from metaaligner.judge.runner import merge_task_shards, slice_task

    engine, settings = job.engine, job.settings
    if engine is None:
        engine = make_engine(job.name, replace(run, judge_model=settings.judge_model))
    _write_run_json(output_dir, run, settings, job.judge_profile, job.prompt, job.config, job.objectives, job.files,
                    engine, job.controls, job.excluded, job.prices, cache)
    meter = CostMeter(*job.prices, run.max_cost)
    options = dict(concurrency=run.concurrency, resume=run.resume, max_failures=run.max_failures,
                   progress=run.progress, overwrite=run.overwrite, plan=plan)
    mine = [slice_task(t, plan) for t in job.tasks] if plan.sharded else job.tasks
    result = JudgeRunner(settings, engine, cache, meter, **options).run(mine)
    result.excluded = job.excluded
    controls = [slice_task(t, plan) for t in job.control_tasks] if plan.sharded else job.control_tasks
    if controls and result.stopped is None and not result.failed:
        run_controls(result, controls, settings, engine, cache, meter, output_dir, options)
    if plan.merges_after and result.stopped is None and not result.failed:
        result.summaries = merge_task_shards(job.tasks, settings, plan, run.overwrite)
        if job.control_tasks:
            merge_task_shards(job.control_tasks, settings, plan, run.overwrite)
            _control_files(result, job, settings, output_dir)
    if not plan.sharded or plan.merges_after:
        write_run_summary(output_dir, result.summaries, settings.fingerprint())
    return result


def _merge_run(run: JudgeRun, job: _JudgePlan, output_dir: Path, plan) -> RunResult:
    """``--merge``: every task's output file and summary from the shards there are, then the run's summary
    and the controls' files."""
    from metaaligner.judge.runner import merge_task_shards

    start = time.time()
    summaries = merge_task_shards(job.tasks, job.settings, plan, run.overwrite)
    rows = sum(len(t.units) for t in job.tasks)
    result = RunResult(rows_total=rows, rows_done=0, rows_skipped_resume=rows, api_calls=0, cached_calls=0,
                       invalid=sum(s.get("invalid", 0) for s in summaries), failed=[], cost_usd=0.0, prompt_tokens=0,
                       completion_tokens=0, seconds=0.0, stopped=None, summaries=summaries,
                       finished_tasks=len(summaries), total_tasks=len(job.tasks), excluded=job.excluded)
    if job.control_tasks:
        merge_task_shards(job.control_tasks, job.settings, plan, run.overwrite)
        _control_files(result, job, job.settings, output_dir)
    write_run_summary(output_dir, summaries, job.settings.fingerprint())
    result.seconds = time.time() - start
    return result


def _control_files(result: RunResult, job: _JudgePlan, settings: JudgeSettings, output_dir: Path) -> None:
    finished = {t.key for t in job.control_tasks}
    result.controls = write_control_files(output_dir, job.control_tasks, finished, settings)


def _is_probe(engine: Any) -> bool:
    from metaaligner.judge.probe import ProbeEngine

    return isinstance(engine, ProbeEngine)


def _prices(run: JudgeRun, judge_model: str) -> tuple[float, float]:
    """(input, output) price per 1k tokens: the given ones, else the registry's for ``judge_model`` (0 when none)."""
    prices = default_prices(judge_model)
    price_in = run.price_per_1k_input if run.price_per_1k_input is not None and run.price_per_1k_input >= 0 else \
        (prices[0] if prices else 0.0)
    price_out = run.price_per_1k_output if run.price_per_1k_output is not None and run.price_per_1k_output >= 0 else \
        (prices[1] if prices else 0.0)
    if prices is None and run.price_per_1k_input is None and run.base_url is None:
        log.warning("no registry price for %s: costs count as 0 (pass --price_per_1k_input/output)", judge_model)
    if run.max_cost > 0 and price_in == 0 and price_out == 0:
        log.warning("--max_cost has no effect: %s has no price (pass --price_per_1k_input/output)", judge_model)
    return price_in, price_out


def _write_run_json(output_dir: Path, run: JudgeRun, settings: JudgeSettings, judge_profile, prompt, config,
                    objectives, files, engine, controls: bool, excluded: dict, prices: tuple[float, float],
                    cache) -> None:
    """``run.json``: the judge's configuration and the run's settings, beside its verdicts."""
    from metaaligner.io import redact_url, write_json

    write_json(output_dir / "run.json", {"judge_config": settings.fingerprint(),
        **settings.describe(), "profile": judge_profile.name, "prompt_user": prompt.user,
        "prompt_system": prompt.system,
        "reminder": prompt.reminder, "dataset": config.name, "targets": run.targets,
        "objectives": [o.key for o in objectives], "inputs": [str(p) for _, p in files], "limit": run.limit,
        "judge_quality": getattr(engine, "caption", None), "controls": bool(controls),
        "excluded_training_prompts": excluded,
        "base_url": redact_url(run.base_url), "concurrency": run.concurrency, "max_retries": run.max_retries,
        "timeout": run.timeout,
        "price_per_1k_input": prices[0], "price_per_1k_output": prices[1], "max_cost": run.max_cost,
        "cache": str(cache.path) if cache else None, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})


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
