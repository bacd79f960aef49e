#!/usr/bin/env bash
# Run the test suite on the CPU, offline. Creates/reuses .venv first (first time ~3 minutes).
#   bash scripts/test.sh                 # the whole default suite (what CI runs)
#   bash scripts/test.sh -k verifier -x  # extra arguments go to pytest
# pytest exits non-zero on any failure AND when it collects no test (exit 5): both fail this script.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
python -m pytest "$@"
