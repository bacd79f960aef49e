#!/usr/bin/env bash
# Rejection sampling of one round (conf/reject_sampling.yaml): sample -> verify + RM score -> select.
#   bash scripts/reject_sampling.sh round=0 sampling.n=8
# Killed and started again with the same arguments, it continues where it stopped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
exec python -m reject_sampling "$@"
