# Sourced by test.sh and demo.sh: create and activate .venv and install what the project needs (idempotent).
#   source tools/setup_venv.sh [test]
# PYTHON picks the interpreter (default python3, >= 3.10). Cluster users install their CUDA build of torch first
# (see requirements/torch.txt); a torch already in the venv is kept.
set -euo pipefail
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "[setup] $("$PYTHON" --version 2>&1) is too old: Python >= 3.10 is needed (set PYTHON=python3.10 or newer)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
source .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch (requirements/torch.txt)"
  python -m pip install -q -r requirements/torch.txt
fi
wanted="requirements/runtime.txt"
[ "${1:-}" = "test" ] && wanted="$wanted requirements/test.txt"
stamp=".venv/.installed-$(cat $wanted pyproject.toml | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing $wanted and the package (pip install -e .)"
  python -m pip install -q $(printf -- '-r %s ' $wanted) 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip install -q --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
  python -c "import torch, cv2, projectaria_tools, internlm" || { echo "[setup] install failed" >&2; exit 1; }
  touch "$stamp"
fi
echo "[setup] $(python -c 'import torch; print("torch", torch.__version__)') in .venv ready"
