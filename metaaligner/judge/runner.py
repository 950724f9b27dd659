"""Plan and run judge calls over aligner output files: concurrent, cached, resumable, cost-bounded.

A *task* is one (policy file, target column, objective); its rows are judged independently and
written incrementally to ``<output_dir>/<mode>/<policy>/<target>/<objective>.csv`` (through
``ResumableWriter``; a finished task also gets ``<objective>.summary.json``). Every judge call goes
through the SQLite cache first, so a re-run issues 0 requests and an interrupted run continues
where it stopped. Rows whose call failed after all retries are left unwritten (never filled with
another reply); the run then stops with a one-line error and ``--resume`` retries exactly those.

Controls (``plan_control_tasks``, ``metaaligner.judge.controls``) are extra tasks of the same kind:
the control answers judged against the original answers, written under ``<mode>/<policy>/controls/``
and summed up in ``<mode>/<policy>.controls.json``; they never change the requests of the real rows.
A judge that knows its training prompts (the probe) has those rows left out of every task and counted
(``drop_training_prompts``).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.io import ResumableWriter, as_released_text, read_records, read_table, write_csv, write_json
from metaaligner.judge.cache import Completion, JudgeCache, request_key
from metaaligner.judge.controls import CONTROLS, ORIGINAL, control_answer, tally, unusable, verdict_of_ratings
from metaaligner.judge.engine import BudgetExceeded, CostMeter, Decoding, JudgeCallError, estimate_prompt_tokens
from metaaligner.judge.metrics import (
    bootstrap_ci,
    position_consistency,
    summarize_pairwise,
    summarize_ratings,
    verdict_scores,
)
from metaaligner.judge.positions import (
    INVALID,
    candidate_position,
    combine_orders,
    item_id,
    place,
    verdict_from_choice,
)
from metaaligner.judge.registry import JudgePrompt
from metaaligner.registry.objectives import Objective

log = logging.getLogger(__name__)

TARGETS = ("aligned_responses", "origin_responses")
ORIGIN = "origin_responses"
CONTROL_PREFIX = "control:"   # the target of a control task: control:dot, control:refusal, ...
ROW_COLUMNS = ["dataset", "policy", "target", "objective", "objective_name", "unseen", "mode", "row", "item_id",
               "position", "reply", "reminder_reply", "verdict", "score", "verdict_first", "reply_swapped",
               "reminder_reply_swapped", "verdict_swapped", "consistent", "calls", "cached_calls",
               "prompt_tokens", "completion_tokens", "cost_usd", "judge_model", "judge_prompt", "judge_config",
               "judge_parser"]
INPUT_SUFFIXES = (".csv", ".csv.gz")


# ---------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class JudgeSettings:
    mode: str                  # pairwise | rating
    prompt: JudgePrompt
    judge_model: str
    decoding: Decoding
    seed: int = 0              # position seed (per item)
    both_orders: bool = False
    endpoint: str = ""         # the server's base URL, redacted ("" = the OpenAI API): same model name,
    #                            another server, other verdicts
    empty_cells: str = "empty"  # "nan": an empty query/answer/golden is sent as "nan", as the release's str() did

    def describe(self) -> dict[str, Any]:
        # empty_cells only when not the default, so earlier runs' fingerprints stay what they were
        return {"mode": self.mode, "judge_prompt": self.prompt.set_name, "judge_family": self.prompt.family,
                "judge_model": self.judge_model, "decoding": self.decoding.to_dict(), "seed": self.seed,
                "both_orders": self.both_orders, "parser": self.prompt.parser.to_dict(), "endpoint": self.endpoint,
                **({"empty_cells": self.empty_cells} if self.empty_cells != "empty" else {})}

    def fingerprint(self) -> str:
        """A short hash of everything that decides a verdict (prompt texts included): resumed rows
        written under another judge configuration are judged again, never mixed in."""
        p = self.prompt
        return request_key({**self.describe(), "user": p.user, "system": p.system, "reminder": p.reminder})[:12]


@dataclass
class Task:
    dataset: str
    policy: str
    target: str
    objective: Objective
    rows_path: Path
    units: list["Unit"] = field(default_factory=list)
    excluded: int = 0          # rows left out: their query is among the judge's training prompts
    n_rows: int = 0            # input rows of its file (the slices of a sharded run are of these)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.policy, self.target, self.objective.key)

    @property
    def summary_path(self) -> Path:
        return self.rows_path.with_name(self.rows_path.name[: -len(".csv")] + ".summary.json")

    def fingerprint(self, settings: "JudgeSettings") -> dict[str, Any]:
        """What decides this output file's rows: the judge (prompt texts included) and the objective text."""
        o = self.objective
        return {"stage": "judge", **settings.describe(), "judge_config": settings.fingerprint(),
                "dataset": self.dataset, "policy": self.policy, "target": self.target, "objective": o.key,
                "objective_name": o.name, "objective_description": o.description, "unseen": bool(o.unseen)}


def task_shards(task: Task, settings: JudgeSettings):
    """The shards of a task's output file (``metaaligner.sharding``), rows keyed by input row."""
    from metaaligner.sharding import ShardSet

    return ShardSet(task.rows_path, task.n_rows, task.fingerprint(settings), ROW_COLUMNS, key="row")


def slice_task(task: Task, plan) -> Task:
    """The task with only the units of ``plan``'s slice of its file's rows."""
    from dataclasses import replace

    rows = plan.rows(task.n_rows)
    return replace(task, units=[u for u in task.units if u.row in rows])


@dataclass(frozen=True)
class Unit:
    task: tuple[str, str, str]
    row: int
    item: str
    query: str
    candidate: str
    golden: str
    aspects: str

    @property
    def input_hash(self) -> str:
        """The row's identity for resume: a changed answer or question is judged again."""
        from metaaligner.io import row_hash

        return row_hash({"query": self.query, "candidate": self.candidate, "golden": self.golden,
                         "aspects": self.aspects})


def discover_inputs(input_path: str | Path, exclude: Path | None = None) -> list[tuple[str, Path]]:
    """(policy name, file) pairs: one CSV, or every CSV under a folder (policy = relative path
    without suffix). Files under ``exclude`` (the judge's own output folder) are skipped."""
    path = Path(input_path)
    if path.is_file():
        return [(_strip_suffix(path.name), path)]
    if not path.is_dir():
        raise MetaAlignerError(f"{path}: --input is neither a CSV file nor a folder")
    found = []
    exclude = exclude.resolve() if exclude else None
    for file in sorted(path.rglob("*")):
        if not file.is_file() or not file.name.lower().endswith(INPUT_SUFFIXES) or file.name.startswith("."):
            continue
        if exclude is not None and (file.resolve() == exclude or exclude in file.resolve().parents):
            continue
        found.append((_strip_suffix(str(file.relative_to(path))), file))
    if not found:
        raise MetaAlignerError(f"{path}: no .csv or .csv.gz files found")
    return found


def _strip_suffix(name: str) -> str:
    for suffix in INPUT_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_rows(path: Path, mode: str, targets: list[str], limit: int = 0,
              columns: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Rows keyed ``query``/``goldens`` whatever the file calls them (``columns``: role -> file column)."""
    cols = {"query": "query", "goldens": "goldens", **(columns or {})}
    required = [cols["query"], *targets] + ([cols["goldens"]] if mode == "pairwise" else [])
    try:
        rows = read_table(path, required=required)
    except DataError as exc:
        from metaaligner.cli import add_column_hint

        raise add_column_hint(exc, cols)
    rows = rows[:limit] if limit and limit > 0 else rows
    if cols["query"] != "query" or cols["goldens"] != "goldens":
        rows = [{**row, "query": row.get(cols["query"]), "goldens": row.get(cols["goldens"], "")} for row in rows]
    return rows


def plan_tasks(files: list[tuple[str, Path]], dataset: str, objectives: list[Objective], targets: list[str],
               settings: JudgeSettings, output_dir: Path, limit: int = 0,
               columns: dict[str, str] | None = None) -> list[Task]:
    """All (file, target, objective) tasks with their units, in a deterministic order."""
    for target in targets:
        if target not in TARGETS:
            raise MetaAlignerError(f"unknown --target {target!r}; choose from {', '.join(TARGETS)}")
    tasks = []
    for policy, path in files:
        rows = load_rows(path, settings.mode, targets, limit, columns)
        for target in targets:
            for objective in objectives:
                rows_path = output_path(output_dir, settings.mode, policy, target, f"{objective.key}.csv")
                task = Task(dataset, policy, target, objective, rows_path, n_rows=len(rows))
                for i, row in enumerate(rows):
                    golden = row.get("goldens", "") if settings.mode == "pairwise" else ""
                    task.units.append(Unit(task.key, i, item_id(row["query"], golden), row["query"], row[target],
                                           golden, objective.description))
                tasks.append(task)
    return tasks


def drop_training_prompts(tasks: list[Task], is_training_prompt) -> dict[str, int]:
    """Leave out every unit whose query the judge was trained on (``task.excluded`` counts them), so
    no score comes from a prompt the judge saw in training. Returns the input rows left out per policy."""
    seen: dict[str, bool] = {}
    dropped: dict[str, int] = {}
    for task in tasks:
        keep = [u for u in task.units if not seen.setdefault(u.query, bool(is_training_prompt(u.query)))]
        task.excluded = len(task.units) - len(keep)
        task.units = keep
        dropped[task.policy] = max(dropped.get(task.policy, 0), task.excluded)
    return dropped


def output_path(output_dir: Path, *parts: str) -> Path:
    """``output_dir / parts...``, refused when a part (a policy, objective key) would lead outside it."""
    from metaaligner.io import inside

    return inside(output_dir, "/".join(parts), "output file")


def control_rows_path(output_dir: Path, mode: str, policy: str, control: str, objective: str) -> Path:
    return output_path(output_dir, mode, policy, "controls", control, f"{objective}.csv")


def controls_file(output_dir: Path, mode: str, policy: str) -> Path:
    """``<mode>/<policy>.controls.json``: next to the policy's verdict folder."""
    return output_path(output_dir, mode, f"{policy}.controls.json")


def plan_control_tasks(files: list[tuple[str, Path]], dataset: str, objectives: list[Objective],
                       settings: JudgeSettings, output_dir: Path, limit: int = 0,
                       columns: dict[str, str] | None = None) -> list[Task]:
    """One task per (policy file, control, objective). Pairwise: the control answer is the candidate and
    the original answer (``origin_responses``) stands where the golden one does; rating: the control is
    rated, and so is the original (control ``original``) to compare with. Files without
    ``origin_responses`` get no controls."""
    names = list(CONTROLS) + ([ORIGINAL] if settings.mode == "rating" else [])
    tasks = []
    for policy, path in files:
        try:  # "rating": the golden column is not needed here
            rows = load_rows(path, "rating", [ORIGIN], limit, columns)
        except DataError as exc:
            log.warning("no controls for %s: %s", policy, exc)
            continue
        for name in names:
            for objective in objectives:
                task = Task(dataset, policy, CONTROL_PREFIX + name, objective,
                            control_rows_path(output_dir, settings.mode, policy, name, objective.key),
                            n_rows=len(rows))
                for i, row in enumerate(rows):
                    original = str(row[ORIGIN] or "")
                    golden = original if settings.mode == "pairwise" else ""
                    task.units.append(Unit(task.key, i, item_id(row["query"], golden), row["query"],
                                           control_answer(name, original), golden, objective.description))
                tasks.append(task)
    return tasks


def _rating(row: dict[str, Any] | None) -> float | None:
    if row is None or row.get("verdict") == INVALID or str(row.get("score", "")) == "":
        return None
    return float(row["score"])


def control_verdicts(task: Task, rows: dict[tuple, dict[int, dict]], mode: str) -> list[str]:
    """The control's verdict against the original on each row of ``task``."""
    mine = rows[task.key]
    if mode == "pairwise":
        return [str(mine[u.row]["verdict"]) for u in task.units]
    original = rows[(task.policy, CONTROL_PREFIX + ORIGINAL, task.objective.key)]
    return [verdict_of_ratings(_rating(mine.get(u.row)), _rating(original.get(u.row))) for u in task.units]


def write_control_files(output_dir: Path, tasks: list[Task], finished: set[tuple], settings: JudgeSettings
                        ) -> list[dict[str, Any]]:
    """``<mode>/<policy>.controls.json`` for each policy whose control tasks all finished: per objective
    and control, the tally against the original answers, and whether the judge is unusable ('.'
    preferred on more than half of the rows)."""
    out = []
    for policy in dict.fromkeys(t.policy for t in tasks):
        mine = [t for t in tasks if t.policy == policy]
        if not all(t.key in finished for t in mine):
            continue
        rows = {t.key: {int(r["row"]): r for r in read_records(t.rows_path)} for t in mine}
        entries = [{"objective": t.objective.key, "objective_name": t.objective.name,
                    "unseen": bool(t.objective.unseen), "control": t.target[len(CONTROL_PREFIX):],
                    **tally(control_verdicts(t, rows, settings.mode))}
                   for t in mine if t.target != CONTROL_PREFIX + ORIGINAL]
        dot = [e for e in entries if e["control"] == "dot"]
        dot_wins, dot_rows = sum(e["wins"] for e in dot), sum(e["n"] for e in dot)
        info = {"dataset": mine[0].dataset, "policy": policy, "mode": settings.mode,
                "judge_model": settings.judge_model, "judge_config": settings.fingerprint(),
                "rows": len(mine[0].units), "excluded_training_prompts": mine[0].excluded,
                "objectives": len({t.objective.key for t in mine}),
                "dot_wins": dot_wins, "dot_rows": dot_rows, "unusable": unusable(dot_wins, dot_rows),
                "controls": entries}
        write_json(controls_file(output_dir, settings.mode, policy), info)
        out.append(info)
    return out


# ---------------------------------------------------------------------------- running

@dataclass
class _Stats:
    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


@dataclass
class RunResult:
    rows_total: int
    rows_done: int
    rows_skipped_resume: int
    api_calls: int
    cached_calls: int
    invalid: int
    failed: list[tuple[str, str]]
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    stopped: str | None
    summaries: list[dict[str, Any]]
    finished_tasks: int
    total_tasks: int
    excluded: dict[str, int] = field(default_factory=dict)         # input rows left out per policy
    controls: list[dict[str, Any]] = field(default_factory=list)    # the .controls.json contents
    control_run: "RunResult | None" = None

    @property
    def rows_per_s(self) -> float:
        return self.rows_done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"judged {self.rows_done}/{self.rows_total} rows ({self.rows_skipped_resume} resumed) in "
                f"{self.seconds:.1f} s ({self.rows_per_s:.2f} rows/s): {self.api_calls} API calls, "
                f"{self.cached_calls} from cache, {self.invalid} invalid, {len(self.failed)} failed; "
                f"{self.prompt_tokens}+{self.completion_tokens} tokens, ${self.cost_usd:.4f}; "
                f"{self.finished_tasks}/{self.total_tasks} output files complete")


class JudgeRunner:
    """Judges the units of ``tasks`` with a thread pool; see the module docstring."""

    def __init__(self, settings: JudgeSettings, engine: Any, cache: JudgeCache | None, meter: CostMeter,
                 concurrency: int = 8, resume: bool = False, max_failures: int = 20, progress: bool = True,
                 overwrite: bool = False, plan=None):
        from metaaligner.sharding import ShardPlan

        self.settings, self.engine, self.cache, self.meter = settings, engine, cache, meter
        self.plan = plan or ShardPlan()   # sharded: tasks hold this slice's units; their rows go to shards
        self.concurrency = max(1, int(concurrency))
        self.resume, self.max_failures, self.progress = resume, max_failures, progress
        self.overwrite = overwrite
        self._inflight: dict[str, Future] = {}
        self._inflight_lock = threading.Lock()
        self.api_calls = 0
        self.cached_calls = 0
        self._count_lock = threading.Lock()
        self._fingerprint = settings.fingerprint()

    # -------------------------------------------------------------- one call
    def request(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        s = self.settings
        request = {"model": s.judge_model, "messages": messages, **s.decoding.to_dict(),
                   "parser": s.prompt.parser.to_dict()}
        if s.endpoint:  # the cache key names the server too (the OpenAI API keeps its old keys)
            request["endpoint"] = s.endpoint
        return request

    def call(self, messages: list[dict[str, str]], stats: _Stats) -> Completion:
        request = self.request(messages)
        key = request_key(request)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self._cached(stats, hit)
                return hit
        with self._inflight_lock:
            pending = self._inflight.get(key)
            if pending is None:
                pending = Future()
                self._inflight[key] = pending
                owner = True
            else:
                owner = False
        if not owner:  # the same request is in flight for another row: share its reply, do not re-send
            completion = pending.result()
            self._cached(stats, completion)
            return completion
        try:
            estimate = self.meter.estimate(messages, self.settings.decoding.reply_budget)
            if not self.meter.reserve(estimate):
                raise BudgetExceeded()
            try:
                completion = self.engine.complete(messages, self.settings.decoding)
            except JudgeCallError as exc:
                self.meter.release(estimate)
                if self.cache is not None:
                    self.cache.record_failure(key, self.settings.judge_model, str(exc))
                raise
            except BaseException:
                self.meter.release(estimate)
                raise
            cost = self.meter.settle(estimate, completion.prompt_tokens, completion.completion_tokens)
            if self.cache is not None:
                self.cache.put(key, request, completion)
            with self._count_lock:
                self.api_calls += 1
            stats.calls += 1
            stats.prompt_tokens += completion.prompt_tokens
            stats.completion_tokens += completion.completion_tokens
            stats.cost += cost
            pending.set_result(completion)
            return completion
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)

    def _cached(self, stats: _Stats, completion: Completion) -> None:
        with self._count_lock:
            self.cached_calls += 1
        stats.cached_calls += 1
        stats.prompt_tokens += completion.prompt_tokens
        stats.completion_tokens += completion.completion_tokens

    def ask(self, messages: list[dict[str, str]], stats: _Stats) -> tuple[int | None, str, str]:
        """(parsed answer or None, reply, reminder reply): one call, plus one format reminder if the
        reply does not parse."""
        prompt = self.settings.prompt
        first = self.call(messages, stats)
        parsed = prompt.parser.parse(first.text)
        reminder_reply = ""
        if parsed is None and prompt.reminder:
            second = self.call(prompt.reminder_messages(messages, first.text), stats)
            reminder_reply = second.text
            parsed = prompt.parser.parse(second.text)
        return parsed, first.text, reminder_reply

    def ask_verdict(self, messages: list[dict[str, str]], position: int, stats: _Stats) -> tuple[str, str, str]:
        """(verdict, reply, reminder reply) of the candidate in ``position``; the released substring
        parser reads every reply (no reminder), a regex parser goes through ``ask``."""
        parser = self.settings.prompt.parser
        if parser.never_invalid:
            reply = self.call(messages, stats).text
            return parser.verdict(reply, position), reply, ""
        choice, reply, reminder = self.ask(messages, stats)
        return verdict_from_choice(choice, position), reply, reminder

    # -------------------------------------------------------------- one row
    def unit_messages(self, unit: Unit, position: int | None) -> list[dict[str, str]]:
        prompt = self.settings.prompt
        cell = as_released_text if self.settings.empty_cells == "nan" else (lambda value: value)
        query, candidate, golden = cell(unit.query), cell(unit.candidate), cell(unit.golden)
        if self.settings.mode == "rating":
            return prompt.messages(query=query, output=candidate, aspects=unit.aspects)
        output1, output2 = place(candidate, golden, position)
        return prompt.messages(query=query, output1=output1, output2=output2, aspects=unit.aspects)

    def judge_unit(self, unit: Unit, task: Task) -> dict[str, Any]:
        stats = _Stats()
        out: dict[str, Any] = {"dataset": task.dataset, "policy": task.policy, "target": task.target,
                               "objective": task.objective.key, "objective_name": task.objective.name,
                               "unseen": int(task.objective.unseen), "mode": self.settings.mode,
                               "row": unit.row, "item_id": unit.item}
        if self.settings.mode == "rating":
            score, reply, reminder = self.ask(self.unit_messages(unit, None), stats)
            out.update(position="", reply=reply, reminder_reply=reminder,
                       verdict=INVALID if score is None else str(score), score="" if score is None else score)
        else:
            position = candidate_position(unit.item, self.settings.seed)
            first, reply, reminder = self.ask_verdict(self.unit_messages(unit, position), position, stats)
            out.update(position=position, reply=reply, reminder_reply=reminder, verdict_first=first, verdict=first)
            if self.settings.both_orders:
                swapped_pos = 3 - position
                swapped, reply2, reminder2 = self.ask_verdict(self.unit_messages(unit, swapped_pos), swapped_pos,
                                                              stats)
                out.update(reply_swapped=reply2, reminder_reply_swapped=reminder2, verdict_swapped=swapped,
                           verdict=combine_orders(first, swapped),
                           consistent="" if INVALID in (first, swapped) else int(first == swapped))
        out.update(calls=stats.calls, cached_calls=stats.cached_calls, prompt_tokens=stats.prompt_tokens,
                   completion_tokens=stats.completion_tokens, cost_usd=round(stats.cost, 8),
                   judge_model=self.settings.judge_model, judge_prompt=self.settings.prompt.set_name,
                   judge_config=self._fingerprint, judge_parser=self.settings.prompt.parser.name,
                   __input__=unit.input_hash)
        return out

    # -------------------------------------------------------------- the run
    def run(self, tasks: list[Task]) -> RunResult:
        """Judge every unit not yet written; finish each complete task (its output file and summary,
        or, sharded, its shard)."""
        start = time.time()
        writers = self._open_writers(tasks)
        todo, skipped = [], 0
        for task in tasks:
            done = _done_rows(writers[task.key], self._fingerprint)
            for unit in task.units:
                if unit.row in done and writers[task.key].is_done(unit.row, unit.input_hash):
                    skipped += 1
                else:
                    todo.append(unit)
        counts = self._judge_all(todo, {task.key: task for task in tasks}, writers)
        summaries, finished_tasks = self._finish(tasks, writers)
        return RunResult(rows_total=sum(len(t.units) for t in tasks), rows_done=counts["rows_done"],
                         rows_skipped_resume=skipped, api_calls=self.api_calls, cached_calls=self.cached_calls,
                         invalid=counts["invalid"], failed=counts["failed"], cost_usd=self.meter.spent,
                         prompt_tokens=self.meter.prompt_tokens, completion_tokens=self.meter.completion_tokens,
                         seconds=time.time() - start, stopped=counts["stopped"], summaries=summaries,
                         finished_tasks=finished_tasks, total_tasks=len(tasks))

    def _judge_all(self, todo: list[Unit], by_key: dict[tuple, Task], writers: dict) -> dict[str, Any]:
        """Judge ``todo`` on the thread pool, appending finished rows to their writers as they come;
        stops on the spending cap or after ``max_failures`` failed calls. Returns the counts."""
        from tqdm.auto import tqdm

        counts: dict[str, Any] = {"failed": [], "stopped": None, "invalid": 0, "rows_done": 0}
        bar = tqdm(total=len(todo), desc="judging", unit="row", disable=not self.progress, dynamic_ncols=True)
        units = iter(todo)
        pending: dict[Future, Unit] = {}
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge") as pool:
            try:
                while True:
                    while counts["stopped"] is None and len(pending) < 2 * self.concurrency:
                        unit = next(units, None)
                        if unit is None:
                            break
                        pending[pool.submit(self.judge_unit, unit, by_key[unit.task])] = unit
                    if not pending:
                        break
                    finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    batch = self._collect(finished, pending, counts)
                    for task_key, rows in batch.items():  # one flush + fsync per output file and round
                        writers[task_key].append(rows)
                    if batch:
                        bar.update(sum(len(rows) for rows in batch.values()))
                        bar.set_postfix(cost=f"${self.meter.spent:.4f}", calls=self.api_calls,
                                        cached=self.cached_calls, refresh=False)
            except BaseException:  # Ctrl-C: drop queued rows, keep what is written (--resume continues)
                bar.close()  # the error line starts on a line of its own
                for future in pending:
                    future.cancel()
                for writer in writers.values():
                    writer.close()
                raise
        bar.close()
        return counts

    def _collect(self, finished, pending: dict[Future, Unit], counts: dict[str, Any]) -> dict[tuple, list[dict]]:
        """The rows of the finished futures by task; failures and the spending cap counted in ``counts``."""
        batch: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for future in finished:
            unit = pending.pop(future)
            try:
                row = future.result()
            except BudgetExceeded:
                counts["stopped"] = counts["stopped"] or "max_cost"
                continue
            except JudgeCallError as exc:
                counts["failed"].append((f"{'/'.join(unit.task)} row {unit.row}", str(exc)))
                if len(counts["failed"]) >= self.max_failures and counts["stopped"] is None:
                    counts["stopped"] = "failures"
                continue
            batch.setdefault(unit.task, []).append(row)
            counts["rows_done"] += 1
            counts["invalid"] += row["verdict"] == INVALID
        return batch

    def _finish(self, tasks: list[Task], writers: dict) -> tuple[list[dict[str, Any]], int]:
        """Finish every task whose units are all written: its output file and summary (sharded: its
        shard, summed up after the merge); the others' writers are closed for ``--resume``."""
        summaries, finished_tasks = [], 0
        for task in tasks:
            writer = writers[task.key]
            if all(u.row in _done_rows(writer, self._fingerprint) and writer.is_done(u.row, u.input_hash)
                   for u in task.units):
                rows = writer.finish(order=[u.row for u in task.units])
                finished_tasks += 1
                if not self.plan.sharded:
                    from metaaligner.sharding import remove_shards

                    remove_shards(task.rows_path)  # an earlier sharded run's, now covered
                    summary = summarize_task(task, rows, self.settings)
                    write_json(task.summary_path, summary)
                    summaries.append(summary)
            else:
                writer.close()
        return summaries, finished_tasks

    def _open_writers(self, tasks: list[Task]) -> dict[tuple[str, str, str], ResumableWriter]:
        """One locked writer per output file (sharded: per shard); on an error none stays locked."""
        writers: dict[tuple[str, str, str], ResumableWriter] = {}
        try:
            for task in tasks:
                writers[task.key] = task_shards(task, self.settings).open(
                    self.plan, {u.row: u.input_hash for u in task.units}, self.resume, self.overwrite)
        except BaseException:
            for writer in writers.values():
                writer.close()
            raise
        return writers


def merge_task_shards(tasks: list[Task], settings: JudgeSettings, plan, overwrite: bool = False
                      ) -> list[dict[str, Any]]:
    """Each task's output file from its shards (``plan``: the slices of this launched run, waited
    for; ``--merge``: every shard there is, checked), in input order, with its summary; the shards
    removed. Returns the summaries."""
    from metaaligner.sharding import remove_shards

    summaries = []
    for task in tasks:
        shards = task_shards(task, settings)
        paths = shards.run_paths(plan) if plan.sharded else None
        if paths:
            shards.wait(paths)
        rows, _ = shards.write_output(shards.collect({u.row: u.input_hash for u in task.units}, paths),
                                      [u.row for u in task.units], overwrite)
        remove_shards(task.rows_path)
        summary = summarize_task(task, rows, settings)
        write_json(task.summary_path, summary)
        summaries.append(summary)
    return summaries


def _done_rows(writer: ResumableWriter, fingerprint: str) -> set:
    return {key for key, row in writer.rows.items() if row.get("judge_config") == fingerprint}


# ---------------------------------------------------------------------------- summaries

def summarize_task(task: Task, rows: list[dict[str, Any]], settings: JudgeSettings) -> dict[str, Any]:
    summary: dict[str, Any] = {"dataset": task.dataset, "policy": task.policy, "target": task.target,
                               "objective": task.objective.key, "objective_name": task.objective.name,
                               "unseen": task.objective.unseen, **settings.describe(),
                               "judge_config": settings.fingerprint(), "rows_file": str(task.rows_path)}
    verdicts = [str(r["verdict"]) for r in rows]
    if settings.mode == "pairwise":
        summary.update(summarize_pairwise(verdicts))
        summary["win_half_tie_ci95"] = list(bootstrap_ci(verdict_scores(verdicts, "win_half_tie"), seed=settings.seed))
        summary["candidate_in_position_1"] = sum(1 for r in rows if int(r["position"]) == 1)
        if settings.both_orders:
            summary["position_consistency"] = position_consistency([r["verdict_first"] for r in rows],
                                                                   [r["verdict_swapped"] for r in rows])
    else:
        scores = [None if r["verdict"] == INVALID else int(r["score"]) for r in rows]
        summary.update(summarize_ratings(scores))
        valid = [s for s in scores if s is not None]
        summary["mean_ci95"] = list(bootstrap_ci(valid, seed=settings.seed)) if valid else None
    summary["excluded_training_prompts"] = task.excluded
    summary["empty_candidates"] = sum(1 for u in task.units if not u.candidate.strip())
    summary["empty_goldens"] = sum(1 for u in task.units if settings.mode == "pairwise" and not u.golden.strip())
    summary["prompt_tokens"] = sum(int(r.get("prompt_tokens") or 0) for r in rows)
    summary["completion_tokens"] = sum(int(r.get("completion_tokens") or 0) for r in rows)
    return summary


def write_run_summary(output_dir: Path, summaries: list[dict[str, Any]], judge_config: str | None = None) -> None:
    """``summary.json`` (all finished tasks of the output folder judged with ``judge_config``, when
    given: never another judge's) and a flat ``summary.csv``."""
    all_summaries = []
    for path in sorted(output_dir.rglob("*.summary.json")):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(summary, dict) or str(summary.get("target", "")).startswith(CONTROL_PREFIX):
            continue  # controls have their own <policy>.controls.json
        if judge_config is None or summary.get("judge_config") == judge_config:
            all_summaries.append(summary)
    if not all_summaries:
        all_summaries = summaries
    write_json(output_dir / "summary.json", all_summaries)
    columns = ["mode", "dataset", "policy", "target", "objective", "n", "wins", "ties", "losses", "invalid",
               "win", "win_half_tie", "win_plus_tie", "position_consistency", "valid", "mean", "judge_model",
               "judge_prompt"]
    write_csv(output_dir / "summary.csv", all_summaries, columns)


# ---------------------------------------------------------------------------- dry run

def dry_run_plan(tasks: list[Task], runner: JudgeRunner, output_dir: Path | None = None,
                 resume: bool = False) -> dict[str, Any]:
    """Count the calls a run would make (first calls only; format reminders come on top), how many
    the cache already holds, and an upper cost estimate. Writes the calls to ``dry_run.calls.jsonl``."""
    settings = runner.settings
    orders = 2 if settings.mode == "pairwise" and settings.both_orders else 1
    calls = cached = 0
    est_prompt_tokens = 0
    first_messages = None
    records = []
    for task in tasks:
        done = set()
        if resume:
            peek = ResumableWriter(task.rows_path, ROW_COLUMNS, key="row", resume=True,
                                   fingerprint=task.fingerprint(settings), lock=False)
            hashes = {u.row: u.input_hash for u in task.units}
            done = {r for r in _done_rows(peek, settings.fingerprint()) if peek.is_done(r, hashes.get(r, ""))}
        for unit in task.units:
            if unit.row in done:
                continue
            if settings.mode == "rating":
                positions = [None]
            else:
                positions = [candidate_position(unit.item, settings.seed)]
                if settings.both_orders:
                    positions.append(3 - positions[0])
            for position in positions:
                messages = runner.unit_messages(unit, position)
                first_messages = first_messages or messages
                calls += 1
                if runner.cache is not None and request_key(runner.request(messages)) in runner.cache:
                    cached += 1
                    continue
                est_prompt_tokens += estimate_prompt_tokens(messages)
                records.append({"policy": task.policy, "target": task.target, "objective": task.objective.key,
                                "row": unit.row, "position": position, "messages": messages})
    to_call = calls - cached
    est_output = to_call * settings.decoding.reply_budget
    meter = runner.meter
    info = {"outputs": len(tasks), "rows": sum(len(t.units) for t in tasks), "orders": orders, "calls": calls,
            "cached": cached, "to_call": to_call, "est_prompt_tokens": est_prompt_tokens,
            "max_output_tokens": est_output, "price_per_1k_input": meter.price_in,
            "price_per_1k_output": meter.price_out, "est_cost_usd": meter.cost(est_prompt_tokens, est_output),
            "first_call": first_messages, "judge_model": settings.judge_model,
            "judge_prompt": settings.prompt.set_name, "parser": settings.prompt.parser.name,
            "decoding": {k: v for k, v in settings.decoding.to_dict().items() if v is not None}}
    if output_dir is not None:
        from metaaligner.io import write_jsonl

        write_jsonl(Path(output_dir) / "dry_run.calls.jsonl", records)
        info["calls_file"] = str(Path(output_dir) / "dry_run.calls.jsonl")
    return info


def format_dry_run(info: dict[str, Any], judge_model: str) -> str:
    lines = [f"dry run: {info['outputs']} output files, {info['rows']} rows, {info['calls']} judge calls "
             f"({info['orders']} order(s) per pair; up to as many format reminders on top)",
             f"  already cached: {info['cached']}; to call: {info['to_call']}",
             f"  estimated input tokens <= {info['est_prompt_tokens']:,}; "
             f"output tokens <= {info['max_output_tokens']:,}",
             f"  price for {judge_model}: ${info['price_per_1k_input']:g} in / ${info['price_per_1k_output']:g} out "
             f"per 1k tokens -> estimated cost <= ${info['est_cost_usd']:.4f}"]
    if "decoding" in info:
        lines.append(f"  judge: {info['judge_model']}, prompts {info['judge_prompt']}, parser {info['parser']}, "
                     f"profile {info.get('profile', '?')}; decoding sent: {info['decoding'] or 'none (API defaults)'}")
    if info.get("calls_file"):
        lines.append(f"  every call written to {info['calls_file']}")
    if info.get("first_call"):
        lines.append("first call:")
        for message in info["first_call"]:
            lines.append(f"  [{message['role']}] {message['content']}")
    return "\n".join(lines)

