#!/usr/bin/env bash
# Stage 1 (DINO pretraining) on slurm, as in the authors' README, from the repository root:
#   sbatch -N NODES --ntasks-per-node=WORKERS scripts_train/source_slurm_train_stage1_contrastive_w_tokenizer.sh NODES CONFIG WORKERS
#   srun -N NODES --ntasks-per-node=WORKERS scripts_train/source_slurm_train_stage1_contrastive_w_tokenizer.sh NODES CONFIG WORKERS
# NODES: number of nodes; CONFIG: e.g. configs/dino_pretrain/lr5e-4_tmp004_300m.py; WORKERS: GPUs (tasks) per node.
# Extra arguments are passed to train.py (e.g. --seed 1 --opt data.total_steps=1000).
# The #SBATCH lines below are defaults: options on the sbatch line win (on a CPU-only cluster:
# --gpus-per-task=0 --cpus-per-task=N). The log: slurm-egoagent-stage1-JOBID.out in the folder sbatch ran in
# (appended to when the job is requeued). Pre-emption: slurm sends USR1 180 s before the job ends (--signal); every
# rank saves a checkpoint, the job requeues itself (--requeue) and resumes from it.
#SBATCH --job-name=egoagent-stage1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=10
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NODES CONFIG WORKERS [train.py options]" >&2; exit 2
fi
NODES=$1; CONFIG=$2; WORKERS=$3; shift 3
# sbatch runs a copy of this script from slurm's spool folder, so the repository is EGOAGENT_ROOT when set, else
# the folder above this script when that is the repository (srun, bash), else the folder sbatch was called from.
REPO=${EGOAGENT_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
[ -f "$REPO/scripts_train/slurm_env.sh" ] || REPO=${SLURM_SUBMIT_DIR:-$PWD}
[ -f "$REPO/scripts_train/slurm_env.sh" ] || { echo "$0: no EgoAgent repository at $REPO: run sbatch from the" \
  "repository root, or set EGOAGENT_ROOT" >&2; exit 2; }
cd "$REPO" && source scripts_train/slurm_env.sh
check_allocation "$NODES" $(( NODES * WORKERS ))
launch --config "$CONFIG" "$@"
