"""``bioinstruct launch`` and ``bioinstruct status``: sweeps of the pipeline's stages as
Slurm jobs (or local processes) through submitit.

  sweep.py         the sweep file and its plan: tasks, configs, outputs, what is complete
  submit.py        the `launch` verb: submit the plan (chunks, job cap), record each submission
  hub.py           models named by hub id pinned to snapshots for offline compute nodes
  executors.py     Slurm, local and debug executors (submitit), sbatch scripts
  jobs.py          run_task: what every launched job runs; done(): is a task complete
  status.py        the `status` verb: per-task state from manifests, attempts and the queue
  submitit_env.py  submitit imported without its logging set-up; its job environment
"""
