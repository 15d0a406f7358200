"""Training: LoRA on the tiny LLaMA and on SmolLM2-135M (realmodel tier), 1 process and 2 CPU
ranks (DeepSpeed ZeRO-2/3 over gloo), stopped by SIGUSR2 and resumed bit for bit; bad input
fails before a model is loaded."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bioinstruct.modeling.distributed import expand_nodelist, slurm_environment, standalone_environment
from bioinstruct.errors import ConfigError, DataError
from bioinstruct.stages.generate import load_seeds
from bioinstruct.modeling.deepspeed_setup import deepspeed_config
from bioinstruct.modeling.trainer_callbacks import complete_checkpoints
from bioinstruct.stages.train import REQUEUE_EXIT, TrainConfig, run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """80 real instruction records: the seed tasks' instances."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"instruction": s["instruction"], "input": s["instances"][0]["input"],
             "output": s["instances"][0]["output"]} for s in load_seeds(None)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def overrides(model, data, run_dir, deepspeed, max_steps):
    """The test's run; ``deepspeed=None`` keeps the config's own (the shipped default)."""
    return [f"run_dir={run_dir}", f"model.path={model}", "model.name=tiny", f"data.path={data}",
            "data.max_length=192", *([f"deepspeed={deepspeed}"] if deepspeed else []),
            f"optim.max_steps={max_steps}", "optim.effective_batch=8",
            "optim.micro_batch=2", "optim.warmup_steps=2", "optim.lr=0.003", "checkpoint.every_steps=100",
            "logging_steps=1"]


def train_cmd(nproc, *args):
    return [sys.executable, "-m", "bioinstruct", "train", "--config", str(REPO / "configs/train/tiny/lora.yaml"),
            *args, *(["--nproc", str(nproc)] if nproc > 1 else [])]


def stage(run_dir):
    return Path(run_dir) / "train" / "tiny__train"


def losses(run_dir):
    by_step = {}
    for line in (stage(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step[row["step"]] = row["loss"]  # a resumed run may log a step again: the last counts
    return [by_step[k] for k in sorted(by_step)]


def adapter(run_dir):
    return load_file(stage(run_dir) / "adapter" / "adapter_model.safetensors")


def interrupted_then_resumed(nproc, args, run_dir):
    """Start training, send SIGUSR2 (as Slurm does before preemption) after step 2, expect a
    complete checkpoint and exit 75, then run the same command again to the end."""
    cmd = train_cmd(nproc, *args)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = stage(run_dir) / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == REQUEUE_EXIT, err
    manifest = json.loads((stage(run_dir) / "manifest.json").read_text())
    assert manifest["status"] == "stopped"
    saved = complete_checkpoints(stage(run_dir) / "checkpoints")
    assert saved, "no complete checkpoint after the signal"
    stopped_at = int(saved[-1].name.split("-")[1])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr
    return stopped_at


@pytest.mark.integration
@pytest.mark.parametrize("nproc, deepspeed, steps, extra", [
    (1, "null", 24, []),
    # As the README's one-process command runs it: no launcher, the shipped DeepSpeed config.
    (1, None, 10, []),
    (2, "configs/deepspeed/zero2.json", 10, []),
    (2, "configs/deepspeed/zero3.json", 10, []),
    (1, "null", 10, ["data.packing=true", "data.max_length=512"]),  # 80 examples in 67 rows: crosses an epoch
], ids=["1-process", "1-process-shipped-deepspeed", "2-ranks-zero2", "2-ranks-zero3", "1-process-packed"])
def test_signal_then_resume_is_bit_exact(tiny_model_dir, data, tmp_path, nproc, deepspeed, steps, extra):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    done = subprocess.run(train_cmd(nproc, *overrides(tiny_model_dir, data, straight, deepspeed, steps), *extra),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stopped_at = interrupted_then_resumed(nproc, [*overrides(tiny_model_dir, data, resumed, deepspeed, steps), *extra],
                                          resumed)
    assert 0 < stopped_at < steps
    assert losses(straight) == losses(resumed) and len(losses(straight)) == steps
    a, b = adapter(straight), adapter(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((stage(resumed) / "manifest.json").read_text())["summary"]
    assert summary["world_size"] == nproc and summary["steps"] == steps
    assert summary["gradient_accumulation"] == 8 // (2 * nproc)
    # The adapter loads onto the base model with peft, and changes its output.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 200, 300, 400]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, stage(resumed) / "adapter")(ids).logits
    assert not torch.equal(before, tuned)


@pytest.mark.realmodel
@pytest.mark.parametrize("nproc, deepspeed", [(1, None), (2, "configs/deepspeed/zero2.json")],
                         ids=["1-process-shipped-deepspeed", "2-ranks-zero2"])
def test_signal_then_resume_is_bit_exact_on_smollm2(smollm2_dir, short_instructions, tmp_path, nproc, deepspeed):
    """The same on the real model (tied embeddings, 30 layers, 49k vocabulary), kept short: 4
    steps of 2 examples cut to 64 tokens, the Self-Instruct seeds whose prompt fits."""
    short = ["data.max_length=64", "optim.effective_batch=2", "optim.micro_batch=1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    done = subprocess.run(train_cmd(nproc, *overrides(smollm2_dir, short_instructions, straight, deepspeed, 4), *short),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    stopped_at = interrupted_then_resumed(
        nproc, [*overrides(smollm2_dir, short_instructions, resumed, deepspeed, 4), *short], resumed)
    assert 0 < stopped_at < 4
    assert losses(straight) == losses(resumed) and len(losses(straight)) == 4
    a, b = adapter(straight), adapter(resumed)
    assert len(a) == 2 * 2 * 30 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((stage(resumed) / "manifest.json").read_text())["summary"]
    assert (summary["world_size"], summary["steps"], summary["gradient_accumulation"]) == (nproc, 4, 2 // nproc)
    assert summary["parameters"] == 134_515_008


def wait_for(predicate, proc, timeout=240):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.02)


@pytest.mark.integration
def test_a_signal_while_loading_or_in_the_last_step_behaves_as_documented(tiny_model_dir, data, tmp_path):
    """Epochs mode. A signal while the model loads is kept and acted on at the end
    of step 1 (exit 75, a complete checkpoint, manifest "stopped"); one during the last step
    lets the run finish (exit 0). Both end with the uninterrupted run's adapter and loss."""
    def args(run_dir):
        return [*overrides(tiny_model_dir, data, run_dir, "null", -1), "optim.epochs=1"]

    straight = subprocess.run(train_cmd(1, *args(tmp_path / "straight")), capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    expected = json.loads((stage(tmp_path / "straight") / "manifest.json").read_text())["summary"]
    steps = expected["steps"]
    assert steps >= 3 and expected["train_loss"] > 0

    early = tmp_path / "early"
    proc = subprocess.Popen(train_cmd(1, *args(early)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    manifest = stage(early) / "manifest.json"
    wait_for(manifest.exists, proc)  # the manifest is written just before the model loads
    proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == REQUEUE_EXIT, err
    assert json.loads(manifest.read_text())["status"] == "stopped"
    assert [c.name for c in complete_checkpoints(stage(early) / "checkpoints")] == ["checkpoint-1"]

    last = tmp_path / "last"
    proc = subprocess.Popen(train_cmd(1, *args(last)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = stage(last) / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= steps - 1, proc)
    proc.send_signal(signal.SIGUSR2)  # in the last step (or while the adapter is saved)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err

    resumed = subprocess.run(train_cmd(1, *args(early)), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr
    for run_dir in (early, last):
        summary = json.loads((stage(run_dir) / "manifest.json").read_text())["summary"]
        assert summary["steps"] == steps and summary["train_loss"] == expected["train_loss"]
        assert losses(run_dir) == losses(tmp_path / "straight")
        a, b = adapter(tmp_path / "straight"), adapter(run_dir)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert f"(loss {expected['train_loss']:.4f})" in resumed.stdout


@pytest.mark.integration
def test_loss_goes_down_and_metrics_are_logged(tiny_model_dir, data, tmp_path):
    from bioinstruct.runs.config import load_config
    cfg = load_config(TrainConfig, REPO / "configs/train/tiny/lora.yaml",
                      overrides(tiny_model_dir, data, tmp_path, "null", 30))
    cfg.merge = True
    m = run(cfg)
    assert m["status"] == "complete" and m["summary"]["examples"] + m["summary"]["dropped_prompt_too_long"] == 80
    rows = [json.loads(line) for line in (stage(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert all(r["tokens_per_s_per_device"] > 0 for r in rows[1:])
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first
    assert list((stage(tmp_path) / "runs").glob("**/events.out.tfevents.*"))
    assert (stage(tmp_path) / "adapter" / "adapter_config.json").exists()
    # The merged model gives the adapter's outputs without peft.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    ids = torch.tensor([[1, 200, 300, 400]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(stage(tmp_path) / "merged")(ids).logits
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                          stage(tmp_path) / "adapter")(ids).logits
    assert torch.allclose(merged, tuned, atol=1e-5)


@pytest.mark.unit
def test_bad_input_fails_before_loading_a_model(tmp_path, data, tiny_model_dir):
    from bioinstruct.runs.config import load_config

    def cfg(*extra):
        return load_config(TrainConfig, REPO / "configs/train/tiny/lora.yaml",
                           overrides(tiny_model_dir, data, tmp_path, "null", 5) + list(extra))
    with pytest.raises(ConfigError, match=r"model.path: no such directory: /nowhere/llama"):
        run(cfg("model.path=/nowhere/llama"))
    with pytest.raises(ConfigError, match=r"optim.effective_batch=10 is not divisible by optim.micro_batch \(4\)"):
        run(cfg("optim.effective_batch=10", "optim.micro_batch=4"))
    with pytest.raises(ConfigError, match=r"data.max_length=8 is smaller than the prompt template"):
        run(cfg("data.max_length=8"))
    with pytest.raises(ConfigError, match=r"data.subset: no subset 'qa'"):
        run(cfg("data.path=null", "data.subset=qa"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty.jsonl: no records"):
        run(cfg(f"data.path={empty}"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        run(cfg(f"data.path={bad}"))
    with pytest.raises(ConfigError, match="deepspeed: nowhere.json not found"):
        run(cfg("deepspeed=nowhere.json"))
    # In-process runs leave no rank or port behind for the caller's later child processes.
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT"} & set(os.environ)


@pytest.mark.unit
def test_deepspeed_auto_values_come_from_the_training_config(tmp_path):
    cfg = TrainConfig(deepspeed="configs/deepspeed/zero3.json")
    ds = deepspeed_config(cfg, world_size=4, dtype="bfloat16")
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == \
        (128, 4, 8)
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert ds["zero_optimization"]["stage"] == 3
    fixed = tmp_path / "ds.json"
    fixed.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8}))
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=8 disagrees"):
        deepspeed_config(TrainConfig(deepspeed=str(fixed)), world_size=4, dtype="bfloat16")


@pytest.mark.unit
def test_slurm_environment_for_srun_tasks():
    assert expand_nodelist("gpu[01-03,07],cpu5") == ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]
    env = slurm_environment({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
                             "SLURM_NTASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "node[12-13]",
                             "SLURM_JOB_ID": "424242"})
    assert env == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
                   "MASTER_ADDR": "node12", "MASTER_PORT": str(20000 + 424242 % 20000)}
    assert slurm_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "RANK": "0"}) == {}  # torchrun did it


@pytest.mark.unit
def test_a_process_without_a_launcher_is_rank_0_of_1():
    env = standalone_environment({})
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    assert 0 < int(env["MASTER_PORT"]) < 65536
    assert standalone_environment({"RANK": "3"}) == {} and standalone_environment({"SLURM_PROCID": "0"}) == {}


@pytest.mark.unit
def test_a_cpu_rank_runs_one_thread_even_when_torch_was_loaded_first():
    """torch is imported before the rank's environment is set up; the thread count must
    follow OMP_NUM_THREADS=1 all the same, or a loaded machine breaks bit-exact resume."""
    code = ("import torch; from bioinstruct.modeling.distributed import setup_environment; setup_environment(); "
            "print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "WORLD_SIZE": "2", "RANK": "0"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


@pytest.mark.integration
def test_a_resume_with_changed_result_keys_is_refused_and_no_step_is_logged_twice(tiny_model_dir, data, tmp_path):
    """Killed after checkpoint-3 with steps 4-5 already logged, in a run folder since moved:
    a resume with another lr and step count, or another LoRA shape, is refused naming the keys;
    one that changes only keep_last (which cannot change the result) resumes to the straight
    run's adapter, with each step once in metrics.jsonl."""
    import shutil

    from bioinstruct.runs.config import load_config

    def cfg(run_dir, *extra):
        return load_config(TrainConfig, REPO / "configs/train/tiny/lora.yaml",
                           overrides(tiny_model_dir, data, run_dir, "null", 8) + ["checkpoint.every_steps=3", *extra])
    run(cfg(tmp_path / "straight", "checkpoint.keep_last=5"))  # checkpoints 3, 6 and 8 (the end)
    killed = stage(tmp_path / "killed")
    shutil.copytree(stage(tmp_path / "straight"), killed)
    for step in (6, 8):
        shutil.rmtree(killed / "checkpoints" / f"checkpoint-{step}")
    shutil.rmtree(killed / "adapter")
    rows = (killed / "metrics.jsonl").read_text().splitlines(keepends=True)
    (killed / "metrics.jsonl").write_text("".join(rows[:5]))
    manifest = json.loads((killed / "manifest.json").read_text())
    (killed / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))

    with pytest.raises(ConfigError, match=r"checkpoint-3 was made with another config.*optim.lr: 0.003 -> 0.0001; "
                                          r"optim.max_steps: 8 -> 10"):
        run(cfg(tmp_path / "killed", "optim.lr=1e-4", "optim.max_steps=10"))
    with pytest.raises(ConfigError, match=r"lora.r: 8 -> 4"):
        run(cfg(tmp_path / "killed", "lora.r=4"))
    resumed = run(cfg(tmp_path / "killed", "checkpoint.keep_last=3"))
    assert resumed["status"] == "complete" and resumed["summary"]["steps"] == 8
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    a, b = adapter(tmp_path / "straight"), adapter(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((killed / "checkpoints" / "checkpoint-6" / "bioinstruct_config.json").read_text())
    assert saved["config"]["optim"]["lr"] == 0.003 and saved["inputs"]["data"] == manifest["inputs"]["data"]
    # --force starts clean: a run with the new lr and step count from step 1, nothing reused.
    forced = run(cfg(tmp_path / "killed", "optim.lr=1e-4", "optim.max_steps=10"), force=True)
    fresh = run(cfg(tmp_path / "fresh", "optim.lr=1e-4", "optim.max_steps=10"))
    assert forced["summary"]["train_loss"] == fresh["summary"]["train_loss"]
    assert losses(tmp_path / "killed") == losses(tmp_path / "fresh") and len(losses(tmp_path / "fresh")) == 10


@pytest.mark.integration
def test_out_of_memory_in_the_first_steps_says_which_knob_to_turn(tiny_model_dir, data, tmp_path):
    """A forward over more than one row runs out of memory (tests/faults/sitecustomize.py): one line
    naming micro-batch, max_length and gradient checkpointing, no traceback; the advice works."""
    args = overrides(tiny_model_dir, data, tmp_path, None, 2)  # the shipped DeepSpeed config
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "faults"), "BIOINSTRUCT_TEST_FAULT_ABOVE": "1"}
    failed = subprocess.run(train_cmd(1, *args), env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("bioinstruct train: error: out of memory at step 1 (OutOfMemoryError: CUDA out of memory")
    assert "optim.micro_batch (now 2;" in last and "data.max_length (now 192)" in last
    assert "model.gradient_checkpointing=true" in last and "--force" in last
    assert json.loads((stage(tmp_path) / "manifest.json").read_text())["status"] == "failed"
    done = subprocess.run(train_cmd(1, *args, "optim.micro_batch=1", "--force"), env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
