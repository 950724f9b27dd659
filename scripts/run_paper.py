"""Run (or print) a paper-scale pipeline from ``configs/paper/<dataset>.yaml``.

    # print the commands of the 7B HH-RLHF run, flags checked against each script's parser
    python scripts/run_paper.py --config configs/paper/hh-rlhf.yaml --variant 7B --dry_run
    # run two stages on a GPU node (hub + GPUs needed; the judge needs OPENAI_API_KEY in the environment)
    python scripts/run_paper.py --config configs/paper/hh-rlhf.yaml --variant 7B --stages train_aligner,align
    # Table 3's ablation rows: "-Equal Pref." (no_equal) and "-Warm Up" (no_warmup), each in its own run folder
    python scripts/run_paper.py --config configs/paper/hh-rlhf.yaml --variant 7B --ablation no_equal --dry_run
    # override a variable, e.g. where the HH-RLHF training transcripts are
    python scripts/run_paper.py --config configs/paper/hh-rlhf.yaml --set HH_TRAIN=/data/hh/train.jsonl.gz
    # Table 2's policies from the release's own outputs instead of regenerating 7 of 10 per dataset
    python scripts/fetch_release_samples.py --only 'HH-RLHF_model_output/*' --only 'UltraFeedback_model_output/*'

Every stage is an ordinary command line (printed before it runs); nothing here replaces the stage
scripts, it only strings them together with the paper's settings (see configs/paper/README.md).
Each Table 2 policy is said to come from "released outputs" (its released file is present: the stage
that would generate it is skipped) or to be regenerated (released file missing: run
scripts/fetch_release_samples.py). Each stage says what decides its outputs besides its paths: the
decoding of a generating stage (and its seed), the judge's decoding, the training items' format, and
the profile it runs under.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import make_parser as _make_parser, parse, run_main, split_csv


@dataclass
class RunPaperConfig:
    config: str = field(metadata={"help": "paper config: configs/paper/{hh-rlhf,ultrafeedback,imhi}.yaml"})
    variant: str = field(default=None,
                         metadata={"help": "model size variant (1.1B, 7B, 13B; see the config's variants)"})
    ablation: str = field(default=None, metadata={"help": "Table 3 ablation: no_equal (-Equal Pref.), no_warmup "
                                                          "(-Warm Up); see the config's ablations (default: the "
                                                          "full run)"})
    stages: str = field(default=None, metadata={"help": "comma-separated stage names to run (default: all, in order)"})
    set: list[str] = field(default_factory=list, metadata={"help": "override a variable: NAME=VALUE (repeatable)"})
    dry_run: bool = field(default=False, metadata={"help": "print the checked commands; run nothing"})
    python: str = field(default=sys.executable, metadata={"help": "interpreter for stages without a launcher"})


def make_parser():
    return _make_parser(RunPaperConfig, description=__doc__)


def print_policies(run) -> None:
    if run.policies:
        print("Table 2's policies:")
        for policy in run.policies:
            print(f"    {policy.name}: {policy.source(run.repo_root)}")


def main(config: RunPaperConfig) -> None:
    import subprocess
    import time

    from metaaligner.errors import MetaAlignerError
    from metaaligner.paper import REPO_ROOT, check_flags, load_paper_config, missing_inputs, stage_settings

    overrides = {}
    for item in split_csv(config.set):
        if "=" not in item:
            raise MetaAlignerError(f"--set expects NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    run = load_paper_config(config.config, config.variant, overrides, config.ablation)
    stages = run.select(split_csv(config.stages))
    for stage in stages:
        unknown = check_flags(stage)
        if unknown:
            raise MetaAlignerError(f"{run.path}: stage {stage.name!r}: {stage.script} has no flag(s) "
                                   f"{', '.join('--' + u for u in unknown)}")
    ablation = f", ablation {run.ablation} ({run.ablation_label})" if run.ablation else ""
    print(f"{run.name} ({run.variables.get('VARIANT', 'default')}{ablation}): {len(stages)} stage(s)")
    print_policies(run)
    skipped = run.skipped()
    for i, stage in enumerate(stages, start=1):
        if stage.name in skipped:
            print(f"\n[{i}/{len(stages)}] {stage.name}: skipped ({skipped[stage.name]})")
            continue
        print(f"\n[{i}/{len(stages)}] {stage.name} (expected device hours: {stage.device_hours})")
        if stage.note:
            print(f"    note: {stage.note}")
        for line in stage_settings(stage):
            print(f"    {line}")
        print("    " + stage.command(config.python))
        if config.dry_run:
            continue
        missing = missing_inputs(stage)
        if missing:
            raise MetaAlignerError(f"stage {stage.name!r} needs {', '.join(missing)} (see {run.path} and "
                                   "configs/paper/README.md)")
        start = time.time()
        code = subprocess.call(stage.argv(config.python), cwd=REPO_ROOT)
        if code != 0:
            raise MetaAlignerError(f"stage {stage.name!r} failed with exit code {code}; fix it and re-run with "
                                   f"--stages {','.join(s.name for s in stages[i - 1:])} (stages resume)")
        print(f"[{i}/{len(stages)}] {stage.name}: {time.time() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
