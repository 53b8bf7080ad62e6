#!/usr/bin/env bash
# The prepared GPU check (docs/distributed.md, "The prepared GPU check"): a thin wrapper
# around scripts/device_check.py, run from the repository root with the machine's python3
# (or $PYTHON). Installs the wheels in .whl/ and ila itself into runs/device_check/site,
# then runs the CUDA tests, `ila score` and `ila finetune` on a random 1B Llama and
# `ila plan`, within 8 minutes; writes one JSON summary ($OUT/device_check.json if OUT is
# set, else runs/device_check/summary.json). Exit 0: every step passed.
#   scripts/device_check.sh            # on the GPU machine
#   scripts/device_check.sh --dry-run  # the same steps on a CPU, tiny model, float32
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" scripts/device_check.py "$@"
