#!/usr/bin/env bash
# Held-out evaluation (conf/evaluate.yaml): pass@1, maj@k, greedy, best-of-N.
#   bash scripts/evaluate.sh name=round_0_sft model.path=runs/default/round_0/sft/model
# Killed and started again with the same arguments, it continues where it stopped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
exec python -m evaluation "$@"
