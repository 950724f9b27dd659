"""The released policy outputs as ``samples/``: copy, join the IMHI queries in, compress.

Sources (read-only, under ``../shared/data``):

- ``metaaligner-samples/{HH-RLHF,UltraFeedback}_model_output/<policy>.csv`` (MetaAligner release, MIT):
  columns ``query``, ``goldens``, ``generated_text``. Copied byte for byte, gzip-compressed.
- ``metaaligner-samples/IMHI_model_output/<policy>/<task>.csv`` (MetaAligner release, MIT): columns
  ``goldens``, ``generated_text`` only. Row i is row i of ``imhi-test-instruction/<task>.csv``
  (MentalLLaMA IMHI test set, MIT), whose ``query`` we join in after checking that its
  ``gpt-3.5-turbo`` cell equals the sample's ``goldens`` cell, row by row. A task without an
  instruction file (``swmh``) cannot be joined and is skipped with a reason.

Outputs are deterministic (gzip ``mtime=0``), so rebuilding leaves git clean.
"""
from __future__ import annotations

import csv
import gzip
import io as _io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.io import read_table

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["query", "goldens", "generated_text"]
# The IMHI subset shipped in the repository (all tasks with queries, five policies: one per model
# family at its smallest size, plus LLaMA2-Chat-70B whose release has 300 rows per task). ``--all``
# builds every policy into an ignored folder instead.
IMHI_SHIPPED_POLICIES = ["Gemma_instruct_2B", "Mentallama-7B", "llama2-chat-7B", "vicuna_7B", "llama2-chat-70B"]
# Output folders keep the release's names (samples/HH-RLHF_model_output/...), so its commands run as written.
FLAT_DATASETS = {"HH-RLHF_model_output": "HH-RLHF_model_output",
                 "UltraFeedback_model_output": "UltraFeedback_model_output"}
IMHI_SOURCE = "IMHI_model_output"
IMHI_INSTRUCTIONS = "imhi-test-instruction"
IMHI_GOLDEN_COLUMN = "gpt-3.5-turbo"
IMHI_RELEASE_COLUMNS = ["goldens", "generated_text"]  # the release's IMHI files, in this order


@dataclass
class BuildReport:
    written: list[Path] = field(default_factory=list)
    rows: int = 0
    skipped: list[str] = field(default_factory=list)  # "path: reason"

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.written)


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip (no timestamp, no file name in the header)."""
    buf = _io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as fh:
        fh.write(data)
    return buf.getvalue()


def csv_bytes(rows: list[dict], columns: list[str]) -> bytes:
    buf = _io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    return buf.getvalue().encode("utf-8")


def _write_gz(path: Path, data: bytes) -> None:
    # Not atomic_open: it would gzip again, with a timestamp in the header.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(gzip_bytes(data))
    os.replace(tmp, path)


def join_imhi_queries(answers_path: str | Path, instructions_path: str | Path) -> list[dict[str, str]]:
    """Rows ``{query, goldens, generated_text}`` of a released IMHI output file with the queries of
    its task joined in by row number. Every ``goldens`` cell must equal the instruction file's
    ``gpt-3.5-turbo`` cell of the same row, else ``DataError`` (a wrong pairing would silently
    align answers against other posts)."""
    answers = read_table(answers_path, required=IMHI_RELEASE_COLUMNS)
    return join_rows(answers, instructions_path, answers_path)


def join_rows(answers: list[dict], instructions_path: str | Path, where: str | Path) -> list[dict[str, str]]:
    """``join_imhi_queries`` on rows already read (``where`` names them in errors)."""
    instructions = read_table(instructions_path, required=["query", IMHI_GOLDEN_COLUMN])
    if len(answers) > len(instructions):
        raise DataError(where, f"{len(answers)} rows but {instructions_path} has only "
                        f"{len(instructions)}; cannot join queries by row")
    out = []
    for i, (ans, ins) in enumerate(zip(answers, instructions), start=1):
        if ans["goldens"] != ins[IMHI_GOLDEN_COLUMN]:
            raise DataError(where, f"goldens differ from {instructions_path} column "
                            f"{IMHI_GOLDEN_COLUMN!r} of the same row; refusing to join queries",
                            row=i, column="goldens")
        out.append({"query": ins["query"], "goldens": ans["goldens"], "generated_text": ans["generated_text"]})
    return out


def build_samples(data_root: str | Path, out_dir: str | Path, imhi_policies: list[str] | None = None) -> BuildReport:
    """Build the samples tree under ``out_dir`` from ``data_root`` (``../shared/data``).

    ``imhi_policies=None`` means every IMHI policy in the release.
    """
    data_root, out_dir = Path(data_root), Path(out_dir)
    source = data_root / "metaaligner-samples"
    if not source.is_dir():
        raise MetaAlignerError(f"{source}: not found; pass --data_root pointing at the shared data folder")
    report = BuildReport()
    for name, folder in FLAT_DATASETS.items():
        files = sorted((source / folder).glob("*.csv"))
        if not files:
            raise MetaAlignerError(f"{source / folder}: no CSV files")
        for src in files:
            rows = read_table(src, required=SAMPLE_COLUMNS)  # validates before copying
            target = out_dir / name / f"{src.stem}.csv.gz"
            _write_gz(target, src.read_bytes())
            report.written.append(target)
            report.rows += len(rows)
    imhi_root = source / IMHI_SOURCE
    available = sorted(p.name for p in imhi_root.iterdir() if p.is_dir())
    policies = available if imhi_policies is None else list(imhi_policies)
    missing = [p for p in policies if p not in available]
    if missing:
        raise MetaAlignerError(f"unknown IMHI policies {missing}; available: {', '.join(available)}")
    for policy in policies:
        for src in sorted((imhi_root / policy).glob("*.csv")):
            instructions = data_root / IMHI_INSTRUCTIONS / src.name
            if not instructions.exists():
                report.skipped.append(f"{src}: no {IMHI_INSTRUCTIONS}/{src.name} to take queries from")
                continue
            rows = join_imhi_queries(src, instructions)
            target = out_dir / IMHI_SOURCE / policy / f"{src.stem}.csv.gz"
            _write_gz(target, csv_bytes(rows, SAMPLE_COLUMNS))
            report.written.append(target)
            report.rows += len(rows)
    return report

