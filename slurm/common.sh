# Sourced by every batch script of bioinstruct: slurm/*.sbatch and those `bioinstruct launch`
# writes. It keeps the host side of a job in charge of requeueing, because the program runs
# inside an Apptainer image that has no scontrol.
#
#   #SBATCH --signal=B:USR2@120   Slurm's warning goes to this shell (B:), 120 s before the end
#   #SBATCH --requeue             the job may be put back in the queue
#   #SBATCH --open-mode=append    a requeued run appends to the same logs
#   source slurm/common.sh
#   bi_run srun ... $(bi_container) python -m bioinstruct train ...
#
# The contract with the program: exit status 75 (EX_TEMPFAIL) means "I saved my state, run me
# again" (bioinstruct train after SIGUSR2, and every stage `bioinstruct launch` runs).
# bi_run requeues the job when the program exits 75, or exits non-zero after Slurm's warning
# signal (a program that does not catch it, e.g. `bioinstruct generate`, resumes from its files
# anyway). It never requeues a job that Slurm or a user is killing (SIGTERM: scancel, the time
# limit, or preemption, where PreemptMode=REQUEUE requeues by itself). It does not guess
# timeout against preemption from the elapsed time: both are the same signal and the same
# resume, bounded only by BI_MAX_REQUEUES (default 20) restarts of one job.

BI_REQUEUE_EXIT=75

# The command prefix that runs a program in $BI_IMAGE with $BI_BINDS (comma-separated), or
# nothing when BI_IMAGE is unset (the host's Python). --nv exposes the GPUs; never --cleanenv,
# which would drop SLURM_* (ranks, node list) that the program reads.
bi_container() {
  [ -n "${BI_IMAGE:-}" ] || return 0
  printf 'apptainer exec --nv'
  [ -n "${BI_BINDS:-}" ] && printf ' --bind %s' "$BI_BINDS"
  printf ' %s\n' "$BI_IMAGE"
}

bi_run() {
  local child rc
  _bi_usr2=0 _bi_term=0
  # srun forwards USR2 to every task; apptainer forwards it to the program.
  trap '_bi_usr2=1; kill -USR2 "$child" 2>/dev/null' USR2
  # Slurm sends SIGTERM to every process of the job itself; only remember that it did.
  trap '_bi_term=1' TERM
  "$@" &
  child=$!
  # Poll instead of `wait`: a trap interrupts `wait`, and waiting again after that can lose
  # the child's exit status (bash 5.2 answers -1). Traps run between polls (<= 1 s late).
  while kill -0 "$child" 2>/dev/null; do sleep 1; done
  wait "$child"
  rc=$?
  trap - USR2 TERM
  if [ "$_bi_term" -eq 0 ] && { [ "$rc" -eq "$BI_REQUEUE_EXIT" ] || { [ "$_bi_usr2" -eq 1 ] && [ "$rc" -ne 0 ]; }; }; then
    bi_requeue "$rc"
  fi
  return "$rc"
}

# The job to requeue: exactly this one. An array task is named 123_4, never by its own job id:
# one array task's id equals the array's (123), which scontrol reads as every task of it.
bi_job_id() {
  if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  else
    echo "$SLURM_JOB_ID"
  fi
}

bi_requeue() {
  local restarts=${SLURM_RESTART_COUNT:-0} id
  id=$(bi_job_id)
  if [ "$restarts" -ge "${BI_MAX_REQUEUES:-20}" ]; then
    echo "bioinstruct: job $id stopped (exit $1) after $restarts restarts; not requeued (BI_MAX_REQUEUES)" >&2
    return 0
  fi
  echo "bioinstruct: requeueing job $id (exit $1, restart $((restarts + 1)))" >&2
  scontrol requeue "$id"
}
