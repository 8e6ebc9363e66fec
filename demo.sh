#!/usr/bin/env bash
# The main job on a fresh machine: makes .venv, installs the CPU build of torch and the requirements, then runs the
# whole pipeline on the built-in synthetic world (tools/run_demo.py; options are passed on, e.g. --seed 1).
set -euo pipefail
cd "$(dirname "$0")"
start=$(date +%s)
source tools/setup_venv.sh
python tools/run_demo.py "$@"
echo "[demo.sh] total $(( $(date +%s) - start ))s, installation included"
