#!/usr/bin/env bash
# Install gft with the test extras into .venv, then run the whole suite (vLLM-marked tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
.venv/bin/python -m pytest "$@"
