#!/usr/bin/env bash
# Stage 2 (joint representation / prediction / action training) on slurm, as in the authors' README, from the
# repository root:
#   sbatch -N NODES --ntasks-per-node=GPUS_PER_NODE scripts_train/slurm_train_stage2_contrastive_joint.sh CONFIG GPUS SEED
#   srun -N NODES --ntasks-per-node=GPUS_PER_NODE scripts_train/slurm_train_stage2_contrastive_joint.sh CONFIG GPUS SEED
# CONFIG: e.g. configs/joint_train/lr6e-04_tmp004_300m.py (it names the stage-1 run to start from in
# ckpt.load_ckpt_info); GPUS: total number of GPUs (tasks) = NODES x GPUS_PER_NODE; SEED: the data/init seed
# (optional: without it, the config's data.seed). Extra arguments are passed to train.py.
# The #SBATCH lines below are defaults: options on the sbatch line win (on a CPU-only cluster:
# --gpus-per-task=0 --cpus-per-task=N). The log: slurm-egoagent-stage2-JOBID.out in the folder sbatch ran in
# (appended to when the job is requeued). Pre-emption: slurm sends USR1 180 s before the job ends (--signal); every
# rank saves a checkpoint, the job requeues itself (--requeue) and resumes from it.
#SBATCH --job-name=egoagent-stage2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=10
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG GPUS [SEED] [train.py options]" >&2; exit 2
fi
CONFIG=$1; GPUS=$2; shift 2
SEED=()
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then SEED=(--seed "$1"); shift; fi
# sbatch runs a copy of this script from slurm's spool folder, so the repository is EGOAGENT_ROOT when set, else
# the folder above this script when that is the repository (srun, bash), else the folder sbatch was called from.
REPO=${EGOAGENT_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
[ -f "$REPO/scripts_train/slurm_env.sh" ] || REPO=${SLURM_SUBMIT_DIR:-$PWD}
[ -f "$REPO/scripts_train/slurm_env.sh" ] || { echo "$0: no EgoAgent repository at $REPO: run sbatch from the" \
  "repository root, or set EGOAGENT_ROOT" >&2; exit 2; }
cd "$REPO" && source scripts_train/slurm_env.sh
check_allocation "" "$GPUS"
launch --config "$CONFIG" ${SEED[@]+"${SEED[@]}"} "$@"
