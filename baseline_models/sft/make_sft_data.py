r"""SFT baseline (Rewards-in-Context stage 1), data step: every response of ``rewards.csv`` becomes
an SFT item whose prompt carries its own rewards, ``<Harmlessness>: 0.52; ... | {question}``.

    python baseline_models/sft/make_sft_data.py --input rewards.csv --dataset hh-rlhf --output_dir runs/sft_data \
        --seed 0
    # UltraFeedback as released (UltraFeedback_make_sft_data.py): each used completion once, with its ratings
    python baseline_models/sft/make_sft_data.py --input data/ultrafeedback/completions.csv --dataset ultrafeedback \
        --output_dir runs/uf_sft_data
    # the release's conditioning text (<Harmlessness>: 0.5; UltraFeedback <instruction_following>: 5);
    # recorded in stats.json and the trained model's baseline.json, so inference writes the same text
    python baseline_models/sft/make_sft_data.py --input rewards.csv --dataset hh-rlhf --output_dir runs/sft_data \
        --conditioning_text released

Writes ``DIR/train.json`` and ``DIR/val.json`` (FastChat conversation JSON: human turn = the
conditioned prompt, gpt turn = the response; both items of a pair stay in one split) and
``DIR/stats.json`` (counts, skipped rows, the maximum normalised reward per objective).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check, deprecated_aliases, make_parser as _make_parser, parse, run_main


@dataclass
class MakeSFTDataConfig:
    input: str = field(metadata={"help": "stage-1 rewards CSV: prompt, chosen_response, rejected_response, "
                                         "chosen_score{i}, rejected_score{i} (both answers of each pair), or "
                                         "prepare_ultrafeedback.py's completions.csv (each completion once, as "
                                         "the released UltraFeedback SFT data)"})
    output_dir: str = field(metadata={"help": "folder for train.json, val.json, stats.json"})
    dataset: str = field(default="hh-rlhf", metadata={"help": "dataset config name (hh-rlhf, ultrafeedback, imhi) "
                                                              "or YAML path; gives objective names and score order",
                                                      **deprecated_aliases("--config", "--dataset_config")})
    seed: int = field(default=0, metadata={"help": "seed of the train/val split"})
    val_size: float = field(default=0.1, metadata={**check(ge=0.0),
                                                   "help": "validation share of pairs (<1) or number of pairs (>=1)"})
    conditioning_text: str = field(default="clean", metadata={
        "help": "clean: objective names, two decimals (<Harmlessness>: 0.50); released: the release's text "
                "(str(round(x, 2)): <Harmlessness>: 0.5; the dataset config's conditioning_labels / "
                "integer_ratings: UltraFeedback <instruction_following>: 5); recorded for inference"})


def make_parser():
    return _make_parser(MakeSFTDataConfig, description=__doc__)


def main(config: MakeSFTDataConfig) -> None:
    from metaaligner.methods.sft import make_sft_data

    make_sft_data(config.input, config.dataset, config.output_dir, seed=config.seed, val_size=config.val_size,
                  conditioning_text=config.conditioning_text)


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
