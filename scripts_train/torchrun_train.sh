#!/usr/bin/env bash
# One node, no slurm: torchrun starts GPUS processes.
#   scripts_train/torchrun_train.sh CONFIG GPUS [SEED] [train.py options]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG GPUS [SEED] [train.py options]" >&2; exit 2
fi
CONFIG=$1; GPUS=$2; SEED=${3:-0}; shift $(( $# >= 3 ? 3 : 2 ))
cd "$(dirname "$0")/.."
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
exec torchrun --standalone --nproc_per_node="$GPUS" train.py --config "$CONFIG" --launcher torch --seed "$SEED" "$@"
