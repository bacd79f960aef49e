# Sourced by every top-level script: create/reuse .venv, activate it, and make the run offline.
# shellcheck shell=bash
_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$_ROOT/scripts/bootstrap.sh" || return 1 2>/dev/null || exit 1
# shellcheck disable=SC1091
source "${VENV:-$_ROOT/.venv}/bin/activate"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
cd "$_ROOT"
