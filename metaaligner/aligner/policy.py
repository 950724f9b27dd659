"""Policy generation: answer a file of queries with any backend, writing the samples format
(``query, goldens, generated_text``) that aligner inference reads. Replaces the released
per-dataset generators; ``inference/policy_generation.py`` only parses flags.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from metaaligner.aligner.inference import FileJob
from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.generation import GenerationParams, generate_all
from metaaligner.io import ResumableWriter, read_records, read_table, write_jsonl
from metaaligner.sharding import ShardSet

POLICY_COLUMNS = ["query", "goldens", "generated_text", "model"]


def load_queries(path: str | Path, query_column: str = "query", goldens_column: str = "goldens",
                 queries_dir: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """Rows ``{row_id, query, goldens}``. A file without a query column (the released IMHI
    outputs) takes its queries from ``queries_dir/<same name>.csv`` by row, after checking that
    its goldens equal that file's ``gpt-3.5-turbo`` column (``metaaligner.samples.join_imhi_queries``)."""
    path = Path(path)
    header = read_records(path)[0]
    if query_column not in header and queries_dir:
        from metaaligner.aligner.inference import table_stem
        from metaaligner.samples import join_imhi_queries

        source = Path(queries_dir) / f"{table_stem(path)}.csv"
        if not source.exists():
            raise DataError(path, f"no query column and no {source} to join queries from")
        rows = join_imhi_queries(path, source)
        query_column, goldens_column = "query", "goldens"
    elif query_column not in header:
        raise DataError(path, f"missing column (found: {', '.join(sorted(header))}); if your file names it "
                        "differently, pass --query_column NAME; for the released IMHI outputs pass --queries_dir "
                        "with the IMHI test instructions", column=query_column)
    else:
        rows = read_table(path, required=[query_column])
    out = []
    for i, row in enumerate(rows[: limit if limit is not None else None]):
        golden = row.get(goldens_column, "")
        golden = "" if golden is None else golden
        if not isinstance(golden, str):
            raise DataError(path, f"expected text, got {type(golden).__name__}", row=i + 1, column=goldens_column)
        out.append({"row_id": i, "query": row[query_column], "goldens": golden})
    return out


@dataclass
class PolicyStats:
    name: str
    rows_in: int = 0
    generated: int = 0
    resumed: int = 0
    empty_outputs: int = 0
    shortened: int = 0      # prompts cut in the middle to fit the context (--long_prompts shorten)
    seconds: float = 0.0
    output: str = ""

    def summary(self) -> str:
        rate = self.generated / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.name}: {self.rows_in} queries, {self.generated} generated, {self.resumed} resumed, "
                f"{self.empty_outputs} empty answers, "
                + (f"{self.shortened} prompts shortened to fit the context, " if self.shortened else "")
                + f"{self.seconds:.1f} s, {rate:.2f} rows/s -> {self.output}")


def policy_fingerprint(model_label: str, params: GenerationParams, extra: dict | None = None) -> dict:
    """Everything that decides a policy answer (what ``--resume`` must find unchanged)."""
    from metaaligner.io import folder_identity

    model = model_label.split(":", 1)[1] if model_label.startswith("embedded:") else model_label
    return {"stage": "policy", "model": model_label, "model_files": folder_identity(model), **params.describe(),
            **(extra or {})}


def _generate_fitted(backend, params: GenerationParams, rows: list[list[str]], render, stats: PolicyStats,
                     used: dict) -> list[str]:
    """Answers to ``render(fields)`` per row, each prompt fitted to the backend's context first
    (``generation.fit``: the first field, then the next, cut in the middle)."""
    from metaaligner.generation.fit import fit_prompts

    if "decoding_used" not in used:
        used["decoding_used"] = (backend.decoding_used(params) if hasattr(backend, "decoding_used")
                                 else {"decoding": params.decoding})
    prompts, cut = fit_prompts(backend, params, rows, render)
    stats.shortened += sum(cut)
    return generate_all(backend, prompts, params)


def _record(writer: ResumableWriter, stats: PolicyStats, params: GenerationParams, used: dict,
            profile: str | None) -> None:
    writer.write_record(profile=profile, **used, generated=stats.generated, resumed=stats.resumed,
                        shortened=stats.shortened, long_prompts=params.long_prompts)


def generate_file(job: FileJob, rows: list[dict], generator, params: GenerationParams, model_label: str,
                  resume: bool = False, dry_run: bool = False, progress: bool = True, overwrite: bool = False,
                  settings: dict | None = None, profile: str | None = None, plan=None) -> PolicyStats:
    """Answer ``rows`` into ``job.output_path`` (resumable, chunks of 4 batches). ``generator``
    may be a factory, called only when some row still needs an answer. The output carries the
    fingerprint of the model, ``params`` and ``settings`` (other knobs, e.g. the chat template):
    another fingerprint on resume, or on a finished output, is an error unless ``overwrite``.
    ``plan`` (``sharding.ShardPlan``): this process's slice as a shard, or ``--merge``."""
    start = time.time()
    stats = PolicyStats(job.name, rows_in=len(rows))
    if dry_run:
        write_jsonl(job.prompts_path, ({"query": r["query"], "prompt": r["query"]} for r in rows))
        stats.output = str(job.prompts_path)
        return stats
    used: dict = {}

    def make_rows(backend, part: list[dict]) -> list[dict]:
        answers = _generate_fitted(backend, params, [[str(r["query"])] for r in part], lambda f: f[0], stats, used)
        return [{**r, "generated_text": a, "model": model_label} for r, a in zip(part, answers)]

    def check(writer) -> None:
        if writer.rows and next(iter(writer.rows.values())).get("model") != model_label:
            writer.close()
            raise MetaAlignerError(f"{writer.partial}: made with another model; delete it or run without --resume")

    shards = ShardSet(job.output_path, len(rows), policy_fingerprint(model_label, params, settings), POLICY_COLUMNS)
    final = _run_sharded(job, rows, shards, plan, generator, make_rows, params, stats, resume, overwrite, progress,
                         check, used, profile)
    stats.empty_outputs = sum(1 for r in final or [] if not str(r["generated_text"]).strip())
    stats.seconds = time.time() - start
    return stats


def _run_sharded(job: FileJob, rows: list[dict], shards: ShardSet, plan, generator, make_rows,
                 params: GenerationParams, stats: PolicyStats, resume: bool, overwrite: bool, progress: bool,
                 check, used: dict, profile: str | None) -> list[dict] | None:
    """``sharding.run_rows`` for one policy file, the counts and run record kept in ``stats``; returns
    the output rows (None when this process wrote its shard only)."""
    from metaaligner.io import row_hash
    from metaaligner.sharding import ShardPlan, run_rows

    plan = plan or ShardPlan()
    writer = None
    if not plan.merge:
        writer = shards.open(plan, {r["row_id"]: row_hash(r) for r in rows}, resume, overwrite)
        check(writer)
    chunk = max(1, params.batch_size * 4)
    stats.resumed, final, out, writer = run_rows(rows, shards, plan, generator, make_rows, chunk, job.name, resume,
                                                 overwrite, progress, writer)
    stats.generated = 0 if plan.merge else len(plan.rows(len(rows))) - stats.resumed
    stats.output = str(job.output_path if final is not None else shards.path(plan))
    _record(out or writer, stats, params, used, profile)
    return final


# ---------------------------------------------------------------- Self-Refinement (Table 3)

SELF_REFINE_TEMPLATE = "self-refine"


def self_refine_file(job: FileJob, rows: list[dict], generator, params: GenerationParams, model_label: str,
                     labels: list[str], descriptions: list[str], resume: bool = False, dry_run: bool = False,
                     progress: bool = True, overwrite: bool = False, profile: str | None = None,
                     settings: dict | None = None, plan=None) -> PolicyStats:
    """Self-Refinement: the policy revises its own answers (``rows`` from ``aligner.load_policy_rows``)
    toward the objectives, prompted by ``templates.SELF_REFINE_PROMPT``. Writes the aligner output
    format (``query, goldens, origin_responses, aligned_responses, aligner, template, aspects``), so
    the judge and Table 3 take it like any aligner's output; ``aligner`` is ``self-refine:<model>``."""
    from metaaligner.aligner.inference import OUTPUT_COLUMNS, PROVENANCE_COLUMNS, normalize_answer
    from metaaligner.registry.templates import self_refine_prompt

    start = time.time()
    stats = PolicyStats(job.name, rows_in=len(rows))
    prompts = {r["row_id"]: self_refine_prompt(str(r["query"]), normalize_answer(r["answer"]), descriptions)
               for r in rows}
    if dry_run:
        write_jsonl(job.prompts_path, ({"query": r["query"], "prompt": prompts[r["row_id"]]} for r in rows))
        stats.output = str(job.prompts_path)
        return stats
    provenance = {"aligner": f"{SELF_REFINE_TEMPLATE}:{model_label}", "template": SELF_REFINE_TEMPLATE,
                  "aspects": ",".join(labels)}
    # the run fingerprint (model, decoding, objective texts) keeps --resume from mixing settings
    fingerprint = policy_fingerprint(model_label, params, {**(settings or {}), "stage": "self_refine", **provenance,
                                                           "objective_texts": list(descriptions)})
    used: dict = {}

    def make_rows(backend, part: list[dict]) -> list[dict]:
        fields = [[normalize_answer(r["answer"]), str(r["query"])] for r in part]
        answers = _generate_fitted(backend, params, fields,
                                   lambda f: self_refine_prompt(f[1], f[0], descriptions), stats, used)
        return [{"row_id": r["row_id"], "query": r["query"], "goldens": r["goldens"], "origin_responses": r["answer"],
                 "aligned_responses": a, **provenance} for r, a in zip(part, answers)]

    shards = ShardSet(job.output_path, len(rows), fingerprint, OUTPUT_COLUMNS + PROVENANCE_COLUMNS)
    final = _run_sharded(job, rows, shards, plan, generator, make_rows, params, stats, resume, overwrite, progress,
                         lambda writer: None, used, profile)
    stats.empty_outputs = sum(1 for r in final or [] if not str(r["aligned_responses"]).strip())
    stats.seconds = time.time() - start
    return stats
