#!/usr/bin/env bash
# A template for the whole two-stage run on a slurm cluster. Copy it, set the partition/account and sizes, then:
#   sbatch scripts_train/sbatch_template.sh
# Both stages resume by themselves (ckpt.auto_resume): on pre-emption slurm sends USR1 180 s ahead (--signal),
# every rank saves a checkpoint, rank 0 requeues the job (--requeue), and the requeued job continues.
#SBATCH --job-name=egoagent
#SBATCH --partition=YOUR_PARTITION
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=10
#SBATCH --time=48:00:00
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
STAGE1=configs/dino_pretrain/lr5e-4_tmp004_300m.py
STAGE2=configs/joint_train/lr6e-04_tmp004_300m.py
GPUS=$(( SLURM_NNODES * SLURM_NTASKS_PER_NODE ))
# stage 1 returns at once when its run folder already holds the final checkpoint
bash scripts_train/source_slurm_train_stage1_contrastive_w_tokenizer.sh "$SLURM_NNODES" "$STAGE1" "$SLURM_NTASKS_PER_NODE"
bash scripts_train/slurm_train_stage2_contrastive_joint.sh "$STAGE2" "$GPUS" 0
