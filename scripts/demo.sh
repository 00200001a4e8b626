#!/usr/bin/env bash
# The README's main command: sets up .venv (idempotent) and runs the Russian/Polish SIB-200
# cross-language demo on this machine. Arguments go to `finetune demo`, e.g.
#   bash scripts/demo.sh --executor slurm
#   bash scripts/demo.sh --size tiny --out /tmp/demo-tiny
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/finetune demo "$@"
