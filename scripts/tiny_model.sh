#!/usr/bin/env bash
# Build the tiny offline model (tokenizer + 2-layer Qwen2 + reward head) into runs/<run_name>/tiny_model.
#   bash scripts/tiny_model.sh                     # ~10 s; skipped when already built with this config
#   bash scripts/tiny_model.sh shape.num_hidden_layers=4 run_name=deeper
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
python -m tiny_model "$@"
