r"""Regenerate the paper's Table 2, Table 3 and Figure 3 from the judge's per-row verdict files.

    python evaluation/report.py --inputs judged/hh-rlhf,judged/ultrafeedback --output_dir reports \
        --table3_inputs judged/table3 --training_logs "MetaAligner=models/aligner,MORLHF=models/morlhf" \
        --ratings judged/uf-rating --metric win_half_tie --bootstrap 1000 --seed 0

Writes ``table2.{md,csv,tex}`` (gain of aligned over original answers with paired bootstrap 95%
intervals), ``table3.{md,csv,tex}`` (method win rates + training GPU hours) and ``figure3.{png,md,csv}``
(0-10 ratings on seen and unseen objectives) for the inputs given.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner import cli
from metaaligner.cli import parse, run_main, split_csv


@dataclass
class ReportConfig:
    inputs: str = field(default=None, metadata={"help": "judge output folders/per-row CSVs for Table 2 "
                                                        "(pairwise, both targets), comma-separated"})
    table3_inputs: str = field(default=None, metadata={"help": "judge output folders for Table 3: one input file "
                                                               "per method (MetaAligner.csv, MORLHF.csv, ...)"})
    ratings: str = field(default=None, metadata={"help": "judge output folders of --mode rating runs (Figure 3)"})
    output_dir: str = field(default="reports", metadata={"help": "where the tables and the figure go"})
    metric: str = field(default="win_half_tie", metadata={
        "help": "win_half_tie = (W+T/2)/N; win = W/N; paper = (W+T)/N as the released code counted",
        "choices": ["win_half_tie", "win", "paper"]})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the 95% intervals"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    training_logs: str = field(default=None, metadata={"help": "method=path pairs, comma-separated: a training "
                                                               "log JSONL or a training output folder "
                                                               "(its train_log.jsonl), for Table 3's GPU hours"})
    methods: str = field(default="MetaAligner,MORLHF,MODPO,SFT",
                         metadata={"help": "Table 3 row order; other methods follow in input order"})


def make_parser():
    return cli.make_parser(ReportConfig, description=__doc__)


def main(config: ReportConfig) -> None:
    from metaaligner.errors import MetaAlignerError
    from metaaligner.reports import write_reports

    logs = {}
    for pair in split_csv(config.training_logs):
        if "=" not in pair:
            raise MetaAlignerError(f"--training_logs expects method=path, got {pair!r}")
        method, path = pair.split("=", 1)
        logs[method.strip()] = path.strip()
    written = write_reports(config.output_dir, split_csv(config.inputs), split_csv(config.table3_inputs),
                            split_csv(config.ratings), metric=config.metric, n_boot=config.bootstrap,
                            seed=config.seed, training_logs=logs, methods=split_csv(config.methods))
    for path in written["files"]:
        print(f"wrote {path}")
    for path in written["files"]:
        if path.suffix == ".md":
            print(f"\n{path.name}\n{path.read_text(encoding='utf-8')}")


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
