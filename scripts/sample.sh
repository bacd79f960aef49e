#!/usr/bin/env bash
# sample.py (conf/sample.yaml): N completions per prompt with vLLM (or transformers) -> samples parquet.
#   bash scripts/sample.sh                                  # offline default: round-0 SFT tiny model, CPU
#   bash scripts/sample.sh sampling.backend=transformers sampling.n=8 prompts.path=questions.txt output=runs/default/samples/q.parquet
# Killed and started again with the same arguments, it resumes at the first unfinished chunk.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
exec python -m reject_sampling.sample "$@"
