#!/usr/bin/env bash
# GPU check of the model core on a bare GPU host (torch, numpy, pyarrow; no Ray/MLflow/Optuna).
# Usage: bash bench/gpu_check.sh [--cpu] [--features DIR] [--rows N] [--parts correctness,core,engine,fit]
# --cpu runs the same checks on the CPU with small sizes (the test suite does). Under 8 minutes
# on an H100; prints a short table last. See bench/gpu_check.py for what is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [[ " $* " != *" --cpu "* ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
fi
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"  # PYTHON: the interpreter with torch (default python3)
