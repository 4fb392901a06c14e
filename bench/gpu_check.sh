#!/usr/bin/env bash
# GPU check of the model core on a bare GPU host (torch, numpy, pyarrow only).
# Usage: bash bench/gpu_check.sh FEATURES_DIR   (a dataset made by 'kmervae featurize')
# Prints a short table last; see bench/gpu_check.py for what is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 bench/gpu_check.py --features "${1:?usage: bench/gpu_check.sh FEATURES_DIR}" "${@:2}"
