# Shared by the slurm launch scripts (sourced from the repository root, after the script found it).
# The rendezvous port: derived from the job id so that two jobs on one node do not collide; override with PORT=...
PORT=${PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
PYTHON=${PYTHON:-python}  # the job inherits the submitting shell's environment: activate the venv before sbatch
# Tell the framework NCCL should fail on a stuck collective instead of hanging (parallel.timeout_s).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export PYTHONUNBUFFERED=1

# Inside an srun job step every task runs the script itself: start train.py directly.
# Inside an sbatch allocation (the batch step): start the tasks with srun.
in_job_step() {
  [ -n "${SLURM_STEP_ID:-}" ] && [ "${SLURM_STEP_ID}" != "4294967294" ] && [ "${SLURM_STEP_ID}" != "batch" ]
}

if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "$0: not in a slurm job: submit with sbatch or run under srun (one node without slurm:" \
       "scripts_train/torchrun_train.sh)" >&2
  exit 2
fi

# check_allocation NODES TASKS: the job (sbatch) or job step (srun) must have the geometry the command asks for;
# NODES may be empty (any).
check_allocation() {
  local nodes tasks
  if in_job_step; then
    nodes=${SLURM_STEP_NUM_NODES:-${SLURM_JOB_NUM_NODES:-?}}; tasks=${SLURM_STEP_NUM_TASKS:-${SLURM_NTASKS:-?}}
  else
    nodes=${SLURM_JOB_NUM_NODES:-?}; tasks=${SLURM_NTASKS:-?}
  fi
  if { [ -n "$1" ] && [ "$nodes" != "$1" ]; } || [ "$tasks" != "$2" ]; then
    echo "$0: the command asks for ${1:+$1 node(s) and }$2 task(s), but the job has $nodes node(s) and $tasks" \
         "task(s): submit with sbatch${1:+ -N $1} --ntasks=$2 (or -N and --ntasks-per-node)" >&2
    exit 2
  fi
}

# launch TRAIN_ARGS...: as an srun task, exec train.py; in the batch step, srun one train.py per task of the job.
launch() {
  local config=$2
  [ -f "$config" ] || { echo "$0: config not found: $config (relative to $PWD)" >&2; exit 2; }
  if in_job_step; then
    exec "$PYTHON" -u train.py --launcher slurm --port "$PORT" "$@"
  fi
  echo "[egoagent] $(date '+%F %T') job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname):" \
       "$SLURM_NTASKS task(s) on $SLURM_JOB_NUM_NODES node(s), repository $PWD, port $PORT"
  # srun of slurm >= 22.05 does not take --cpus-per-task from the job: pass it on
  exec srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK} \
    "$PYTHON" -u train.py --launcher slurm --port "$PORT" "$@"
}
