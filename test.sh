#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: makes .venv, installs the CPU build of torch and the
# requirements, lints with ruff (pyproject.toml), then pytest on 2 workers. No GPU and no data needed (the tests
# generate a tiny synthetic world).
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup_venv.sh test
python -m ruff check .
python -m pytest -n 2 -q -rs --timeout 900 "$@"  # -rs: every skip prints its reason
