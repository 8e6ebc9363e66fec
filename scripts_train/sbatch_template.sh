#!/usr/bin/env bash
# The whole two-stage run in one slurm allocation, from the repository root:
#   sbatch [-p PARTITION] [-N NODES --ntasks-per-node=GPUS_PER_NODE] scripts_train/sbatch_template.sh [STAGE1_CONFIG STAGE2_CONFIG [SEED]]
# Without configs: the paper's 300M configs (stage 2's ckpt.load_ckpt_info names stage 1's run folder). The
# #SBATCH lines below are defaults: options on the sbatch line win (copy the file to change them for good).
# Both stages resume by themselves (ckpt.auto_resume): on pre-emption slurm sends USR1 180 s ahead (--signal),
# every rank saves a checkpoint, rank 0 requeues the job (--requeue), and the requeued job continues: stage 1 returns
# at once when its run folder already holds the final checkpoint. The log: slurm-egoagent-JOBID.out (appended to).
#SBATCH --job-name=egoagent
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=10
#SBATCH --time=48:00:00
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
STAGE1=${1:-configs/dino_pretrain/lr5e-4_tmp004_300m.py}
STAGE2=${2:-configs/joint_train/lr6e-04_tmp004_300m.py}
SEED=${3:-0}
# sbatch runs a copy of this script from slurm's spool folder: the repository is EGOAGENT_ROOT when set, else the
# folder sbatch was called from.
REPO=${EGOAGENT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
[ -f "$REPO/scripts_train/slurm_env.sh" ] || { echo "$0: no EgoAgent repository at $REPO: run sbatch from the" \
  "repository root, or set EGOAGENT_ROOT" >&2; exit 2; }
cd "$REPO"
NODES=$SLURM_JOB_NUM_NODES
bash scripts_train/source_slurm_train_stage1_contrastive_w_tokenizer.sh "$NODES" "$STAGE1" $(( SLURM_NTASKS / NODES ))
# a stage 1 stopped early without a requeue (e.g. pre-empted in a job that cannot requeue) must not feed stage 2
"${PYTHON:-python}" - "$STAGE1" <<'PY' || { echo "$0: stage 1 did not reach its last step: stage 2 not started" >&2; exit 1; }
import sys
from internlm.checkpoint.layout import complete_steps
from internlm.config import load_config
cfg = load_config(sys.argv[1])
steps = complete_steps(cfg.ckpt.save_ckpt_folder)
sys.exit(0 if steps and steps[-1] >= cfg.data.total_steps else 1)
PY
bash scripts_train/slurm_train_stage2_contrastive_joint.sh "$STAGE2" "$SLURM_NTASKS" "$SEED"
