"""Build ``samples/`` (the released policy outputs, compressed) from the shared data folder.

    python scripts/build_samples.py                      # the shipped subset -> samples/
    python scripts/build_samples.py --all                # every IMHI policy -> outputs/samples-full/ (ignored by git)

HH-RLHF and UltraFeedback files (3 policies each) are copied byte for byte as ``.csv.gz``. IMHI files
get their queries joined in from ``imhi-test-instruction/<task>.csv`` after a row-by-row check that
the sample's ``goldens`` equal that file's ``gpt-3.5-turbo`` (any mismatch stops the build). The
``swmh`` task has no instruction file and is skipped. Output is deterministic: a rebuild leaves git clean.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from metaaligner import cli

REPO = Path(__file__).resolve().parent.parent


@dataclass
class BuildSamplesConfig:
    data_root: str = field(default=str(REPO.parent / "shared" / "data"),
                           metadata={"help": "the shared data folder holding metaaligner-samples/ and "
                                             "imhi-test-instruction/"})
    output_dir: str = field(default=None,
                            metadata={"help": "where to write; default samples/ (or outputs/samples-full with --all)"})
    all: bool = field(default=False,
                      metadata={"help": "every IMHI policy (about 33 MB) instead of the shipped subset"})
    imhi_policies: str = field(default=None, metadata={"help": "comma-separated IMHI policies to include "
                                                              "(default: the shipped subset, see "
                                                              "metaaligner/samples.py)"})


def make_parser():
    return cli.make_parser(BuildSamplesConfig, description=__doc__)


def main(config: BuildSamplesConfig) -> None:
    from metaaligner.samples import IMHI_SHIPPED_POLICIES, build_samples

    start = time.time()
    out = config.output_dir or str(REPO / ("outputs/samples-full" if config.all else "samples"))
    if config.all:
        policies = None
    elif config.imhi_policies:
        policies = cli.split_csv(config.imhi_policies)
    else:
        policies = IMHI_SHIPPED_POLICIES
    report = build_samples(config.data_root, out, policies)
    for line in report.skipped:
        print(f"skipped {line}")
    print(f"wrote {len(report.written)} files, {report.rows} rows, {report.total_bytes / 2**20:.1f} MiB "
          f"to {out} ({len(report.skipped)} skipped, {time.time() - start:.1f} s)")


if __name__ == "__main__":
    sys.exit(cli.run_main(main, *cli.parse(make_parser())))
