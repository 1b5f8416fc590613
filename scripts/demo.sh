#!/usr/bin/env bash
# Install (if needed) and run the main job: the Cluster-Contrast + ISE Prefect flow on the embedded
# synthetic dataset (generated under data/synthetic on first use). Outputs: runs/<name>/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV="${REID_VENV:-.venv}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
exec "$VENV/bin/python" -m flows.cluster_contrast --progress "$@"
