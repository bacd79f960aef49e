#!/usr/bin/env bash
# Reward model (conf/reward_model.yaml), one process:
#   bash scripts/rm.sh                              # offline default: tiny model on runs/default/data pairs
#   bash scripts/rm.sh rm.max_steps=300 round=1 extra_pairs=[runs/default/round_0/reject_sampling]
# Several processes / GPUs / DeepSpeed: ACCELERATE_CONFIG=conf/accelerate/deepspeed_zero2.yaml bash scripts/rm.sh ...
# Killed and started again with the same arguments, it resumes from its last checkpoint.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
if [[ -n ${ACCELERATE_CONFIG:-} ]]; then
  exec accelerate launch --config_file "$ACCELERATE_CONFIG" -m reward_model "$@"
fi
exec python -m reward_model "$@"
