#!/usr/bin/env bash
# GRPO (conf/grpo.yaml), one process:
#   bash scripts/grpo.sh                              # offline default: tiny SFT model of round 0, CPU
#   bash scripts/grpo.sh grpo.max_steps=100 rewards.format=0.2 generation.backend=transformers
# Several processes / GPUs / DeepSpeed: ACCELERATE_CONFIG=conf/accelerate/multi_gpu.yaml bash scripts/grpo.sh grpo=default ...
# Killed and started again with the same arguments, it resumes from its last checkpoint.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
if [[ -n ${ACCELERATE_CONFIG:-} ]]; then
  exec accelerate launch --config_file "$ACCELERATE_CONFIG" -m grpo "$@"
fi
exec python -m grpo "$@"
