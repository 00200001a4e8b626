#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the Python environment and the Debian
# packages of the single-node SLURM test cluster when missing, lints, then runs pytest. The SLURM
# integration tests start and stop their own cluster (scripts/slurm-cluster.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
bash scripts/install-slurm.sh
.venv/bin/ruff check finetune tests scripts bench
.venv/bin/lint-imports --no-cache --no-logo  # the import contracts in .importlinter
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
