#!/usr/bin/env bash
# Supervised fine-tuning (conf/train_sft.yaml), one process:
#   bash scripts/sft.sh                                   # offline default: tiny model on runs/default/data
#   bash scripts/sft.sh sft.max_steps=200 sft.learning_rate=3e-4
# Several processes, GPUs, nodes or DeepSpeed: name an accelerate config from conf/accelerate/:
#   ACCELERATE_CONFIG=conf/accelerate/deepspeed_zero3.yaml bash scripts/sft.sh \
#       model=qwen2.5-7b model.path=/models/Qwen2.5-Math-7B-Instruct sft=long_context_32k peft=full
# Killed and started again with the same arguments, it resumes from its last checkpoint.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
if [[ -n ${ACCELERATE_CONFIG:-} ]]; then
  exec accelerate launch --config_file "$ACCELERATE_CONFIG" -m train_sft "$@"
fi
exec python -m train_sft "$@"
