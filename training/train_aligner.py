r"""Train a MetaAligner: the paper's three-step curriculum (warm-up copy task -> equal-preference ->
contrastive-preference), each step SFT on the target tokens only, each from the previous step's weights.

    # on a CPU (scaled-down preset), LoRA on the embedded SmolLM2-135M-Instruct
    python training/train_aligner.py --data_dir runs/hh/aligner_data --output_dir runs/hh/aligner \
        --config_file configs/training/cpu.yaml --lora

    # the released README's settings on GPUs (4 x A100, FSDP, configs/training/paper.yaml); any launcher works
    torchrun --nproc_per_node 4 training/train_aligner.py --config_file configs/training/paper.yaml \
        --data_dir runs/hh/aligner_data --output_dir runs/hh/aligner --model_name_or_path meta-llama/Llama-2-7b-hf
    accelerate launch --config_file configs/accelerate/fsdp.yaml training/train_aligner.py ...
    torchrun --nproc_per_node 8 training/train_aligner.py ... --deepspeed configs/deepspeed/zero3.json

Then ``python inference/aligner_inference.py --aligner_path runs/hh/aligner ...`` (no --template:
the folder's metaaligner.json names it). ``--config_file FILE.yaml`` loads flag defaults; flags on the
command line override it (``--config FILE.yaml``, its old name here, still works and prints a deprecation line).
"""
from __future__ import annotations

import sys

from metaaligner.training.curriculum import CurriculumConfig
from metaaligner.training.sft import SFTStageConfig


def main(curriculum: CurriculumConfig, sft: SFTStageConfig) -> dict:
    from metaaligner.training.curriculum import train_curriculum

    return train_curriculum(curriculum, sft)


def make_parser():
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(CurriculumConfig, SFTStageConfig, description=__doc__)


def cli_args(argv: list[str]) -> list[str]:
    """``--config X.yaml`` is this script's deprecated alias of the shared ``--config_file`` flag."""
    from metaaligner.cli import deprecation_line

    if "--config" in argv:
        print(deprecation_line("--config", "--config_file"), file=sys.stderr)
    return ["--config_file" if a == "--config" else a for a in argv]


if __name__ == "__main__":
    from metaaligner.cli import parse, run_main
    sys.exit(run_main(main, *parse(make_parser(), cli_args(sys.argv[1:]))))
