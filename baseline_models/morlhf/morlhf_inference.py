r"""Inference for the MORLHF policy: plain queries (its ``baseline.json`` says no conditioning).
Same code as SFT inference (``metaaligner/methods/inference.py``); output in the aligner format.

    python baseline_models/morlhf/morlhf_inference.py --aligner_path runs/baselines/morlhf/policy \
        --data_dir samples/HH-RLHF_model_output/gpt-3.5-turbo.csv.gz --dataset hh-rlhf \
        --model_output_path runs/baselines/morlhf_outputs --limit 20 --max_new_tokens 64
"""
from __future__ import annotations

import sys

from metaaligner.cli import parse, run_main
from metaaligner.methods.inference import BaselineInferenceConfig, main, make_parser as _make_parser  # noqa: F401


def make_parser():
    return _make_parser(__doc__)


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
