r"""Regenerate the paper's Table 2, Table 3, Figure 3 and the rating study from the judge's per-row verdicts.

    python evaluation/report.py --inputs judged/hh-rlhf,judged/ultrafeedback --output_dir reports \
        --table3_inputs judged/table3 --training_logs "MetaAligner=models/aligner,MORLHF=models/morlhf" \
        --metric win_half_tie --bootstrap 1000 --seed 0

The paper's metric next to ours, and Figure 3 from the 7 step folders (paper order; bare paths take
the paper's step labels "Aligned Obj.", "+Specificity", ..., "+Length"):

    python evaluation/report.py --profile paper --metric win_plus_tie,win_half_tie --inputs judged/uf \
        --figure3_inputs judged/fig3/1_aligned_obj,judged/fig3/2_speci,judged/fig3/3_factual,judged/fig3/4_read,judged/fig3/5_fair,judged/fig3/6_repeat,judged/fig3/7_len \
        --ratings "All 4=judged/rate/all,Instruction following=judged/rate/instruction_following" --output_dir reports

Writes ``table2.{md,csv,tex}`` (gain of aligned over original answers with paired bootstrap 95%
intervals; IMHI: one row per policy over its 9 tasks' rows, each task's row count under the table, the
per-task table in ``table2_tasks.{md,csv}``), ``table3.{md,csv,tex}`` (method win rates + training GPU hours), ``figure3.{png,md,csv}``
(win rate vs golden per objective and alignment step, before/after alignment) and
``ratings.{png,md,csv}`` (the 0-10 rating study) for the inputs given. Every caption names the metric
and the verdict parser.
"""  # noqa: E501 - the --figure3_inputs example is one comma-separated shell word; it cannot be wrapped
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
    figure3_inputs: str = field(default=None, metadata={
        "help": "Figure 3: the judge output folders of the alignment steps in order, comma-separated, each judged "
                "pairwise on all 10 objectives (the first one also on origin_responses = before alignment); "
                "label=path or a path (up to 7 bare paths take the paper's labels Aligned Obj., +Specificity, ...)"})
    ratings: str = field(default=None, metadata={"help": "the rating study: judge output folders of --mode rating "
                                                         "runs, one per alignment condition, label=path or a path "
                                                         "(labelled by its folder name); the first one's "
                                                         "origin_responses are the Unaligned row"})
    output_dir: str = field(default="reports", metadata={"help": "where the tables and the figures go"})
    profile: str = field(default=None, metadata={"help": "judging profile whose metric is the default of --metric "
                                                         "(clean: win_half_tie, paper: win_plus_tie)"})
    metric: str = field(default=None, metadata={
        "help": "metric(s), comma-separated, side by side in Tables 2/3 (Figure 3 uses the first): "
                "win_half_tie = (W+T/2)/N; win = W/N; win_plus_tie (alias paper) = (W+T)/(W+T+L) as the released "
                "code counted; default: the --profile's, else win_half_tie"})
    bootstrap: int = field(default=1000, metadata={**cli.check(ge=1),
                                                   "help": "bootstrap resamples for the 95% intervals"})
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
    from metaaligner.judge.profiles import load_profile
    from metaaligner.reports import parse_metrics, write_reports

    logs = {}
    for pair in split_csv(config.training_logs):
        if "=" not in pair:
            raise MetaAlignerError(f"--training_logs expects method=path, got {pair!r}")
        method, path = pair.split("=", 1)
        logs[method.strip()] = path.strip()
    default_metric = load_profile(config.profile).metric if config.profile else "win_half_tie"
    metrics = parse_metrics(config.metric, default=default_metric)
    written = write_reports(config.output_dir, split_csv(config.inputs), split_csv(config.table3_inputs),
                            split_csv(config.ratings), metric=metrics, n_boot=config.bootstrap,
                            seed=config.seed, training_logs=logs, methods=split_csv(config.methods),
                            figure3_inputs=split_csv(config.figure3_inputs))
    for path in written["files"]:
        print(f"wrote {path}")
    for path in written["files"]:
        if path.suffix == ".md":
            print(f"\n{path.name}\n{path.read_text(encoding='utf-8')}")


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
