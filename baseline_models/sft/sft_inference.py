r"""Inference for the SFT baseline (the same script serves CDPO and MORLHF through their wrappers):
the query carries the desired rewards, ``<Harmlessness>: 4.19; ... | {query}``; the output is in the
aligner format (``query, goldens, origin_responses, aligned_responses``) for ``evaluation/``.

    python baseline_models/sft/sft_inference.py --aligner_path runs/baselines/sft \
        --data_dir samples/HH-RLHF_model_output/gpt-3.5-turbo.csv.gz --dataset hh-rlhf \
        --model_output_path runs/baselines/sft_outputs --limit 20 --max_new_tokens 64
    # other targets than the training data's maxima:
    python baseline_models/sft/sft_inference.py --aligner_path runs/baselines/sft \
        --target_rewards harmlessness=1.5,helpfulness=1.0,humour=0.0 ...
"""
from __future__ import annotations

import sys

from metaaligner.cli import parse, run_main
from metaaligner.methods.inference import BaselineInferenceConfig, main, make_parser as _make_parser  # noqa: F401


def make_parser():
    return _make_parser(__doc__)


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
