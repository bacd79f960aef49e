#!/usr/bin/env bash
# Build the training data: OpenR1-Math parquet -> CoT Alpaca SFT records, preference pairs, prompt sets.
#   bash data_preprocess.sh                      # offline default: synthetic OpenR1-schema data, tiny tokenizer
#   bash data_preprocess.sh input_dir=/data/OpenR1-Math-220k output_dir=runs/r1/data \
#        model=qwen2.5-1.5b model.path=/models/Qwen2.5-1.5B-Instruct
# Any Hydra override of conf/data_process.yaml may follow. Re-running with the same arguments is a no-op.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/activate.sh"

# Token lengths are measured with the configured model's tokenizer. Unless another model is named, that is
# the tiny offline model, so build it first (seconds; skipped when already built).
if ! printf '%s\n' "$@" | grep -qE '^\+*model(=|\.path=|\.tokenizer_path=)'; then
  python -m tiny_model $(printf '%s\n' "$@" | grep -E '^run_name=' || true)
fi
python -m data_process "$@"
