#!/usr/bin/env bash
# GPU check: aligner-inference tokens/s (released batch-1 loop, padded batch, our fast engine) and training
# tokens/s on RANDOM weights of the embedded model's shape (SmolLM2-135M) and a 1.1B Llama shape
# (TinyLlama-1.1B), in one run on one GPU; under 8 minutes on one H100/H200. No network, nothing beyond
# the working tree needed (benchmarks/gpu_check.py says how; --help lists the flags).
#   bash scripts/gpu_check.sh                  # the GPU (cuda when visible)
#   bash scripts/gpu_check.sh --tiny           # tiny sizes on the CPU (tests/test_scale_out.py)
# GPU_CHECK_TIMEOUT_S (default 470) stops it; PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
exec timeout "${GPU_CHECK_TIMEOUT_S:-470}" "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
