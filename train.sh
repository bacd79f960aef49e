#!/usr/bin/env bash
# The whole pipeline, from a bare machine: environment -> tiny model + offline data -> rounds of
# (SFT -> reward model -> rejection sampling) -> GRPO -> evaluation -> report (runs/<run_name>/report/).
#   bash train.sh                                    # no arguments: offline default (CPU, minutes)
#   bash train.sh rounds=3 train_sft.sft.max_steps=800 reject_sampling.sampling.n=8
#   bash train.sh experiment=qwen2.5-1.5b_lora_16k model_path=/models/Qwen2.5-1.5B-Instruct \
#       input_dir=/data/OpenR1-Math-220k
#   bash train.sh -m train_sft.sft.learning_rate=1e-3,3e-3   # a sweep: runs/default/sweep_<n>
# Arguments are Hydra overrides of conf/pipeline.yaml. Re-running the same command resumes: finished stages
# (manifest matches config and inputs) are skipped, the interrupted one resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/activate.sh   # create or reuse .venv (first time ~3 min, then ~1 s), offline variables
exec python -m pipeline "$@"
