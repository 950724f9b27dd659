"""Every row-wise stage shards the same way (reward labelling, policy generation, aligner inference,
the baselines' inference, the judge, SePO token scoring).

A process writes a contiguous slice of the input rows (``distributed.shard_range``) into a *shard*
beside the stage's output, ``<output>.rows<a>-<b>of<n>.jsonl``: rows ``a`` to ``b - 1`` (0-based) of
``n`` input rows. A shard is a ``ResumableWriter`` output, so it carries the run fingerprint and each
row's input hash in its sidecar, and it is there only once complete. Three ways to run (``plan_shards``):

- one process: the output is written directly, as always (``--resume`` also takes rows back from
  shards of an earlier sharded run);
- ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1): each rank writes its slice's shard; rank 0
  waits until every shard of this run is complete, then merges them in input order into the output;
- ``--shard I/N`` (a Slurm array, Ray tasks: jobs started on their own): the job writes slice ``I`` of
  ``N`` and exits, never waiting for another; one later run with ``--merge`` (the same flags, without
  ``--shard``) checks the set and writes the output.

A merge refuses shards of another fingerprint (the settings differ), of another number of input rows,
or made from other input rows, and names the missing slices. Shards are named by the rows they cover,
not by the process count, so ``--resume`` at another count reuses every finished row (by input-row
identity: row key and input hash). After a merge every shard of the output is removed, with its
partial file, sidecar and lock.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from metaaligner.distributed import dist_env, shard_range
from metaaligner.errors import MetaAlignerError

log = logging.getLogger(__name__)

SHARD_HELP = ("I/N: do only slice I (0-based) of N of the input rows, written as a shard file beside the "
              "output (<output>.rows<a>-<b>of<n>.jsonl), and exit without waiting for the others: for jobs a "
              "scheduler starts on their own (a Slurm array, Ray tasks); then run once with --merge. Under "
              "torchrun/accelerate launch the ranks take their slices by themselves")
MERGE_HELP = ("merge the shards of the --shard I/N jobs into the output, in input order (give the same flags as "
              "those jobs, without --shard); refuses a missing shard or one made with other settings or inputs")
# config fields that never decide a row: every stage leaves them out of its run fingerprint
NOT_IN_FINGERPRINT = ("shard", "merge")
WAIT_TIMEOUT_S = 7200.0
_NAME = r"\.rows(\d+)-(\d+)of(\d+)\.jsonl"


# ---------------------------------------------------------------- which slice this process writes

@dataclass(frozen=True)
class ShardPlan:
    index: int = 0
    count: int = 1
    launched: bool = False    # a rank of torchrun/accelerate launch: rank 0 waits for every shard and merges
    given: bool = False       # --shard I/N: writes its shard and exits
    merge: bool = False       # --merge: only merges the shards that are there

    @property
    def sharded(self) -> bool:
        """Whether this process writes a shard rather than the output."""
        return self.launched or self.given

    @property
    def merges_after(self) -> bool:
        """Whether this process writes the output after its slice (rank 0 of a launched run)."""
        return self.launched and self.index == 0

    def rows(self, n_rows: int) -> range:
        return shard_range(n_rows, self.index, self.count) if self.sharded else range(n_rows)

    @property
    def label(self) -> str:
        return f"shard {self.index}/{self.count}" if self.sharded else "one process"


def parse_shard(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
        raise MetaAlignerError(f"--shard must be I/N with 0 <= I < N (slice I of N, e.g. --shard 0/4), got {value!r}")
    return int(match[1]), int(match[2])


def plan_shards(shard: str | None = None, merge: bool = False) -> ShardPlan:
    """This process's plan from ``--shard``/``--merge`` and the launcher's ``RANK``/``WORLD_SIZE``."""
    rank, world, _ = dist_env()
    if shard and merge:
        raise MetaAlignerError("--shard and --merge do not go together: run the --shard I/N jobs, then one --merge")
    if (shard or merge) and world > 1:
        raise MetaAlignerError(f"--shard/--merge are for jobs started on their own; under torchrun/accelerate launch "
                               f"(WORLD_SIZE={world}) every rank takes its slice and rank 0 merges")
    if merge:
        return ShardPlan(merge=True)
    if shard:
        index, count = parse_shard(shard)
        return ShardPlan(index, count, given=True)
    return ShardPlan(rank, world, launched=world > 1)


def rank_device(device: str | None, plan: ShardPlan) -> str | None:
    """A launched rank on a GPU machine takes its own GPU (``cuda:LOCAL_RANK``) unless one is named."""
    if not plan.launched or device not in (None, "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return f"cuda:{dist_env()[2] % torch.cuda.device_count()}"


# ---------------------------------------------------------------- shard files

def shard_path(output: str | Path, rows: range, n_rows: int) -> Path:
    """``<output>.rows<start>-<stop>of<n>.jsonl``: named by the rows it covers, not the process count."""
    output = Path(output)
    return output.with_name(f"{output.name}.rows{rows.start}-{rows.stop}of{n_rows}.jsonl")


def is_shard_name(name: str) -> bool:
    """Whether a file name is a shard's (or its partial file's, lock's): later stages skip them as inputs."""
    return re.search(_NAME + r"(\.partial\.jsonl|\.lock)?$", name) is not None


def shard_slice(path: Path) -> tuple[int, int, int]:
    """(start, stop, input rows) of a shard file."""
    match = re.search(_NAME + "$", path.name)
    return int(match[1]), int(match[2]), int(match[3])


def shard_files(output: str | Path, n_rows: int | None = None) -> list[Path]:
    """Every shard of ``output`` that is there (as its finished path), finished or partial, of any
    process count; only those over ``n_rows`` input rows when given."""
    from metaaligner.io import glob_escape

    output = Path(output)
    name = re.compile(re.escape(output.name) + _NAME)
    found = {p.name.removesuffix(".partial.jsonl").removesuffix(".lock")
             for p in output.parent.glob(glob_escape(output.name) + ".rows*")}
    paths = [output.with_name(n) for n in found if name.fullmatch(n)]
    paths = [p for p in paths if n_rows is None or shard_slice(p)[2] == n_rows]
    return sorted(paths, key=lambda p: (shard_slice(p)[2], shard_slice(p)[0], shard_slice(p)[1]))


def remove_shards(output: str | Path, n_rows: int | None = None) -> None:
    """Every shard of ``output`` with its partial file, sidecar and a lock left by a killed run."""
    from metaaligner.io import remove_output

    for path in shard_files(output, n_rows):
        remove_output(path)
        for side in (path.with_name(path.name + ".partial.jsonl"), path.with_name(path.name + ".lock")):
            with contextlib.suppress(FileNotFoundError):
                side.unlink()


def _sidecar(path: Path) -> dict[str, Any]:
    """The ``ResumableWriter`` sidecar of ``path`` (``.<name>.fingerprint.json``), ``{}`` when none."""
    try:
        meta = json.loads(path.with_name(f".{path.name}.fingerprint.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def finished_fingerprint(path: Path) -> dict[str, Any] | None:
    """The fingerprint a finished output (or shard) was made with; None while it is not finished."""
    out = _sidecar(path).get("output") if path.exists() else None
    return out.get("fingerprint") if isinstance(out, dict) and isinstance(out.get("fingerprint"), dict) else None


def read_finished(path: Path, key: str) -> dict[Any, dict[str, Any]]:
    """Rows of a finished ``ResumableWriter`` output by key, each with its input hash (read only)."""
    from metaaligner.io import INPUT_HASH, read_records

    keys = (_sidecar(path).get("output") or {}).get("rows") or []
    rows = read_records(path) if path.stat().st_size else []
    if len(rows) != len(keys):
        return {}
    return {k: {**row, key: k, INPUT_HASH: h} for row, (k, h) in zip(rows, keys)}


def read_partial(path: Path, fingerprint: dict[str, Any], key: str) -> dict[Any, dict[str, Any]]:
    """Complete rows of ``path``'s partial file made with ``fingerprint`` (read only; a cut last line
    is left for its writer)."""
    partial = path.with_name(path.name + ".partial.jsonl")
    if not partial.exists() or _sidecar(path).get("partial") != fingerprint:
        return {}
    rows = {}
    for line in partial.read_bytes().split(b"\n"):
        try:
            row = json.loads(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            break
        rows[row[key]] = row
    return rows


def _ranges(keys: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``1-3, 6`` (1-based input rows)."""
    out, keys = [], sorted(keys)
    for k in keys:
        if out and out[-1][1] == k - 1:
            out[-1][1] = k
        else:
            out.append([k, k])
    return ", ".join(f"{a + 1}" if a == b else f"{a + 1}-{b + 1}" for a, b in out)


def _count_of(start: int, stop: int, n_rows: int) -> int | None:
    """The smallest process count whose slices include rows ``start``-``stop`` (None: none does)."""
    for count in range(1, n_rows + 1):
        index = start * count // n_rows if n_rows else 0
        for i in (index, index + 1):
            if i < count and shard_range(n_rows, i, count) == range(start, stop):
                return count
    return None


# ---------------------------------------------------------------- the shards of one output

class ShardSet:
    """The shards of one stage output over ``n_rows`` input rows, made with ``fingerprint``; rows are
    keyed by ``key`` (the 0-based input row)."""

    def __init__(self, output: str | Path, n_rows: int, fingerprint: dict[str, Any], columns: list[str],
                 key: str = "row_id"):
        from metaaligner.io import _canonical

        self.output, self.n_rows, self.columns, self.key = Path(output), n_rows, columns, key
        self.fingerprint = _canonical(fingerprint)

    def path(self, plan: ShardPlan) -> Path:
        return shard_path(self.output, plan.rows(self.n_rows), self.n_rows)

    def run_paths(self, plan: ShardPlan) -> list[Path]:
        """The shard of every slice of this run."""
        return [shard_path(self.output, shard_range(self.n_rows, i, plan.count), self.n_rows)
                for i in range(plan.count)]

    def open(self, plan: ShardPlan, hashes: dict[Any, str], resume: bool = False, overwrite: bool = False):
        """The writer of this process: the output itself (one process) or its shard; with ``resume``
        it starts with every finished row of other shards (any count) and of a finished output made
        with the same fingerprint from the same input rows."""
        from metaaligner.io import ResumableWriter, remove_output

        if plan.sharded:
            path = self.path(plan)
            if not resume:  # a shard is an intermediate file: a fresh run replaces it
                remove_output(path)
            writer = ResumableWriter(path, self.columns, key=self.key, resume=resume, fingerprint=self.fingerprint,
                                     overwrite=not resume)
            skip = set(self.run_paths(plan))
        else:
            writer = ResumableWriter(self.output, self.columns, key=self.key, resume=resume,
                                     fingerprint=self.fingerprint, overwrite=overwrite)
            skip = {self.output}
        if resume:
            mine = {k: h for k, h in hashes.items() if k in plan.rows(self.n_rows)} if plan.sharded else hashes
            try:
                rows = [row for row in self.reusable(mine, skip)
                        if not writer.is_done(row[self.key], mine[row[self.key]])]
                if rows:
                    writer.append(rows)
            except BaseException:
                writer.close()
                raise
        return writer

    def reusable(self, hashes: dict[Any, str], skip: set[Path]) -> list[dict[str, Any]]:
        """Rows of ``hashes``' keys, with the same input hash, from the shards (finished or partial) and
        the finished output there are, except the files in ``skip`` (this run's own)."""
        from metaaligner.io import INPUT_HASH

        found: dict[Any, dict[str, Any]] = {}
        for path in [*shard_files(self.output, self.n_rows), self.output]:
            if path in skip:
                continue
            rows = read_finished(path, self.key) if finished_fingerprint(path) == self.fingerprint else {}
            rows = rows or read_partial(path, self.fingerprint, self.key)
            for k, row in rows.items():
                if k in hashes and row.get(INPUT_HASH) == hashes[k]:
                    found.setdefault(k, row)
        return list(found.values())

    def wait(self, paths: list[Path], timeout_s: float = WAIT_TIMEOUT_S, poll_s: float = 1.0) -> None:
        """Until every shard of ``paths`` is finished with this run's fingerprint (rank 0 of a launched
        run; a shard an earlier run left with other settings is being replaced, not merged)."""
        deadline = time.monotonic() + timeout_s
        while not all(finished_fingerprint(p) == self.fingerprint for p in paths):
            if time.monotonic() > deadline:
                missing = ", ".join(p.name for p in paths if finished_fingerprint(p) != self.fingerprint)
                raise MetaAlignerError(f"{self.output}: timed out after {timeout_s:g} s waiting for the other ranks' "
                                       f"shards ({missing}); ranks started by hand, not by torchrun, never come: "
                                       "start such jobs with --shard I/N and merge with --merge")
            time.sleep(poll_s)

    def collect(self, hashes: dict[Any, str], paths: list[Path] | None = None) -> dict[Any, dict[str, Any]]:
        """Every expected row (the keys of ``hashes``) from the shards ``paths`` (None: every shard of the
        output there is), checked: each shard finished, over this many input rows, made with this
        fingerprint, each row from the same input row; an error names what is missing or mismatched."""
        from metaaligner.io import INPUT_HASH, fingerprint_diff

        rows: dict[Any, dict[str, Any]] = {}
        if paths is None:  # --merge: every shard there is, after the rows of an output merged before (if any)
            paths = shard_files(self.output)
            if finished_fingerprint(self.output) == self.fingerprint:
                rows = {k: row for k, row in read_finished(self.output, self.key).items()
                        if k in hashes and row[INPUT_HASH] == hashes[k]}
        unfinished = []
        for path in paths:
            start, stop, n_rows = shard_slice(path)
            if n_rows != self.n_rows:
                raise MetaAlignerError(f"{path}: a shard of {n_rows} input rows, but the input has {self.n_rows} "
                                       "(another input or --limit); delete it, or merge with that input")
            made_with = finished_fingerprint(path)
            if made_with is None:
                unfinished.append(path)
                continue
            if made_with != self.fingerprint:
                raise MetaAlignerError(f"{path}: a shard made with other settings "
                                       f"({fingerprint_diff(made_with, self.fingerprint)}); re-run that slice with "
                                       "these flags, or delete it")
            for k, row in read_finished(path, self.key).items():
                if k in hashes and row[INPUT_HASH] != hashes[k]:
                    raise MetaAlignerError(f"{path}: input row {k + 1} changed since this shard was written; "
                                           "re-run that slice (--resume keeps its unchanged rows)")
                rows.setdefault(k, row)
        missing = [k for k in hashes if k not in rows]
        if missing:
            raise MetaAlignerError(self._missing_line(missing, paths, unfinished))
        return rows

    def _missing_line(self, missing: list[int], paths: list[Path], unfinished: list[Path]) -> str:
        """Which input rows no finished shard holds, and the slices (of the process count the shards
        there were made for) that would hold them."""
        counts = sorted({c for p in paths if (c := _count_of(*shard_slice(p)[:2], self.n_rows)) is not None})
        names = []
        for count in counts[:1]:
            for i in range(count):
                rows = shard_range(self.n_rows, i, count)
                if any(k in rows for k in missing):
                    path = shard_path(self.output, rows, self.n_rows)
                    state = "not finished" if path in unfinished else "missing"
                    names.append(f"shard {i}/{count} ({path.name}) is {state}")
        where = "; ".join(names) or "no shard of it is there"
        return (f"{self.output}: cannot merge: input rows {_ranges(missing)} of {self.n_rows} are in no finished "
                f"shard: {where}; run the missing --shard jobs (--resume keeps their finished rows), then --merge "
                "again")

    def write_output(self, rows: dict[Any, dict[str, Any]], order: list, overwrite: bool = False):
        """Write the merged rows in ``order`` to the output, as one process would; returns (rows, writer)."""
        from metaaligner.io import ResumableWriter

        writer = ResumableWriter(self.output, self.columns, key=self.key, fingerprint=self.fingerprint,
                                 overwrite=overwrite)
        try:
            writer.append(rows[k] for k in order if k in rows)
        except BaseException:
            writer.close()
            raise
        return writer.finish(order=order), writer

    def complete(self, plan: ShardPlan, hashes: dict[Any, str], order: list, final: list | None = None,
                 writer=None, overwrite: bool = False, timeout_s: float = WAIT_TIMEOUT_S):
        """After this process's rows: (output rows, the output's writer), or (None, None) when this
        process wrote a shard only. One process: the output is written; stale shards go. Rank 0 of a
        launched run: waits for every shard, merges, removes them. ``--merge``: merges what is there."""
        if plan.sharded and not plan.merges_after:
            return None, None
        if plan.sharded or plan.merge:
            paths = self.run_paths(plan) if plan.sharded else None
            if plan.sharded:
                self.wait(paths, timeout_s)
            final, writer = self.write_output(self.collect(hashes, paths), order, overwrite)
        remove_shards(self.output)
        return final, writer


def run_rows(rows: list[dict[str, Any]], shards: ShardSet, plan: ShardPlan, generator, make_rows, chunk: int,
             desc: str, resume: bool = False, overwrite: bool = False, progress: bool = True, writer=None,
             hashes: dict[Any, str] | None = None):
    """``make_rows(backend, part)`` over this process's slice of ``rows`` (all of them for one process)
    in chunks of ``chunk`` rows, as ``io.run_resumable`` does, then ``ShardSet.complete``. ``writer``:
    one already opened with ``shards.open``; ``hashes``: each row's input hash by key (default:
    ``io.row_hash`` of the row). Returns (rows already done, output rows or None, the output's writer
    or None, this process's writer)."""
    from metaaligner.io import append_missing, row_hash

    hashes = hashes or {r[shards.key]: row_hash(r) for r in rows}
    order = [r[shards.key] for r in rows]
    if plan.merge:
        final, out = shards.complete(plan, hashes, order, overwrite=overwrite)
        return len(rows), final, out, out
    writer = writer or shards.open(plan, hashes, resume, overwrite)
    mine = [r for r in rows if r[shards.key] in plan.rows(shards.n_rows)]
    resumed = append_missing(mine, writer, generator, make_rows, chunk, desc, progress, hashes)
    final = writer.finish(order=[r[shards.key] for r in mine])
    final, out = shards.complete(plan, hashes, order, final, writer, overwrite)
    return resumed, final, out, writer
