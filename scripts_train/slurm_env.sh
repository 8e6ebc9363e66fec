# Shared by the slurm launch scripts (sourced). Picks the rendezvous port and the per-task launch.
# A port derived from the job id keeps two jobs on one node from colliding; override with PORT=...
PORT=${PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
# Inside an srun job step every task runs this script itself: start train.py directly.
# Inside an sbatch allocation (the batch step): start the tasks with srun.
in_job_step() {
  [ -n "${SLURM_STEP_ID:-}" ] && [ "${SLURM_STEP_ID}" != "4294967294" ] && [ "${SLURM_STEP_ID}" != "batch" ]
}
# Tell the framework NCCL should fail on a stuck collective instead of hanging (parallel.timeout_s).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export PYTHONUNBUFFERED=1
