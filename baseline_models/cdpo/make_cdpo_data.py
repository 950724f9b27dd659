r"""CDPO baseline, data step: target-conditioned preference pairs from ``rewards.csv``.

The prompt carries the target rewards t; of the two responses the preferred one is the one closer
to the targets, i.e. with the higher -sum_j |t_j - s_j|; pairs with equal closeness are dropped and
counted. Targets default to the maximum normalised reward per objective in the input (printed).

    python baseline_models/cdpo/make_cdpo_data.py --input rewards.csv --dataset hh-rlhf --output_dir runs/cdpo_data \
        --seed 0
    python baseline_models/cdpo/make_cdpo_data.py --input rewards.csv --dataset hh-rlhf --output_dir runs/cdpo_data \
        --seed 0 --target_rewards harmlessness=1.0,helpfulness=0.5,humour=0.0
    # the release's conditioning text (<Harmlessness>: 0.5), recorded for inference (baseline.json)
    python baseline_models/cdpo/make_cdpo_data.py --input rewards.csv --dataset hh-rlhf --output_dir runs/cdpo_data \
        --conditioning_text released

Writes ``DIR/train.jsonl`` and ``DIR/val.jsonl`` (one ``{"prompt", "chosen", "rejected"}`` object
per pair, TRL's preference format) and ``DIR/stats.json`` (targets used, ties dropped, counts).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check, deprecated_aliases, make_parser as _make_parser, parse, run_main


@dataclass
class MakeCDPODataConfig:
    input: str = field(metadata={"help": "stage-1 rewards CSV: prompt, chosen_response, rejected_response, "
                                         "chosen_score{i}, rejected_score{i}"})
    output_dir: str = field(metadata={"help": "folder for train.jsonl, val.jsonl, stats.json"})
    dataset: str = field(default="hh-rlhf", metadata={"help": "dataset config name or YAML path",
                                                       **deprecated_aliases("--config", "--dataset_config")})
    seed: int = field(default=0, metadata={"help": "seed of the train/val split"})
    val_size: float = field(default=0.1, metadata={**check(ge=0.0),
                                                   "help": "validation share of pairs (<1) or number of pairs (>=1)"})
    target_rewards: str | None = field(default=None, metadata={
        "help": "targets per objective, key=value,... (keys or names of the config's objectives); objectives "
                "left out use the maximum normalised reward in the input"})
    conditioning_text: str = field(default="clean", metadata={
        "help": "clean: objective names, two decimals (<Harmlessness>: 0.50); released: the release's text "
                "(str(round(x, 2)): <Harmlessness>: 0.5; the dataset config's conditioning_labels / "
                "integer_ratings: UltraFeedback <instruction_following>: 5); recorded for inference"})


def make_parser():
    return _make_parser(MakeCDPODataConfig, description=__doc__)


def main(config: MakeCDPODataConfig) -> None:
    from metaaligner.methods.cdpo import make_cdpo_data

    make_cdpo_data(config.input, config.dataset, config.output_dir, seed=config.seed, val_size=config.val_size,
                   target_rewards=config.target_rewards, conditioning_text=config.conditioning_text)


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
