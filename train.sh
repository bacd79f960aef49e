#!/usr/bin/env bash
# The whole pipeline on the small offline default, from a bare machine:
#   bash train.sh                      # no arguments: offline synthetic data + tiny model, CPU, minutes
#   bash train.sh run_name=try2        # overrides every stage's config knows (run_name, model=...)
# Re-running the same command resumes: stages whose manifest matches their config and inputs are skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# 1. Environment: create or reuse .venv from requirements.txt (first time ~3 min, then ~1 s).
source scripts/activate.sh

# 2. Data (~20 s): build the tiny offline model, then synthetic OpenR1 -> SFT records / pairs / prompts.
bash data_preprocess.sh "$@"

# 3. Round-0 SFT (~1 min on 2 cores): full fine-tuning of the tiny model on the verified R1 traces.
bash scripts/sft.sh "$@"

# Next stages, in DESIGN.md's order: reward_model -> reject_sampling rounds -> grpo -> evaluation ->
# report. Each joins this script as it lands; the README's "Status" says which have.
run_dir="runs/$(printf '%s\n' "$@" | sed -n 's/^run_name=//p' | tail -n 1)"
[[ $run_dir != runs/ ]] || run_dir=runs/default
python -m core.show_manifest "$run_dir/data"
python -m core.show_manifest "$run_dir/round_0/sft"
