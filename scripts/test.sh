#!/usr/bin/env bash
# Install (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV="${REID_VENV:-.venv}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120
export MPLBACKEND=Agg
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --timeout=900 "$@"
