"""bioinstruct launch without Slurm: sweep files, grids, resources, the dry-run scripts against
golden files, the host-side requeue logic of slurm/common.sh, status states, and the local
executor running a small sweep. The real-Slurm tests are in test_launch_slurm.py."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bioinstruct.cli import main
from bioinstruct.runs.config import dump_config, load_config
from bioinstruct.errors import ConfigError
from bioinstruct.launch.sweep import BASE, KIND_RESOURCES, Sweep, expand_grid, make_plan, merge
from bioinstruct.launch.executors import Live, Resources, SlurmExecutor, _deprecated
from bioinstruct.stages.pipeline import KINDS
from bioinstruct.launch.status import read_manifests, task_rows
from bioinstruct.runs.rundir import config_hash

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "launch"
SWEEPS = ["paper", "ablation-categories", "data-size", "quickstart-local"]


def write_sweep(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def plan_of(tmp_path, text, *overrides):
    path = write_sweep(tmp_path, text)
    return make_plan(load_config(Sweep, path, [f"run_dir={tmp_path / 'run'}", *overrides]), str(path))


@pytest.mark.unit
@pytest.mark.parametrize("name", SWEEPS)
def test_dry_run_prints_the_golden_sbatch_scripts(name, capsys, monkeypatch):
    """The exact jobs, arrays, dependencies and scripts of each shipped sweep. After an
    intended change: BIOINSTRUCT_UPDATE_GOLDEN=1 pytest tests/test_launch.py, and read the diff."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(SlurmExecutor, "max_array_size", lambda self: None)  # whatever Slurm is here
    assert main(["launch", f"launch/{name}.yaml", "--dry-run", "--cluster", "slurm", "run_dir=/golden/run"]) == 0
    text = capsys.readouterr().out.replace(sys.executable, "$PYTHON").replace(str(REPO), "$REPO")
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("BIOINSTRUCT_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.unit
def test_shipped_sweeps_resolve_and_their_task_configs_read_back_the_same(monkeypatch, tmp_path):
    """Every task's config, written as the job will read it, loads back to the same config
    (and hash): otherwise a finished task would look like a conflict on the next launch."""
    monkeypatch.chdir(REPO)
    path = tmp_path / "task.yaml"
    for name in SWEEPS:
        plan = make_plan(load_config(Sweep, f"launch/{name}.yaml", ["run_dir=/golden/run"]), name)
        for stage in plan.stages:
            kind = KINDS[stage.kind]
            for task in stage.tasks:
                path.write_text(dump_config(task.cfg))
                back = load_config(kind.config, path)
                assert back == task.cfg and config_hash(back) == config_hash(task.cfg), (name, stage.name, task.label)


@pytest.mark.unit
def test_grid_blocks_axes_and_labels():
    assert expand_grid(None, "s") == [("", {})]
    points = expand_grid({"data.subset": ["qa", "ie"], "optim.lr": 0.1}, "s")
    assert points == [("qa", {"data.subset": "qa", "optim.lr": 0.1}), ("ie", {"data.subset": "ie", "optim.lr": 0.1})]
    points = expand_grid([{"model": {"base": {"adapter": None}, "tuned": {"adapter": "a/adapter", "name": "t"}},
                           "shard": ["1/2", "2/2"]},
                          {"config": ["configs/train/llama2/7b_lora.yaml"]}], "s")
    assert [label for label, _ in points] == ["base__1-2", "base__2-2", "tuned__1-2", "tuned__2-2", "llama2-7b_lora"]
    assert points[2][1] == {"adapter": "a/adapter", "name": "t", "shard": "1/2"}
    with pytest.raises(ConfigError, match="has no values"):
        expand_grid({"data.subset": []}, "s")
    with pytest.raises(ConfigError, match="mapping axis"):
        expand_grid({"model": {"base": "x"}}, "s")


@pytest.mark.unit
def test_resources_layer_kind_defaults_sweep_defaults_and_stage(tmp_path):
    plan = plan_of(tmp_path, """
        defaults:
          all: {resources: {account: lab, time_limit_min: 30, sbatch: {exclude: n9}}}
          train: {resources: {partition: gpu, time_limit_min: 600}, container: {image: /images/gpu.sif, binds: [/scratch]}}
        stages:
          train:
            kind: train
            config: configs/train/tiny/lora.yaml
            resources: {mem_gb: 12, sbatch: {qos: long}}
            container: {binds: [/models]}
          subsets: {kind: subsets}
        """)
    train, subsets = plan.stages
    assert train.resources == merge(BASE, KIND_RESOURCES["train"], Resources(
        account="lab", partition="gpu", time_limit_min=600, mem_gb=12, sbatch={"exclude": "n9", "qos": "long"}))
    assert train.resources.gpus_per_node == 1 and train.resources.signal_delay_s == 300
    assert train.container.image == "/images/gpu.sif" and train.container.binds == ["/scratch", "/models"]
    assert subsets.resources.time_limit_min == 30 and subsets.resources.partition is None
    assert subsets.container.image is None


@pytest.mark.unit
def test_time_limit_and_time_min_keys_and_the_deprecated_name(tmp_path, capsys, monkeypatch):
    """time_limit_min is sbatch's --time, min_time_limit_min its --time-min; the old time_min
    (the limit) still works, with one line however many layers use it."""
    monkeypatch.setattr(SlurmExecutor, "max_array_size", lambda self: 8)
    _deprecated.cache_clear()  # once per process: this test's own line
    plan = plan_of(tmp_path, """
        defaults: {all: {resources: {time_min: 30}}, filter: {resources: {time_min: 40, min_time_limit_min: 10}}}
        stages: {filter: {kind: filter, grid: {input: [/d/1.jsonl, /d/2.jsonl, /d/3.jsonl, /d/4.jsonl, /d/5.jsonl,
                                                       /d/6.jsonl, /d/7.jsonl, /d/8.jsonl, /d/9.jsonl]},
                          set: {output: "{run_dir}/{label}/kept.jsonl"}}}
        """)
    assert capsys.readouterr().err.splitlines() == [
        "bioinstruct: resources.time_min is deprecated: write resources.time_limit_min (it is the time limit; "
        "sbatch's --time-min is resources.min_time_limit_min)"]
    [stage] = plan.stages
    assert (stage.resources.time_limit_min, stage.resources.min_time_limit_min) == (40, 10)
    script = SlurmExecutor().script(plan.job(stage, stage.tasks[:8], []))
    assert "#SBATCH --time=40\n" in script and "#SBATCH --time-min=10\n" in script
    from bioinstruct.launch.sweep import print_plan
    print_plan(plan, SlurmExecutor(), sys.stdout, "s")
    assert "(array of 9, as 2 arrays of at most 8 (MaxArraySize); the first)" in capsys.readouterr().out


@pytest.mark.unit
def test_an_image_gets_a_writable_cache_bind_or_the_launch_refuses_before_submitting(tmp_path, capsys):
    image = tmp_path / "cpu.sif"
    image.write_text("")
    text = f"""
        defaults: {{all: {{container: {{image: {image}}}}}}}
        stages: {{subsets: {{kind: subsets}}, stats: {{kind: stats, after: [subsets], container: {{binds: ["/s:/cache"]}}}}}}
        """
    subsets, stats = plan_of(tmp_path, text).stages
    assert subsets.container.cache == str(tmp_path / "run" / "cache") and stats.container.cache is None
    (tmp_path / "file").write_text("")
    blocked = f"{tmp_path}/file/cache"  # a folder that cannot be made
    path = write_sweep(tmp_path, text)
    assert main(["launch", str(path), "--cluster", "slurm", f"run_dir={tmp_path / 'run'}",
                 f"defaults.all.container.cache={blocked}"]) == 2
    err = capsys.readouterr().err
    assert f"stage 'subsets': {blocked} (bound at /cache, where the image keeps its caches) is not a writable " \
           f"folder" in err and not (tmp_path / "run" / "sweeps").exists(), err


@pytest.mark.unit
def test_evaluate_with_the_judge_runs_its_shards_without_it_and_a_cpu_job_per_shard_set_judges(tmp_path):
    text = """
        stages:
          evaluate: {kind: evaluate, set: {model: /m, tasks: [conv2note], judge: true},
                     grid: {shard: [1/2, 2/2]}, resources: {gpus_per_node: 1, partition: gpu}}
          report: {kind: report, after: [evaluate]}
        """
    evaluate, judge, report = plan_of(tmp_path, text).stages
    assert [t.cfg.judge for t in evaluate.tasks] == [False, False]
    assert (judge.name, judge.kind, judge.after, judge.resources.gpus_per_node, judge.resources.partition) == \
        ("evaluate-judge", "evaluate", ["evaluate"], 0, None)
    [task] = judge.tasks  # both shards of the set: one job
    assert (task.cfg.judge, task.cfg.merge, task.cfg.shard) == (True, True, "1/2")
    assert task.outputs == [tmp_path / "run" / "evaluate" / "base" / "conv2note" / "merge"]
    assert report.after == ["evaluate", "evaluate-judge"]  # the report waits for the judge's scores
    assert [s.name for s in plan_of(tmp_path, text, "stages.evaluate.set.judge=false").stages] == ["evaluate", "report"]
    # A GPU job inherits no API key (the default variable and any a config names); the CPU step keeps it.
    plan = plan_of(tmp_path, text, "stages.evaluate.set.judge_llm.api_key_env=LAB_KEY")
    evaluate, judge, _ = plan.stages
    assert plan.job(evaluate, evaluate.tasks, []).unset == ["LAB_KEY", "OPENAI_API_KEY"]
    assert plan.job(judge, judge.tasks, []).unset == []
    assert "unset LAB_KEY OPENAI_API_KEY" in SlurmExecutor().script(plan.job(evaluate, evaluate.tasks, []))


@pytest.mark.unit
@pytest.mark.parametrize("enforce, warned", [("associations,limits,safe", True), ("none", False)])
def test_a_launch_without_an_account_warns_where_the_site_enforces_accounts(tmp_path, capsys, monkeypatch, enforce,
                                                                            warned):
    import bioinstruct.launch.submit as submit

    config = {"AccountingStorageEnforce": enforce}
    monkeypatch.setattr(SlurmExecutor, "site_config", lambda self, key: config.get(key))
    monkeypatch.setattr(submit, "launch", lambda *a, **k: None)  # nothing reaches sbatch
    monkeypatch.setattr(submit, "print_status", lambda *a: 0)
    path = write_sweep(tmp_path, "stages: {subsets: {kind: subsets}}")
    assert main(["launch", str(path), "--cluster", "slurm", f"run_dir={tmp_path / 'run'}"]) == 0
    err = capsys.readouterr().err
    line = (f"bioinstruct launch: warning: no Slurm account set, and this site enforces them "
            f"(AccountingStorageEnforce={enforce}): defaults.all.resources.account=NAME (sacctmgr show "
            f"associations user=$USER lists yours)\n")
    assert err == (line if warned else ""), err
    assert main(["launch", str(path), "--cluster", "slurm", f"run_dir={tmp_path / 'run'}",
                 "defaults.all.resources.account=lab"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.unit
def test_commands_piped_into_head_end_quietly():
    command = f"set -o pipefail; {sys.executable} -m bioinstruct launch launch/paper.yaml --dry-run | head -2"
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=REPO)
    assert (out.returncode, out.stderr, len(out.stdout.splitlines())) == (0, "", 2), out


@pytest.mark.unit
@pytest.mark.parametrize("text, message", [
    ("stages: {x: {kind: nope}}", "unknown kind 'nope'"),
    ("stages: {x: {kind: subsets, after: [y]}}", "runs after 'y', which is not a stage"),
    ("stages: {x: {kind: subsets, after: [y]}, y: {kind: subsets, after: [x]}}", "cycle"),
    ("stages: {x: {kind: subsets, resources: {gpus: 1}}}", "sweep.yaml:1: unknown key 'stages.x.resources.gpus'"),
    ("stages: {x: {kind: subsets, resources: {tasks_per_node: 2}}}", "runs as one process"),
    ("stages: {x: {kind: subsets, grid: {seed: [1, 2]}}}", "writes to .*run/subsets, as does stage 'x' task 0"),
    ("stages: {x: {kind: subsets, set: {sizes: five}}}", "key 'sizes' expects list"),
    ("defaults: {trian: {}}\nstages: {x: {kind: subsets}}", "defaults.trian: not a stage kind"),
])
def test_sweep_mistakes_stop_before_anything_is_submitted(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        plan_of(tmp_path, text)


@pytest.mark.unit
def test_sweeps_sharing_a_run_directory_agree_on_every_output_they_share(monkeypatch):
    """paper, ablation-categories and data-size share a run directory: a folder two of them
    write (the data, llama2-7b__all, its evaluation and base scores) must get the same config
    from each, or the second sweep would stop on a conflict instead of skipping it."""
    monkeypatch.chdir(REPO)
    seen, writers = {}, {}
    for name in ("paper", "ablation-categories", "data-size"):
        plan = make_plan(load_config(Sweep, f"launch/{name}.yaml", ["run_dir=/golden/run"]), name)
        for stage in plan.stages:
            kind = KINDS[stage.kind]
            for task in stage.tasks:
                for output in task.outputs:
                    recorded = config_hash(kind.recorded(task.cfg))
                    assert seen.setdefault(output, recorded) == recorded, (name, output, writers[output])
                    writers.setdefault(output, []).append(name)
    run = Path("/golden/run")
    for output in (run / "subsets", run / "train" / "llama2-7b__all",
                   run / "evaluate" / "llama2-7b" / "base" / "medqa" / "shard-1-of-2",
                   run / "evaluate" / "llama2-7b" / "llama2-7b__all" / "icliniq" / "shard-2-of-2"):
        assert writers[output] == ["paper", "ablation-categories", "data-size"], output


@pytest.mark.unit
def test_a_complete_output_made_with_another_config_is_a_conflict_named_by_task(tmp_path):
    from bioinstruct.errors import StageConflict
    from bioinstruct.runs.rundir import run_stage
    from bioinstruct.stages.subsets import SubsetsConfig

    run_stage(tmp_path / "run" / "subsets", "subsets", SubsetsConfig(run_dir=str(tmp_path / "run"), seed=1),
              lambda d: {})
    with pytest.raises(StageConflict, match=r"(?s)stage 'x', task 0 \(x\): .*seed: 1 -> 0"):
        plan_of(tmp_path, "stages: {x: {kind: subsets}}")
    (plan,) = plan_of(tmp_path, "stages: {x: {kind: subsets, set: {seed: 1}}}").stages
    assert plan.tasks[0].done


@pytest.mark.unit
def test_an_evaluate_shard_is_done_only_when_made_from_the_same_data(tmp_path):
    """A sweep counts a complete shard as done by its recorded inputs: the same data reached
    through a symlink is done; the file changed in place is a conflict naming its hash."""
    import shutil

    from bioinstruct.stages import evaluate
    from bioinstruct.errors import StageConflict
    from bioinstruct.runs.rundir import run_stage

    model, root = tmp_path / "model", tmp_path / "data"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (root / "medmcqa").mkdir(parents=True)
    shutil.copy(REPO / "bioinstruct" / "data" / "demo_tasks" / "medmcqa" / "dev.json", root / "medmcqa")
    (tmp_path / "data-link").symlink_to(root)
    out = tmp_path / "run" / "evaluate"
    cfg = evaluate.EvaluateConfig(model=str(model), tasks=["medmcqa"], out=str(out),
                                  task_data={"medmcqa": {"root": str(root)}})
    shard = out / "base" / "medmcqa" / "shard-1-of-1"
    inputs, ignore = evaluate.shard_identity(cfg, shard)
    run_stage(shard, "evaluate", cfg, lambda d: {}, inputs=inputs, ignore=ignore)
    sweep = f"""
        stages:
          x: {{kind: evaluate, set: {{model: {model}, tasks: [medmcqa], out: {out},
                                     task_data: {{medmcqa: {{root: {tmp_path / 'data-link'}}}}}}}}}
        """
    (plan,) = plan_of(tmp_path, sweep).stages
    assert plan.tasks[0].done
    (root / "medmcqa" / "dev.json").write_text((root / "medmcqa" / "dev.json").read_text().replace('"cop":2', '"cop":3'))
    with pytest.raises(StageConflict, match=r"stage 'x', task 0 .*inputs.task.data.path: '[0-9a-f]{64}'"):
        plan_of(tmp_path, sweep)


@pytest.mark.unit
def test_a_subsets_task_is_done_only_for_the_same_labels(tmp_path):
    from bioinstruct.stages import subsets
    from bioinstruct.errors import StageConflict
    from bioinstruct.runs.rundir import run_stage

    labelled = tmp_path / "run" / "classify" / "labelled.jsonl"
    labelled.parent.mkdir(parents=True)
    labelled.write_text('{"instruction": "a", "output": "b", "category": "qa"}\n')
    cfg = subsets.SubsetsConfig(run_dir=str(tmp_path / "run"))
    inputs, ignore = subsets.identity(cfg)
    run_stage(tmp_path / "run" / "subsets", "subsets", cfg, lambda d: {}, inputs=inputs, ignore=ignore)
    (plan,) = plan_of(tmp_path, "stages: {x: {kind: subsets}}").stages
    assert plan.tasks[0].done
    labelled.write_text('{"instruction": "a", "output": "b", "category": "ie"}\n')  # relabelled in place
    with pytest.raises(StageConflict, match=r"stage 'x', task 0 .*inputs.input: '[0-9a-f]{64}'"):
        plan_of(tmp_path, "stages: {x: {kind: subsets}}")


@pytest.mark.unit
def test_resume_takes_the_sweep_recorded_in_a_run_directory(tmp_path, capsys):
    assert main(["launch", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["launch", str(tmp_path), "--resume"]) == 2
    assert "no sweep to resume" in capsys.readouterr().err


# ---- slurm/common.sh: the host side of every batch script --------------------------------

CHILD = """\
import os, signal, sys, time
mode = sys.argv[1]
if mode == "catch":  # as bioinstruct train: save, then exit 75, on either signal
    signal.signal(signal.SIGUSR2, lambda *a: sys.exit(75))
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))
open(sys.argv[2], "w").close()
if mode in ("0", "1", "75"):
    sys.exit(int(mode))
time.sleep(30)
"""


def bi_run(tmp_path, mode, *, send=None, env=()):
    """Run `bi_run python child.py MODE` in bash with a fake scontrol; optionally send a
    signal once the child is up: USR2 to the batch shell only (--signal=B:USR2), TERM to
    every process of the job, as Slurm does when it kills one. Returns the status, the
    scontrol calls and stderr."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    fake = tmp_path / "bin" / "scontrol"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/scontrol.log\n")
    fake.chmod(0o755)
    (tmp_path / "child.py").write_text(CHILD)
    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    script = f'source {REPO}/slurm/common.sh; bi_run {sys.executable} {tmp_path}/child.py {mode} {ready}'
    proc = subprocess.Popen(["bash", "-c", script], env={**os.environ, "PATH": f"{tmp_path}/bin:{os.environ['PATH']}",
                                                         "SLURM_JOB_ID": "42", **dict(env)},
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    if send:
        deadline = time.time() + 20
        while not ready.exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.02)
        if send == signal.SIGTERM:
            os.killpg(proc.pid, send)
        else:
            proc.send_signal(send)
    _, err = proc.communicate(timeout=30)
    log = tmp_path / "scontrol.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return proc.returncode, calls, err


@pytest.mark.unit
@pytest.mark.parametrize("mode, send, env, status, requeued", [
    ("0", None, {}, 0, None),  # finished
    ("1", None, {}, 1, None),  # failed: not requeued
    ("75", None, {}, 75, "42"),  # the program asks to be run again
    ("catch", signal.SIGUSR2, {}, 75, "42"),  # Slurm's warning, forwarded; the program saves and exits 75
    ("sleep", signal.SIGUSR2, {}, 128 + signal.SIGUSR2, "42"),  # a program that dies of it resumes from files
    ("catch", signal.SIGTERM, {}, 75, None),  # killed by Slurm or scancel: never requeued from here
    ("75", None, {"SLURM_RESTART_COUNT": "3", "BI_MAX_REQUEUES": "3"}, 75, None),  # out of requeues
    # An array task whose own id is the array's: "42" would requeue every task of array 42.
    ("75", None, {"SLURM_ARRAY_JOB_ID": "42", "SLURM_ARRAY_TASK_ID": "1"}, 75, "42_1"),
])
def test_bi_run_forwards_the_warning_and_requeues_only_a_clean_stop(tmp_path, mode, send, env, status, requeued):
    code, calls, err = bi_run(tmp_path, mode, send=send, env=env)
    assert code == status, err
    assert calls == ([f"requeue {requeued}"] if requeued else [])


# ---- status -------------------------------------------------------------------------------

class FakeScheduler:
    name = "slurm"

    def __init__(self, live, ended):
        self._live, self._ended = live, ended

    def live(self, ids):
        return {i: self._live[i] for i in ids if i in self._live}

    def ended(self, ids, raw_ids):
        return {i: self._ended[raw_ids.get(i, i)] for i in ids if raw_ids.get(i, i) in self._ended}


@pytest.mark.unit
def test_status_combines_the_queue_the_attempts_and_the_output_manifests(tmp_path):
    def task(i, job_id, manifest=None, attempts=()):
        out = tmp_path / f"out{i}"
        if manifest:
            out.mkdir()
            (out / "manifest.json").write_text(json.dumps({"config_hash": "h", **manifest}))
        path = tmp_path / f"{i}.attempts.jsonl"
        path.write_text("".join(json.dumps(a) + "\n" for a in attempts))
        return {"index": i, "label": f"t{i}", "outputs": [str(out)], "config_hash": "h", "attempts": str(path),
                "job_id": job_id, "log": {"err": f"/logs/{job_id}_0_log.err"},
                "at_launch": "not run: x did not complete"}

    start = {"event": "start", "job_id": "31", "array_job_id": "30", "array_task_id": "2", "restart": 1}
    tasks = [task(0, "10", {"status": "complete"}),
             task(1, "11"),
             task(2, "30_2", {"status": "running"}, [{**start, "restart": 0}, start]),
             task(3, "30_3", {"status": "failed", "error": "DataError: x.jsonl:3: invalid JSON"}),
             task(4, "30_4", None, [{"event": "start", "job_id": "33", "array_job_id": "30", "array_task_id": "4"}]),
             task(5, None),
             task(6, "12", {"status": "complete", "config_hash": "other"})]
    live = {"11": Live("PENDING", "Dependency", 0, "11"), "30_2": Live("PENDING", "BeginTime", 1, "31"),
            "12": Live("RUNNING", "None", 0, "12")}
    ended = {"33": "OUT_OF_MEMORY (exit 0:125)"}
    rows = task_rows({"stages": [{"name": "train", "tasks": tasks}]}, FakeScheduler(live, ended))
    got = [(r["state"], r["detail"], r["restarts"]) for r in rows]
    assert got == [("done", "", 0), ("pending", "Dependency", 0), ("requeued", "BeginTime", 1),
                   ("failed", "DataError: x.jsonl:3: invalid JSON", 0), ("failed", "OUT_OF_MEMORY (exit 0:125)", 0),
                   ("not submitted", "not run: x did not complete", 0), ("running", "", 0)]


# ---- the local executor -------------------------------------------------------------------

SMALL = """
    name: small
    cluster: local
    defaults: {all: {resources: {time_limit_min: 5}}}
    stages:
      generate: {kind: generate, set: {target: 12, llm.backend: offline}}
      filter:
        kind: filter
        after: [generate]
        grid:
          threshold: [0.7, 0.5]
        set:
          input: "{run_dir}/generate/instructions.jsonl"
          output: "{run_dir}/filter-{label}/kept.jsonl"
    """


@pytest.mark.integration
@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_local_and_debug_executors_run_stages_in_order_and_a_second_launch_does_nothing(tmp_path, capsys, cluster):
    sweep = write_sweep(tmp_path, SMALL)
    run = tmp_path / "run"
    assert main(["launch", str(sweep), f"run_dir={run}", "--cluster", cluster]) == 0
    out = capsys.readouterr().out
    assert "filter: 2 task(s) submitted" in out and "3 done" in out
    assert (run / "filter-0.7" / "kept.jsonl").exists() and (run / "filter-0.5" / "kept.jsonl").exists()
    attempts = (run / "sweeps" / "small" / "filter" / "001-0.5.attempts.jsonl").read_text().splitlines()
    assert [json.loads(a)["event"] for a in attempts] == ["start", "end"]
    assert main(["launch", str(sweep), f"run_dir={run}", "--cluster", cluster]) == 0
    assert "submitted" not in capsys.readouterr().out
    # Launching one stage again keeps the others in the manifest, in the sweep's order.
    assert main(["launch", str(sweep), f"run_dir={run}", "--cluster", cluster, "--stages", "filter"]) == 0
    assert [s["name"] for s in read_manifests(run)["small"]["stages"]] == ["generate", "filter"]


@pytest.mark.integration
def test_local_executor_starts_one_process_per_rank(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "train.jsonl"
    from bioinstruct.stages.generate import load_seeds

    data.write_text("".join(json.dumps({"instruction": s["instruction"], "input": s["instances"][0]["input"],
                                        "output": s["instances"][0]["output"]}) + "\n" for s in load_seeds(None)))
    sweep = write_sweep(tmp_path, f"""
        name: ranks
        cluster: local
        stages:
          train:
            kind: train
            config: configs/train/tiny/lora.yaml
            set: {{model.path: {tiny_model_dir}, data.path: {data}, data.max_length: 128, optim.max_steps: 3}}
            resources: {{gpus_per_node: 0, tasks_per_node: 2}}
        """)
    assert main(["launch", str(sweep), f"run_dir={tmp_path / 'run'}"]) == 0
    summary = json.loads((tmp_path / "run" / "train" / "tiny__train" / "manifest.json").read_text())["summary"]
    assert summary["world_size"] == 2 and summary["steps"] == 3


@pytest.mark.unit
def test_shell_scripts_parse():
    scripts = [*(REPO / "slurm").glob("*.sbatch"), REPO / "slurm" / "common.sh",
               *(REPO / "slurm" / "local").glob("*.sh")]
    assert len(scripts) == 6
    for script in scripts:
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, (script, check.stderr)
