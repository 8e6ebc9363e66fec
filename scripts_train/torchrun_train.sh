#!/usr/bin/env bash
# One node, no slurm: torchrun starts GPUS processes.
#   scripts_train/torchrun_train.sh CONFIG GPUS [SEED] [train.py options]
# SEED (a number) overrides data.seed; without it the config's own is used. torchrun holds the rendezvous
# (--master_port, MASTER_PORT=... here): a --port among the train.py options is ignored with a notice.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG GPUS [SEED] [train.py options]" >&2; exit 2
fi
CONFIG=$1; GPUS=$2; shift 2
SEED=()
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then SEED=(--seed "$1"); shift; fi
cd "$(dirname "$0")/.."
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
RDZV=(--standalone)
[ -n "${MASTER_PORT:-}" ] && RDZV=(--master_addr=127.0.0.1 --master_port="$MASTER_PORT")
exec "${PYTHON:-python}" -m torch.distributed.run "${RDZV[@]}" --nproc_per_node="$GPUS" train.py --config "$CONFIG" \
  --launcher torch ${SEED[@]+"${SEED[@]}"} "$@"
