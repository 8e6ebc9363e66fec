#!/usr/bin/env bash
# Stage 1 (DINO pretraining) on slurm, as in the authors' README:
#   sbatch [sbatch options] scripts_train/source_slurm_train_stage1_contrastive_w_tokenizer.sh NODES CONFIG WORKERS
#   srun -N NODES --ntasks-per-node=WORKERS --gpus-per-task=1 scripts_train/source_slurm_train_stage1_contrastive_w_tokenizer.sh NODES CONFIG WORKERS
# NODES: number of nodes; CONFIG: e.g. configs/dino_pretrain/lr5e-4_tmp004_300m.py; WORKERS: GPUs (tasks) per node.
# Extra arguments are passed to train.py (e.g. --seed 1 --opt data.total_steps=1000).
#SBATCH --job-name=egoagent-stage1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=10
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NODES CONFIG WORKERS [train.py options]" >&2; exit 2
fi
NODES=$1; CONFIG=$2; WORKERS=$3; shift 3
cd "$(dirname "$0")/.."
source scripts_train/slurm_env.sh
[ -f "$CONFIG" ] || { echo "config not found: $CONFIG" >&2; exit 2; }
if in_job_step; then
  exec python -u train.py --config "$CONFIG" --launcher slurm --port "$PORT" "$@"
fi
mkdir -p logs
exec srun --nodes="$NODES" --ntasks-per-node="$WORKERS" --gpus-per-task=1 --kill-on-bad-exit=1 \
  python -u train.py --config "$CONFIG" --launcher slurm --port "$PORT" "$@"
