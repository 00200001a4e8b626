#!/usr/bin/env bash
# Creates ./.venv and installs finetune with all its extras into it. Idempotent: a second run
# that finds setup.cfg unchanged does nothing. torch is pinned to 2.13.0, the CPU build that pip
# finds on this kind of machine (an unpinned torch would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.finetune-installed
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (torch==2.13.0, finetune[all,test]) ..." >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v '^WARNING: Location' >&2 || true
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[all,test]' 2>&1 | grep -v '^WARNING: Location' >&2 || true
  .venv/bin/python -c 'import torch, transformers, datasets, finetune' || { echo "setup-env: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
