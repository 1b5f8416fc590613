#!/usr/bin/env bash
# Create ./.venv (or $REID_VENV) and install the project with its test extras.
# torch/torchvision are pinned (2.14.1 / 0.29.1) in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${REID_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install --quiet -e '.[test]'
# compile the Jaccard kernel (numba) once now and cache it, so no run waits 15-30 s for it
"$VENV/bin/python" -c "from reid_core.cluster.jaccard import warm_up_kernel; warm_up_kernel()"
echo "installed into $VENV"
