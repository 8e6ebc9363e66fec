#!/usr/bin/env bash
# Stage 2 (joint representation / prediction / action training) on slurm, as in the authors' README:
#   sbatch [sbatch options] scripts_train/slurm_train_stage2_contrastive_joint.sh CONFIG GPUS SEED
# CONFIG: e.g. configs/joint_train/lr6e-04_tmp004_300m.py (it names the stage-1 run to start from in
# ckpt.load_ckpt_info); GPUS: total number of GPUs (GPUS_PER_NODE per node, default 8); SEED: the data/init seed.
# Extra arguments are passed to train.py.
#SBATCH --job-name=egoagent-stage2
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=10
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG GPUS SEED [train.py options]" >&2; exit 2
fi
CONFIG=$1; GPUS=$2; SEED=$3; shift 3
cd "$(dirname "$0")/.."
source scripts_train/slurm_env.sh
[ -f "$CONFIG" ] || { echo "config not found: $CONFIG" >&2; exit 2; }
if in_job_step; then
  exec python -u train.py --config "$CONFIG" --launcher slurm --port "$PORT" --seed "$SEED" "$@"
fi
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PER_NODE=$(( GPUS < GPUS_PER_NODE ? GPUS : GPUS_PER_NODE ))
NODES=$(( (GPUS + PER_NODE - 1) / PER_NODE ))
mkdir -p logs
exec srun --nodes="$NODES" --ntasks="$GPUS" --ntasks-per-node="$PER_NODE" --gpus-per-task=1 --kill-on-bad-exit=1 \
  python -u train.py --config "$CONFIG" --launcher slurm --port "$PORT" --seed "$SEED" "$@"
