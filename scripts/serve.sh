#!/usr/bin/env bash
# Install hedge (first run only does real work) and start the gateway; arguments go to
# `hedge serve` (e.g. --port 9000, --config hedge.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/hedge serve "$@"
