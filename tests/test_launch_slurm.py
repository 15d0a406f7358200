"""bioinstruct launch on a real Slurm (slurm/local/start.sh: two emulated nodes n1, n2 with
2 CPUs each; partition high preempts debug): the quickstart sweep end to end, a training
task preempted mid-run that finishes with the adapter of an uninterrupted run, a failed
task shown by status and rerun alone by --resume, a two-node job's distributed
environment, and the plain sbatch templates (training across both nodes)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bioinstruct.cli import main
from bioinstruct.runs.config import load_config
from bioinstruct.stages.generate import load_seeds
from bioinstruct.launch.sweep import Sweep, make_plan
from bioinstruct.launch.executors import SlurmExecutor
from bioinstruct.launch.status import read_manifests, task_rows
from bioinstruct.testing.openai_server import OpenAIServer

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
ACTIVE = {"pending", "running", "requeued"}


def wait_for_sweeps(run_dir: Path, timeout: float = 300) -> list[dict]:
    """Status rows of every sweep in run_dir once none is pending, running or requeued, and
    their jobs have left the queue (a task is done once its output is, a little before)."""
    deadline = time.time() + timeout
    while True:
        rows = [r for m in read_manifests(run_dir).values() for r in task_rows(m, SlurmExecutor())]
        if not any(r["state"] in ACTIVE for r in rows) and not SlurmExecutor().live(
                [r["job_id"] for r in rows if r["job_id"]]):
            return rows
        assert time.time() < deadline, f"still running after {timeout} s: {rows}"
        time.sleep(1)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    """80 instruction records: the seed tasks' first instances."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"instruction": s["instruction"], "input": s["instances"][0]["input"],
             "output": s["instances"][0]["output"]} for s in load_seeds(None)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_sweep(tmp_path, name, model, data, *, steps):
    """One tiny training task as a sweep: 2 CPU ranks, srun starts them."""
    return write(tmp_path, f"{name}.yaml", f"""
        name: {name}
        stages:
          train:
            kind: train
            config: configs/train/tiny/lora.yaml
            set: {{model.path: {model}, data.path: {data}, data.max_length: 192, optim.max_steps: {steps},
                   checkpoint.every_steps: 100}}
            resources: {{gpus_per_node: 0, tasks_per_node: 2, cpus_per_task: 1, mem_gb: 1, time_limit_min: 10}}
        """)


def test_quickstart_sweep_runs_end_to_end_with_arrays_and_dependencies(local_slurm, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    # The shipped sweep, with shorter pretraining and training (the tier's time budget).
    overrides = [f"run_dir={run}", "stages.tiny-model.set.model.pretrain_steps=10",
                 "stages.train.set.optim.max_steps=4"]
    args = ["launch", "launch/quickstart-local.yaml", "--cluster", "slurm", *overrides]
    assert main(args) == 0
    rows = wait_for_sweeps(run, timeout=600)
    # tiny-model, generate, filter, decontaminate, classify, subsets, 2 train, 3 evaluate, report
    assert [r["state"] for r in rows] == ["done"] * 12, [(r["stage"], r["state"]) for r in rows]
    train = [r for r in rows if r["stage"] == "train"]
    array = train[0]["job_id"].split("_")[0]
    assert [r["job_id"] for r in train] == [f"{array}_0", f"{array}_1"]  # one array, two tasks
    for subset in ("all", "size-40"):
        assert (run / "train" / f"tiny__{subset}" / "adapter" / "adapter_model.safetensors").exists()
    summary = json.loads((run / "train" / "tiny__all" / "manifest.json").read_text())["summary"]
    assert summary["world_size"] == 2 and summary["steps"] == 4
    # Evaluation of the base and both tuned models, and the report built from their results.
    for model in ("base", "tiny__all", "tiny__size-40"):
        for task in ("pubmedqa", "medmcqa", "mednli"):
            results = json.loads((run / "evaluate" / model / task / "results.json").read_text())
            assert results["model"] == model and results["n"] > 0
    report = json.loads((run / "report" / "manifest.json").read_text())
    assert report["status"] == "complete" and (run / "report" / "index.html").exists()

    # What was submitted is byte for byte what --dry-run prints, with the real upstream ids.
    manifest = read_manifests(run)["quickstart"]
    ids = {s["name"]: s["tasks"][0]["job_id"].split("_")[0] for s in manifest["stages"]}
    plan = make_plan(load_config(Sweep, "launch/quickstart-local.yaml", overrides), "q")
    for stage in plan.stages:
        job = plan.job(stage, stage.tasks, [ids[a] for a in stage.after])
        submitted = job.folder / f"{ids[stage.name]}_submission.sh"
        assert submitted.read_text() == SlurmExecutor().script(job), stage.name
    assert f"#SBATCH --dependency=afterok:{ids['tiny-model']}:{ids['subsets']}" in \
        (plan.dir / "train" / "logs" / f"{array}_submission.sh").read_text()

    capsys.readouterr()
    assert main(args) == 0  # everything is complete: nothing to submit
    assert "submitted" not in capsys.readouterr().out


def test_training_preempted_mid_run_is_requeued_and_ends_with_the_uninterrupted_adapter(
        local_slurm, tmp_path, tiny_model_dir, train_data, monkeypatch):
    monkeypatch.chdir(REPO)
    runs = {name: tmp_path / name for name in ("reference", "preempted")}
    for name, run in runs.items():  # one per node, side by side
        # Enough steps that the preemption lands mid-run: a signal in the last step lets the run finish.
        sweep = train_sweep(tmp_path, name, tiny_model_dir, train_data, steps=48)
        assert main(["launch", str(sweep), "--cluster", "slurm", f"run_dir={run}"]) == 0
    stage = runs["preempted"] / "train" / "tiny__train"
    deadline = time.time() + 180
    while not ((stage / "metrics.jsonl").exists() and len((stage / "metrics.jsonl").read_text().splitlines()) >= 2):
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    job = read_manifests(runs["preempted"])["preempted"]["stages"][0]["tasks"][0]["job_id"]
    node = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True).stdout.strip()
    # A job of the higher-priority partition that needs the whole node: Slurm signals the
    # training job (USR2, GraceTime), which saves a checkpoint, exits 75 and is requeued.
    subprocess.run(["sbatch", "-p", "high", f"--nodelist={node}", "-n", "2", "--cpus-per-task=1", "--mem=100M",
                    f"--output={tmp_path}/high.out", "--wrap", "sleep 1"], check=True, capture_output=True)

    rows = {name: wait_for_sweeps(run, timeout=300)[0] for name, run in runs.items()}
    assert rows["reference"]["state"] == rows["preempted"]["state"] == "done", rows
    assert rows["reference"]["restarts"] == 0 and rows["preempted"]["restarts"] == 1
    attempts = [json.loads(line) for line in
                Path(read_manifests(runs["preempted"])["preempted"]["stages"][0]["tasks"][0]["attempts"])
                .read_text().splitlines()]
    assert [(a["event"], a.get("outcome")) for a in attempts] == [
        ("start", None), ("end", "requeue"), ("start", None), ("end", "complete")]
    log = Path(rows["preempted"]["log"]).read_text()
    assert "resuming from" in log and "requeueing job" in log

    def adapter(run):
        return load_file(run / "train" / "tiny__train" / "adapter" / "adapter_model.safetensors")

    def losses(run):
        by_step = {}
        for line in (run / "train" / "tiny__train" / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            by_step[row["step"]] = row["loss"]
        return [by_step[k] for k in sorted(by_step)]

    reference, resumed = adapter(runs["reference"]), adapter(runs["preempted"])
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert losses(runs["reference"]) == losses(runs["preempted"])


def test_a_failed_task_is_shown_by_status_and_resume_reruns_only_it_and_its_dependents(
        local_slurm, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    records = [{"instruction": s["instruction"], "input": s["instances"][0]["input"],
                "output": s["instances"][0]["output"]} for s in load_seeds(None)]
    (data / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:30]))
    sweep = write(tmp_path, "sweep.yaml", f"""
        name: flaky
        defaults: {{all: {{resources: {{cpus_per_task: 1, mem_gb: 1, time_limit_min: 5}}}}}}
        stages:
          filter:
            kind: filter
            grid: {{input: {{a: {{input: {data}/a.jsonl}}, b: {{input: {data}/b.jsonl}}}}}}
            set: {{output: "{{run_dir}}/filter-{{label}}/kept.jsonl"}}
          classify:
            kind: classify
            after: [filter]
            set: {{input: "{{run_dir}}/filter-a/kept.jsonl", llm.backend: offline}}
        """)
    run = tmp_path / "run"
    assert main(["launch", str(sweep), "--cluster", "slurm", f"run_dir={run}"]) == 0
    rows = wait_for_sweeps(run, timeout=120)
    states = [(r["stage"], r["index"], r["state"]) for r in rows]
    assert states == [("filter", 0, "done"), ("filter", 1, "failed"), ("classify", 0, "failed")], rows
    assert "b.jsonl: no such file" in rows[1]["detail"]
    first_job = rows[0]["job_id"]

    capsys.readouterr()
    assert main(["status", str(run)]) == 1  # a failed task: exit status 1
    out = capsys.readouterr().out
    assert "failed" in out and "b.jsonl: no such file" in out and rows[1]["log"] in out

    (data / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[30:60]))
    assert main(["launch", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "filter: 1 task(s) submitted" in out and "classify: 1 task(s) submitted" in out
    rows = wait_for_sweeps(run, timeout=120)
    assert [r["state"] for r in rows] == ["done"] * 3, rows
    assert rows[0]["job_id"] == first_job  # the task that had finished was not run again
    attempts = read_manifests(run)["flaky"]["stages"][0]["tasks"][0]["attempts"]
    assert len(Path(attempts).read_text().splitlines()) == 2  # one start, one end


def test_a_two_node_job_gets_one_rank_per_task_with_the_distributed_environment(local_slurm, tmp_path):
    """The environment of each rank of a 2 x 2 job, through the same host side as every job
    (training across both nodes: test_plain_sbatch_templates_generate_and_train)."""
    probe = write(tmp_path, "probe.sbatch", f"""\
        #!/bin/bash
        #SBATCH --nodes=2
        #SBATCH --ntasks-per-node=2
        #SBATCH --gpus-per-node=2
        #SBATCH --cpus-per-task=1
        #SBATCH --mem=100M
        #SBATCH --output={tmp_path}/probe.out
        source {REPO}/slurm/common.sh
        bi_run srun --cpus-per-task=1 {sys.executable} -c '
        import json, os
        from bioinstruct.modeling.distributed import slurm_environment
        print(json.dumps({{"node": os.environ["SLURMD_NODENAME"], "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
                          **slurm_environment()}}))'
        """)
    subprocess.run(["sbatch", "--wait", str(probe)], check=True, capture_output=True, timeout=120)
    ranks = sorted((json.loads(line) for line in (tmp_path / "probe.out").read_text().splitlines()
                    if line.startswith("{")), key=lambda r: int(r["RANK"]))
    assert [(r["RANK"], r["LOCAL_RANK"], r["node"]) for r in ranks] == [
        ("0", "0", "n1"), ("1", "1", "n1"), ("2", "0", "n2"), ("3", "1", "n2")]
    assert {(r["WORLD_SIZE"], r["LOCAL_WORLD_SIZE"], r["MASTER_ADDR"], r["MASTER_PORT"], r["gpus"]) for r in ranks} \
        == {("4", "2", "n1", ranks[0]["MASTER_PORT"], "0,1")}


def test_plain_sbatch_templates_generate_and_train(local_slurm, tmp_path, tiny_model_dir, train_data):
    """generate.sbatch beside train.sbatch over a rows file, the training with one rank on
    each node: the ranks meet on n1 (MASTER_ADDR) across the emulated nodes."""
    run = tmp_path / "run"
    rows = tmp_path / "rows.txt"
    rows.write_text(f"configs/train/tiny/lora.yaml train data.path={train_data} optim.max_steps=3\n")
    common = ["sbatch", "--parsable", "--chdir", str(REPO), "--mem=1G", "--cpus-per-task=1",
              f"--output={tmp_path}/%x-%j.out"]
    # As a user with the venv activated: sbatch hands the job this PATH, the scripts run `bioinstruct`.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    jobs = [subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout.strip()
            for command in (
        [*common, "slurm/generate.sbatch", f"run_dir={run}", "target=10", "llm.backend=offline"],
        [*common, "--array=1-1", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "slurm/train.sbatch",
         str(rows), f"run_dir={run}", f"model.path={tiny_model_dir}", "data.max_length=192"])]
    deadline = time.time() + 300
    while subprocess.run(["squeue", "-h", f"--jobs={','.join(jobs)}"], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, "the jobs did not end"
        time.sleep(1)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("bi-*.out"))
    assert (run / "generate" / "manifest.json").exists(), logs
    assert json.loads((run / "generate" / "manifest.json").read_text())["status"] == "complete", logs
    manifest = json.loads((run / "train" / "tiny__train" / "manifest.json").read_text())
    assert manifest["status"] == "complete", logs
    assert manifest["summary"]["world_size"] == 2 and manifest["summary"]["gradient_accumulation"] == 2
    train_job = subprocess.run(["scontrol", "-o", "show", "job", jobs[1]], capture_output=True, text=True).stdout
    assert " NodeList=n[1-2] " in train_job


ARRAY_TASK = """\
# One task of a 3-task array. The task whose own job id is the array's id (Slurm gives it to
# one of them) exits 75 once, after another task has finished and while the third runs.
d={tmp}
echo "${{SLURM_RESTART_COUNT:-0}}" >> $d/starts-$SLURM_ARRAY_TASK_ID
if [ "$SLURM_JOB_ID" = "$SLURM_ARRAY_JOB_ID" ]; then
  if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then
    echo "$SLURM_ARRAY_TASK_ID" > $d/requester.tmp && mv $d/requester.tmp $d/requester
    for i in $(seq 600); do [ -e $d/done ] && [ -e $d/running ] && break; sleep 0.1; done
    exit 75
  fi
  touch $d/again; exit 0
fi
for i in $(seq 600); do [ -e $d/requester ] && break; sleep 0.1; done
others=$(seq 0 2 | grep -vx "$(cat $d/requester)")
if [ "$SLURM_ARRAY_TASK_ID" = "$(echo "$others" | head -1)" ]; then touch $d/done; exit 0; fi
touch $d/running
for i in $(seq 600); do [ -e $d/again ] && break; sleep 0.1; done
"""


def test_an_array_task_that_asks_to_be_requeued_requeues_only_itself(local_slurm, tmp_path):
    """One array task's job id is the array's own id, which scontrol reads as the whole
    array: requeueing it by that id would run a finished task again and restart a running one."""
    (tmp_path / "task.sh").write_text(ARRAY_TASK.format(tmp=tmp_path))
    script = write(tmp_path, "array.sbatch", f"""\
        #!/bin/bash
        #SBATCH --array=0-2
        #SBATCH --requeue
        #SBATCH --cpus-per-task=1
        #SBATCH --mem=100M
        #SBATCH --open-mode=append
        #SBATCH --output={tmp_path}/%a.out
        source {REPO}/slurm/common.sh
        bi_run bash {tmp_path}/task.sh
        """)
    job = subprocess.run(["sbatch", "--parsable", str(script)], check=True, capture_output=True,
                         text=True).stdout.strip()
    deadline = time.time() + 120
    while subprocess.run(["squeue", "-h", f"--jobs={job}"], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, "the array did not end"
        time.sleep(0.5)
    requester = (tmp_path / "requester").read_text().strip()
    logs = {t: (tmp_path / f"{t}.out").read_text() for t in "012"}
    starts = {t: (tmp_path / f"starts-{t}").read_text().split() for t in "012"}
    # The task that asked ran twice; the finished one and the running one once each, undisturbed.
    assert starts == {t: (["0", "1"] if t == requester else ["0"]) for t in "012"}, (starts, logs)
    assert f"requeueing job {job}_{requester} (exit 75, restart 1)" in logs[requester], logs


FAKE_SBATCH = """\
#!/bin/bash
# The real sbatch, each job held (nothing runs); the launcher that called it is killed with
# SIGKILL right after the submission numbered $KILL_AT, before it reads the job id.
out=$({sbatch} --hold "$@") || {{ rc=$?; echo "$out"; exit $rc; }}
echo "${{out##* }} $*" >> {log}
[ "$(wc -l < {log})" = "${{KILL_AT:-0}}" ] && kill -9 $PPID
echo "$out"
"""


def held_sweep(tmp_path: Path, name: str) -> Path:
    """filter as an array of two, then classify: two submissions, held."""
    return write(tmp_path, f"{name}.yaml", f"""
        name: {name}
        defaults: {{all: {{resources: {{cpus_per_task: 1, mem_gb: 1, time_limit_min: 5}}}}}}
        stages:
          filter:
            kind: filter
            grid: {{input: {{a: {{input: {tmp_path}/a.jsonl}}, b: {{input: {tmp_path}/b.jsonl}}}}}}
            set: {{output: "{{run_dir}}/filter-{{label}}/kept.jsonl"}}
          classify:
            kind: classify
            after: [filter]
            set: {{input: "{{run_dir}}/filter-a/kept.jsonl", llm.backend: offline}}
        """)


def queued_in(folder: Path) -> list[str]:
    out = subprocess.run(["squeue", "-h", "--array", "-o", "%i|%o"], capture_output=True, text=True).stdout
    return sorted(line.split("|")[0] for line in out.splitlines() if str(folder) in line.split("|")[1])


def test_a_launch_killed_after_each_submission_resumes_without_a_second_copy(local_slurm, tmp_path):
    """The launcher dies of SIGKILL right after each sbatch in turn, before it learns the job
    id; `launch --resume` then takes the queued job as the task's and submits only the rest."""
    (tmp_path / "bin").mkdir()
    env = {**os.environ, "PATH": f"{tmp_path}/bin{os.pathsep}{os.environ['PATH']}"}
    bioinstruct = [sys.executable, "-m", "bioinstruct"]
    for kill_at in (1, 2):
        log = tmp_path / f"sbatch-{kill_at}.log"
        fake = tmp_path / "bin" / "sbatch"
        fake.write_text(FAKE_SBATCH.format(sbatch=shutil.which("sbatch", path=os.environ["PATH"]), log=log))
        fake.chmod(0o755)
        run = tmp_path / f"run-{kill_at}"
        sweep = held_sweep(tmp_path, f"cut{kill_at}")
        first = subprocess.run([*bioinstruct, "launch", str(sweep), "--cluster", "slurm", f"run_dir={run}"],
                               env={**env, "KILL_AT": str(kill_at)}, capture_output=True, text=True, cwd=REPO)
        assert first.returncode == -9, first.stderr
        resumed = subprocess.run([*bioinstruct, "launch", str(run), "--resume"], env=env, capture_output=True,
                                 text=True, cwd=REPO)
        assert resumed.returncode == 0, resumed.stderr
        submissions = [line.split()[0] for line in log.read_text().splitlines()]
        assert len(submissions) == 2, log.read_text()  # one per stage, whatever the cut
        stages = read_manifests(run)[f"cut{kill_at}"]["stages"]
        recorded = {s["name"]: [t["job_id"] for t in s["tasks"]] for s in stages}
        assert recorded == {"filter": [f"{submissions[0]}_0", f"{submissions[0]}_1"], "classify": [submissions[1]]}
        folder = run / "sweeps" / f"cut{kill_at}"
        assert queued_in(folder / "filter" / "logs") == recorded["filter"]
        assert queued_in(folder / "classify" / "logs") == recorded["classify"]
        # The dependency holds the job the killed launch submitted.
        job = subprocess.run(["scontrol", "-o", "show", "job", submissions[1]], capture_output=True, text=True).stdout
        assert f"Dependency=afterok:{submissions[0]}_" in job, job
        subprocess.run(["scancel", *submissions], check=True)


def test_a_refused_sbatch_says_what_is_queued_and_how_to_cancel_or_resume(local_slurm, tmp_path):
    run = tmp_path / "run"
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "sbatch"
    fake.write_text(FAKE_SBATCH.format(sbatch=shutil.which("sbatch"), log=tmp_path / "sbatch.log"))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}/bin{os.pathsep}{os.environ['PATH']}"}
    sweep = held_sweep(tmp_path, "refused")
    out = subprocess.run([sys.executable, "-m", "bioinstruct", "launch", str(sweep), "--cluster", "slurm",
                          f"run_dir={run}", "stages.classify.resources.partition=nope"],
                         env=env, capture_output=True, text=True, cwd=REPO)
    filter_job = (tmp_path / "sbatch.log").read_text().split()[0]
    subprocess.run(["scancel", filter_job], check=True)
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert "sbatch refused job refused-classify" in line and "invalid partition" in line.lower(), line
    assert f"filter (job {filter_job})" in line and f"`scancel {filter_job}`" in line, line
    assert f"`bioinstruct launch {run} --resume`" in line, line


def test_a_launch_piped_into_head_submits_and_records_everything_quietly(local_slurm, tmp_path):
    """`launch ... | head -1`: the reader leaves after the first stage's line; the launch goes
    on, records both stages and ends without a word on stderr (unbuffered: each line is a write)."""
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "sbatch"
    fake.write_text(FAKE_SBATCH.format(sbatch=shutil.which("sbatch"), log=tmp_path / "sbatch.log"))
    fake.chmod(0o755)
    run = tmp_path / "run"
    env = {**os.environ, "PATH": f"{tmp_path}/bin{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    command = (f"set -o pipefail; {sys.executable} -m bioinstruct launch {held_sweep(tmp_path, 'piped')} "
               f"--cluster slurm run_dir={run} | head -1")
    out = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, cwd=REPO)
    submissions = [line.split()[0] for line in (tmp_path / "sbatch.log").read_text().splitlines()]
    subprocess.run(["scancel", *submissions], check=True)
    assert (out.returncode, out.stderr) == (0, ""), out
    assert out.stdout.startswith("filter: 2 task(s) submitted") and len(out.stdout.splitlines()) == 1
    stages = read_manifests(run)["piped"]["stages"]
    assert [t["job_id"] for s in stages for t in s["tasks"]] == [f"{submissions[0]}_0", f"{submissions[0]}_1",
                                                                  submissions[1]]


@pytest.fixture
def max_array_size_8(local_slurm):
    """The local Slurm with a site's MaxArraySize=8 (start.sh restarts its daemons on a new
    config in a few seconds), set back afterwards."""
    env = {**os.environ, "BIOINSTRUCT_SLURM_DIR": str(local_slurm), "BIOINSTRUCT_SLURM_NODES": "2"}
    start = str(REPO / "slurm" / "local" / "start.sh")
    subprocess.run([start], env={**env, "BIOINSTRUCT_SLURM_LIMITS": "MaxArraySize=8"}, check=True,
                   capture_output=True, timeout=120)
    yield
    subprocess.run([start], env=env, check=True, capture_output=True, timeout=120)


def test_an_array_over_max_array_size_goes_as_chunks_seen_as_one_stage(
        max_array_size_8, tmp_path, tiny_model_dir, capsys, monkeypatch):
    """18 evaluation tasks under MaxArraySize=8: arrays of 8, 8 and 2 that the report waits
    for. The last one is cancelled before it starts; --resume submits only its tasks and the
    report, which waits for the chunks still running and the new one."""
    monkeypatch.chdir(REPO)
    demo = "{repo}/bioinstruct/data/demo_tasks"
    sweep = write(tmp_path, "chunks.yaml", f"""
        name: chunks
        defaults: {{all: {{resources: {{cpus_per_task: 1, mem_gb: 1, time_limit_min: 10, min_time_limit_min: 5}}}}}}
        stages:
          evaluate:
            kind: evaluate
            set:
              model: {tiny_model_dir}
              out: "{{run_dir}}/evaluate/{{label}}"
              max_new_tokens: 4
              task_data: {{pubmedqa: {{root: "{demo}"}}, medmcqa: {{root: "{demo}"}}, mednli: {{root: "{demo}"}}}}
            grid:
              task: {{pubmedqa: {{tasks: [pubmedqa]}}, medmcqa: {{tasks: [medmcqa]}}, mednli: {{tasks: [mednli]}}}}
              limit: [1, 2, 3, 4, 5, 6]
            resources: {{gpus_per_node: 0}}
          report:
            kind: report
            after: [evaluate]
        """)
    run = tmp_path / "run"
    assert main(["launch", str(sweep), "--dry-run", f"run_dir={run}"]) == 0
    dry = capsys.readouterr().out
    assert "(array of 18, as 3 arrays of at most 8 (MaxArraySize); the first)" in dry
    assert "#SBATCH --array=0-7%8" in dry and "#SBATCH --time-min=5" in dry and "#SBATCH --time=10" in dry

    assert main(["launch", str(sweep), f"run_dir={run}"]) == 0
    tasks = read_manifests(run)["chunks"]["stages"][0]["tasks"]
    chunks = list(dict.fromkeys(t["job_id"].split("_")[0] for t in tasks))
    assert [t["job_id"] for t in tasks] == [f"{c}_{i}" for c, n in zip(chunks, (8, 8, 2)) for i in range(n)]
    assert f"evaluate: 18 task(s) submitted as jobs {', '.join(chunks)}" in capsys.readouterr().out
    subprocess.run(["scancel", chunks[2]], check=True)
    job = subprocess.run(["scontrol", "-o", "show", "job", chunks[0]], capture_output=True, text=True).stdout
    assert "TimeMin=00:05:00" in job and "TimeLimit=00:10:00" in job, job
    report = read_manifests(run)["chunks"]["stages"][1]["tasks"][0]["job_id"]
    deadline = time.time() + 60  # the report can never run now: Slurm cancels it (kill-on-invalid-dep)
    while SlurmExecutor().live([report, *(t["job_id"] for t in tasks[16:])]):
        assert time.time() < deadline, "the cancelled chunk or the report is still queued"
        time.sleep(0.5)

    assert main(["launch", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "evaluate: 2 task(s) submitted as job " in out and "report: 1 task(s) submitted" in out, out
    rows = wait_for_sweeps(run, timeout=600)
    assert [r["state"] for r in rows] == ["done"] * 19, rows
    resumed = read_manifests(run)["chunks"]["stages"][0]["tasks"]
    assert [t["job_id"] for t in resumed[:16]] == [t["job_id"] for t in tasks[:16]]
    assert not {t["job_id"].split("_")[0] for t in resumed[16:]} & set(chunks)  # only those, resubmitted
    assert main(["status", str(run)]) == 0
    assert "19 tasks, 19 done" in capsys.readouterr().out
    assert json.loads((run / "report" / "manifest.json").read_text())["status"] == "complete"


def test_a_sweep_naming_its_model_by_hub_id_runs_offline_from_a_pinned_snapshot(
        local_slurm, tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Every network route dead (proxies at a closed local port), the tiny model pre-filled in a
    cache laid out as huggingface_hub's: launch pins the id to that snapshot and its file
    hashes, the job runs offline on the snapshot's folder, and a snapshot replaced under the
    same id is refused at the next launch, naming the model."""
    monkeypatch.chdir(REPO)
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # discard: nothing listens
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--llama"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    demo = "{repo}/bioinstruct/data/demo_tasks"
    sweep = write(tmp_path, "offline.yaml", f"""
        name: offline
        hub_cache: {tmp_path / 'hub'}
        defaults: {{all: {{resources: {{cpus_per_task: 1, mem_gb: 1, time_limit_min: 5, gpus_per_node: 0}}}}}}
        stages:
          evaluate:
            kind: evaluate
            set: {{model: tiny-org/llama, tasks: [mednli], limit: 2, max_new_tokens: 4,
                   task_data: {{mednli: {{root: "{demo}"}}}}}}
        """)
    run = tmp_path / "run"
    assert main(["launch", str(sweep), f"run_dir={run}"]) == 0
    rows = wait_for_sweeps(run, timeout=300)
    assert [r["state"] for r in rows] == ["done"], rows
    snapshot = str(repo / "snapshots" / commit)
    results = json.loads((run / "evaluate" / "base" / "mednli" / "results.json").read_text())
    assert results["model_path"] == snapshot
    pinned = json.loads((run / "sweeps" / "hub" / "models.json").read_text())["tiny-org/llama"]
    assert pinned["revision"] == commit and pinned["path"] == snapshot
    assert {n for n in pinned["files"]} >= {"config.json", "model.safetensors"}
    script = next((run / "sweeps" / "offline" / "evaluate" / "logs").glob("*_submission.sh")).read_text()
    assert "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1" in script
    logs = "".join(p.read_text() for p in (run / "sweeps" / "offline" / "evaluate" / "logs").glob("*_log.*"))
    assert not any(word in logs for word in ("huggingface.co", "127.0.0.1:9", "Connection", "Retry")), logs

    # The same id, another snapshot in its place: refused before anything is submitted.
    config = Path(snapshot) / "config.json"
    config.write_text(config.read_text().replace("\n", "\n ", 1))
    capsys.readouterr()
    assert main(["launch", str(sweep), f"run_dir={run}", "stages.evaluate.set.limit=3"]) == 2
    err = capsys.readouterr().err
    assert "model tiny-org/llama: the snapshot at" in err and "config.json changed" in err, err


def test_a_judged_generation_task_gets_its_judge_scores_from_a_cpu_job_and_no_gpu_job_calls_the_api(
        local_slurm, tmp_path, tiny_model_dir, monkeypatch):
    """evaluate with judge=true in a sweep: its shards run on GPU nodes without the judge, and
    a CPU job after them merges and judges. At each request the API server asks Slurm which
    jobs are running: only that CPU job, never one holding a GPU."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-judge-test")  # the jobs inherit it; no script holds it
    running: list[list[str]] = []

    def grader(body):
        out = subprocess.run(["squeue", "--noheader", "--states=RUNNING", "--format=%j|%b"],
                             capture_output=True, text=True, check=True).stdout
        running.append(sorted(line for line in out.splitlines() if line.startswith("judged-")))
        return "coherence: 7\ncompleteness: 6\nnaturalness: 8\nfactuality: 9"

    demo = "{repo}/bioinstruct/data/demo_tasks"
    with OpenAIServer(grader) as server:
        sweep = write(tmp_path, "judged.yaml", f"""
            name: judged
            defaults: {{all: {{resources: {{cpus_per_task: 1, mem_gb: 1, time_limit_min: 5}}}}}}
            stages:
              evaluate:
                kind: evaluate
                set: {{model: {tiny_model_dir}, tasks: [conv2note], limit: 2, max_new_tokens: 4, judge: true,
                       judge_llm: {{base_url: "{server.base_url}"}}, task_data: {{conv2note: {{root: "{demo}"}}}}}}
                grid: {{shard: [1/2, 2/2]}}
                resources: {{gpus_per_node: 1}}
            """)
        run = tmp_path / "run"
        assert main(["launch", str(sweep), f"run_dir={run}"]) == 0
        rows = wait_for_sweeps(run, timeout=300)
        assert [r["state"] for r in rows] == ["done"] * 3, rows
    task = run / "evaluate" / "base" / "conv2note"
    metrics = json.loads((task / "results.json").read_text())["metrics"]
    assert metrics["judge_mean"]["value"] == 7.5 and metrics["judge_unscored"]["value"] == 0, metrics
    # Two rows, one request each, every one made while only the CPU job ran.
    assert running == [["judged-evaluate-judge|N/A"]] * 2, running
    shards = [json.loads((task / f"shard-{i}-of-2" / "manifest.json").read_text()) for i in (1, 2)]
    assert [m["config"]["judge"] for m in shards] == [False, False]
    merge = json.loads((task / "merge" / "manifest.json").read_text())
    assert merge["config"]["judge"] and merge["slurm_job_id"] not in {m["slurm_job_id"] for m in shards}
    logs = run / "sweeps" / "judged"
    gpu = next((logs / "evaluate" / "logs").glob("*_submission.sh")).read_text()
    cpu = next((logs / "evaluate-judge" / "logs").glob("*_submission.sh")).read_text()
    assert "--gpus-per-node=1" in gpu and "gpus" not in cpu, cpu
    # The key stays in the environment: the GPU job drops it, the CPU job (which needs it) keeps it.
    assert "unset OPENAI_API_KEY" in gpu and "OPENAI_API_KEY" not in cpu and "sk-judge-test" not in gpu + cpu


def test_a_sweep_job_cap_submits_what_fits_and_resume_the_rest(local_slurm, tmp_path, capsys):
    """max_jobs=1 (a site's MaxSubmitJobs): one task in the queue at a time; what waits says
    why, and each --resume submits the next once the queued one has ended."""
    records = [{"instruction": s["instruction"], "input": s["instances"][0]["input"],
                "output": s["instances"][0]["output"]} for s in load_seeds(None)]
    for name, part in (("a", records[:20]), ("b", records[20:40])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    sweep = held_sweep(tmp_path, "capped")
    run = tmp_path / "run"
    cap = "not (max_jobs=1 jobs of this sweep queued at once)"
    launches = [
        (["launch", str(sweep), "--cluster", "slurm", f"run_dir={run}", "max_jobs=1"],
         ["filter: 1 task(s) submitted as job ", f"; 1 {cap}", "not run: filter is not all submitted (max_jobs)"]),
        (["launch", str(run), "--resume"], ["filter: 1 task(s) submitted as job ", f"classify: 0 task(s) submitted; 1 {cap}"]),
        (["launch", str(run), "--resume"], ["classify: 1 task(s) submitted as job "])]
    for args, lines in launches:
        assert main(args) == 0
        out = capsys.readouterr().out
        assert all(line in out for line in lines), out
        states = [r["state"] for r in wait_for_sweeps(run, timeout=120)]
    assert states == ["done"] * 3


def test_training_whose_time_limit_is_lowered_while_it_runs_requeues_and_ends_with_the_uninterrupted_adapter(
        local_slurm, tmp_path, tiny_model_dir, train_data, monkeypatch):
    """What --time-min (or an admin) does to a running job: its limit drops to 2 minutes, so
    Slurm's warning (USR2, 90 s before the end here) comes at its next time check; the job
    saves, exits 75 and is requeued, and resumes (with its limit set back) to the adapter of
    an uninterrupted run."""
    monkeypatch.chdir(REPO)
    # Both runs sleep 0.25 s before each forward (2 a step on each rank), so that training
    # outlasts Slurm's warning however fast the machine is: it comes 30-60 s after the limit
    # drops (at Slurm's next time check, every 30 s), and 200 steps take over 100 s. Without
    # this, an idle machine finished the run first.
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests" / "faults"))
    monkeypatch.setenv("BIOINSTRUCT_TEST_SLOW_FORWARD", "0.25")
    runs = {name: tmp_path / name for name in ("reference", "lowered")}
    for name, run in runs.items():  # one per node, side by side, in the same conditions
        sweep = train_sweep(tmp_path, name, tiny_model_dir, train_data, steps=200)
        assert main(["launch", str(sweep), "--cluster", "slurm", f"run_dir={run}",
                     "stages.train.resources.signal_delay_s=90"]) == 0
    metrics = runs["lowered"] / "train" / "tiny__train" / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    task = read_manifests(runs["lowered"])["lowered"]["stages"][0]["tasks"][0]
    # 1-2 minutes left, within the warning's 90 s by Slurm's next time check (every 30 s).
    job = subprocess.run(["scontrol", "-o", "show", "job", task["job_id"]], capture_output=True, text=True).stdout
    h, m, s = (int(x) for x in job.split(" RunTime=")[1].split()[0].split("-")[-1].split(":"))
    subprocess.run(["scontrol", "update", f"JobId={task['job_id']}", f"TimeLimit={h * 60 + m + 2}"], check=True)
    attempts = Path(task["attempts"])
    deadline = time.time() + 150
    while '"requeue"' not in attempts.read_text():
        assert time.time() < deadline and '"complete"' not in attempts.read_text(), \
            "no requeue after the limit was lowered"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={task['job_id']}", "TimeLimit=10"], check=True)

    rows = {name: wait_for_sweeps(run, timeout=400)[0] for name, run in runs.items()}
    assert rows["reference"]["state"] == rows["lowered"]["state"] == "done", rows
    assert rows["reference"]["restarts"] == 0 and rows["lowered"]["restarts"] == 1, rows
    records = [json.loads(line) for line in attempts.read_text().splitlines()]
    assert [(a["event"], a.get("outcome")) for a in records] == [
        ("start", None), ("end", "requeue"), ("start", None), ("end", "complete")]
    assert records[1]["detail"].startswith("signalled at step ") and "requeueing job" in Path(
        rows["lowered"]["log"]).read_text()
    adapters = {name: load_file(run / "train" / "tiny__train" / "adapter" / "adapter_model.safetensors")
                for name, run in runs.items()}
    assert adapters["reference"].keys() == adapters["lowered"].keys()
    assert all(torch.equal(adapters["reference"][k], adapters["lowered"][k]) for k in adapters["reference"])
