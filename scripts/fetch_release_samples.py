r"""Download the release's policy outputs that samples/ lacks, each checked against its git blob SHA-1.

    python scripts/fetch_release_samples.py                      # every missing file -> samples/
    python scripts/fetch_release_samples.py --only 'HH-RLHF_model_output/*' --only 'UltraFeedback_model_output/*'
    python scripts/fetch_release_samples.py --check              # verify what is here, download nothing
    python scripts/fetch_release_samples.py --output_dir /data/samples \
        --base_url https://mirror.example.org/MetaAligner/samples

What is fetched: every file of the release's samples/ folder (SteveKGYang/MetaAligner at commit 26d8dad),
as listed with its git blob SHA-1 in metaaligner/data/release/samples_manifest.tsv. The repository ships
the files under 4 MiB; the 23 larger ones (7 HH-RLHF and 7 UltraFeedback policies of Table 2, swmh of 9
IMHI policies) come from here. A file's URL is <base_url>/<manifest path>; it lands at
<output_dir>/<manifest path>.gz, the released bytes gzip-compressed (IMHI tables get their queries
joined in where --imhi_queries has the task's instructions, as scripts/build_samples.py does).

Each file is downloaded whole, verified (size and sha1(b"blob <size>\0" + bytes)), written beside its
target and renamed into place: nothing partial or unverified is ever left. Files already present and
verified are skipped; a present file that is not the released one is kept unless --overwrite. One line
per file says what happened; the exit status is non-zero and the last line names every file that failed.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from metaaligner import cli
from metaaligner.release_samples import DEFAULT_BASE_URL  # light: no torch, no transformers

REPO = Path(__file__).resolve().parent.parent
SHARED_INSTRUCTIONS = REPO.parent / "shared" / "data" / "imhi-test-instruction"


@dataclass
class FetchReleaseSamplesConfig:
    output_dir: str = field(default=str(REPO / "samples"),
                            metadata={"help": "where files land, as <output_dir>/<manifest path>.gz (default: "
                                              "the repository's samples/)"})
    base_url: str = field(default=DEFAULT_BASE_URL,
                          metadata={"help": "URL of a samples/ folder; a file's URL is <base_url>/<manifest "
                                            "path> (http, https or file; default: the release's raw files at "
                                            "its commit)"})
    only: list[str] = field(default_factory=list,
                            metadata={"help": "fetch only manifest paths matching this glob, e.g. "
                                              "'HH-RLHF_model_output/*' (repeatable; quote it from the shell)",
                                      "action": "append"})
    check: bool = field(default=False, metadata={"help": "verify the files that are here and list the missing "
                                                         "ones; download nothing (exit 2 if any is missing "
                                                         "or differs)"})
    overwrite: bool = field(default=False, metadata={"help": "replace a present file that is not the released "
                                                             "one (after the download verified)"})
    imhi_queries: str = field(default="auto", metadata={"help": "folder of the IMHI test instructions "
                                                                "(<task>.csv with query, gpt-3.5-turbo) whose "
                                                                "queries are joined into fetched IMHI tables; "
                                                                "auto: ../shared/data/imhi-test-instruction when "
                                                                "present; none: keep IMHI tables as released"})
    manifest: str = field(default=None, metadata={"help": "manifest TSV (path, git_blob_sha1, size_bytes); "
                                                          "default: the one shipped in metaaligner/data/release/"})
    timeout: float = field(default=60.0, metadata={**cli.check(gt=0.0),
                                                   "help": "seconds without data before a download is given up"})
    retries: int = field(default=2, metadata={**cli.check(ge=0),
                                              "help": "extra tries of a download cut short or refused by a busy "
                                                      "server (a hash mismatch or a 4xx is never retried)"})


def make_parser():
    return cli.make_parser(FetchReleaseSamplesConfig, description=__doc__)


def _imhi_queries(value: str) -> Path | None:
    from metaaligner.errors import MetaAlignerError

    if value == "auto":
        return SHARED_INSTRUCTIONS if SHARED_INSTRUCTIONS.is_dir() else None
    if value == "none":
        return None
    if not Path(value).is_dir():
        raise MetaAlignerError(f"--imhi_queries {value}: no such folder (give the IMHI test instructions "
                               "folder, auto or none)")
    return Path(value)


def main(config: FetchReleaseSamplesConfig) -> None:
    from metaaligner.errors import MetaAlignerError
    from metaaligner.io import redact_url
    from metaaligner.release_samples import MANIFEST_FILE, Fetcher, check_url, failure_line, read_manifest, select

    if config.retries < 0 or config.timeout <= 0:
        raise MetaAlignerError("--retries must be 0 or more and --timeout above 0")
    globs = [g for item in config.only for g in (item if isinstance(item, list) else [item])]
    entries = select(read_manifest(config.manifest or MANIFEST_FILE), globs)
    fetcher = Fetcher(Path(config.output_dir), check_url(config.base_url), _imhi_queries(config.imhi_queries),
                      overwrite=config.overwrite, check_only=config.check, timeout=config.timeout,
                      retries=config.retries, echo=lambda line: print(line, flush=True))
    source = "checking only" if config.check else f"from {redact_url(fetcher.base_url)}"
    print(f"{len(entries)} manifest file(s) for {config.output_dir} ({source})", flush=True)
    try:
        report = fetcher.run(entries)
    except KeyboardInterrupt:
        raise MetaAlignerError("interrupted; nothing partial was kept: run the same command again "
                               "(verified files are skipped)") from None
    print(f"{len(report.fetched)} downloaded ({report.bytes_downloaded / 2**20:.1f} MiB), {len(report.present)} "
          f"already present and verified, {len(report.failed)} failed")
    if report.failed:
        raise MetaAlignerError(failure_line(report, len(entries)))


if __name__ == "__main__":
    sys.exit(cli.run_main(main, *cli.parse(make_parser())))
