"""Container tier: the images are built for real and exercised.

- The CPU image (containers/cpu.def) is built with containers/build.sh, then runs the CLI, a
  filter job on a bound data directory (same output as on the host), a job as an
  unprivileged user, and a `bioinstruct launch` stage on the local Slurm (launch's container
  path) that is signalled, requeued and resumed inside the image.
- The GPU image (Apptainerfile) cannot be built here: its CUDA base lives in a registry this
  machine cannot reach. Its definition is parsed by apptainer itself (the build gets as far
  as fetching the base) and by containers/defcheck.py, and its %files, %post, %environment,
  %runscript, %test and %labels are built on the CPU image with a CPU torch standing in for
  the base's CUDA torch.
- Neither image holds a secret that was in the build's environment.

The definition checks need no apptainer (marker unit). The rest needs apptainer (the
`apptainer` fixture: a real one, or containers/ci-apptainer.sh's) and builds for minutes:
each image once per session.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import CONTAINER_CANARY, REPO, build_image

CONTAINERS = REPO / "containers"
APPTAINERFILE = REPO / "Apptainerfile"
CPU_DEF = CONTAINERS / "cpu.def"
# containers/defcheck.py is a script, not part of the package: load it by path.
_spec = importlib.util.spec_from_file_location("bioinstruct_defcheck", CONTAINERS / "defcheck.py")
defcheck = sys.modules["bioinstruct_defcheck"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(defcheck)


def _version() -> str:
    return re.search(r'__version__ = "(.+)"', (REPO / "bioinstruct" / "__init__.py").read_text()).group(1)


def _requirements(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_normal(name)] = version
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the definitions, checked without apptainer ----------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("path", [APPTAINERFILE, CPU_DEF], ids=["gpu", "cpu"])
def test_definition_follows_apptainers_rules(path):
    d = defcheck.check(path, REPO)
    assert {"help", "labels", "files", "post", "environment", "runscript", "test"} <= set(d.sections)
    assert all(len(bodies) == 1 for bodies in d.sections.values()), "a section appears twice"
    assert "exec bioinstruct" in d.sections["runscript"][0]
    env = d.sections["environment"][0]
    assert "HF_HOME=/cache/" in env and "XDG_CACHE_HOME=/cache" in env
    assert not re.search(r"\$HOME|~/", "\n".join(line for line in env.splitlines()
                                                  if not line.strip().startswith("#")))
    # No credential is ever set in a definition (keys come from the environment at run time).
    code = "\n".join(body for name, bodies in d.sections.items() if name != "help" for body in bodies)
    assert not re.search(r"(API_KEY|TOKEN|SECRET|PASSWORD)\w*\s*=", code)
    # The package's own source goes in: %post installs it.
    assert {dst for _, dst in d.files} >= {"/opt/bioinstruct/src/pyproject.toml", "/opt/bioinstruct/src/bioinstruct"}


@pytest.mark.unit
def test_gpu_definition_contract():
    d = defcheck.check(APPTAINERFILE, REPO)
    base = d.header["from"]
    assert d.header["bootstrap"] == "docker"
    # The official PyTorch image, devel flavour (nvcc for DeepSpeed's JIT ops), same torch
    # release as the CPU lock's (tests/test_locks.py checks the rest of the lock).
    m = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn\d+-devel", base)
    assert m, base
    assert f"torch=={m.group(1)}+cpu" in (REPO / "requirements" / "torch-cpu.txt").read_text()
    assert d.labels["org.opencontainers.image.base.name"] == f"docker.io/{base}"
    post = d.sections["post"][0]
    assert "export DS_BUILD_OPS=0" in post
    assert "constraints.txt" in post  # the base's CUDA torch is kept
    env = d.sections["environment"][0]
    assert "TORCH_EXTENSIONS_DIR=/cache/" in env
    assert "bioinstruct doctor" in d.sections["test"][0]
    assert "import torch, transformers, peft, deepspeed, datasets, submitit, openai" in d.sections["test"][0]


@pytest.mark.unit
@pytest.mark.parametrize("text, error", [
    ("Bootstrap: docker\nFrom: a/b:c\nBogus: 1\n%post\n  true\n", "invalid header keyword found: bogus"),
    ("Bootstrap: docker\nFrom: a/b:c\n%postt\n  true\n", "invalid section(s) specified: postt"),
    ("Bootstrap: docker\n%post\n  true\n", "needs from"),
    ("Bootstrap: podman\nFrom: a\n%post\n  true\n", "unknown bootstrap agent"),
    ("Bootstrap: docker\nFrom: a/b:c\n%files\n  no/such/file /x\n", "does not exist"),
    ("Bootstrap docker\n%post\n  true\n", "had no val"),
])
def test_defcheck_rejects_what_apptainer_rejects(tmp_path, text, error):
    path = tmp_path / "x.def"
    path.write_text(text)
    with pytest.raises(defcheck.DefinitionError, match=re.escape(error)):
        defcheck.check(path, REPO)


# --- apptainer ---------------------------------------------------------------------------------

def _run(cmd: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="session")
def gpu_on_cpu_base(apptainer, cpu_image, tmp_path_factory):
    """The Apptainerfile's sections built on the CPU image instead of the CUDA base: a
    localimage header and, before its %post, the CPU torch the tests run with, standing in
    for the base's torch. A sandbox (a directory), which skips packing a SIF."""
    torch_version = importlib.metadata.version("torch")
    text = APPTAINERFILE.read_text()
    sections = text[re.search(r"^%", text, re.M).start():]
    stand_in = (
        f"Bootstrap: localimage\nFrom: {cpu_image}\n\n"
        "%post\n"
        "    # Stand-in for the CUDA base: a CPU build of the same torch, and no bioinstruct.\n"
        "    set -eu\n"
        "    if [ -f /mnt/bioinstruct-pip/pip.conf ]; then export PIP_CONFIG_FILE=/mnt/bioinstruct-pip/pip.conf; fi\n"
        "    python -m pip uninstall -q -y bioinstruct\n"
        f"    python -m pip install -q --no-cache-dir --no-compile torch=={torch_version}\n\n")
    folder = tmp_path_factory.mktemp("gpu-on-cpu")
    definition = folder / "gpu-on-cpu.def"
    definition.write_text(stand_in + sections)
    proc = build_image(apptainer, str(definition), folder / "sandbox", "--sandbox")
    yield folder / "sandbox", proc.stdout + proc.stderr
    shutil.rmtree(folder / "sandbox", ignore_errors=True)  # 1.7 GB


@pytest.mark.container
def test_apptainer_parses_the_gpu_definition(apptainer, tmp_path):
    """apptainer's own parser accepts the Apptainerfile as it is: the build gets past parsing
    to fetching the CUDA base, which a proxy on a closed port makes fail at once (also where
    the registry is reachable). A broken copy fails in parsing: the check can fail."""
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "NO_PROXY": "", "no_proxy": ""}
    proc = _run([apptainer, "build", "--sandbox", str(tmp_path / "never"), str(APPTAINERFILE)],
                timeout=120, env=env, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out  # it cannot have fetched the base
    assert "while parsing definition" not in out, out
    assert re.search(r"Fetching OCI image|docker\.io|index\.docker|127\.0\.0\.1:9", out), out

    broken = tmp_path / "broken.def"
    broken.write_text(APPTAINERFILE.read_text().replace("%environment", "%enviroment"))
    proc = _run([apptainer, "build", "--sandbox", str(tmp_path / "never2"), str(broken)], timeout=120, env=env)
    assert "while parsing definition" in proc.stdout + proc.stderr and "enviroment" in proc.stderr


@pytest.mark.container
def test_cpu_image_is_small_labelled_and_has_no_torch(apptainer, cpu_image):
    size_mb = cpu_image.stat().st_size / 2**20
    print(f"CPU image: {size_mb:.0f} MiB")
    assert size_mb < 150
    labels = json.loads(_ok(_run([apptainer, "inspect", "--json", "--labels", str(cpu_image)])).stdout)
    labels = labels["data"]["attributes"]["labels"]
    assert labels["org.opencontainers.image.version"] == _version()
    assert labels["org.opencontainers.image.title"] == "bioinstruct-cpu"
    proc = _run([apptainer, "exec", "--cleanenv", str(cpu_image), "python", "-c", "import torch"])
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr
    _ok(_run([apptainer, "test", str(cpu_image)]))


@pytest.mark.container
def test_cpu_image_runs_the_cli(apptainer, cpu_image):
    proc = _ok(_run([apptainer, "run", "--cleanenv", str(cpu_image), "--help"]))
    for verb in ("generate", "filter", "classify", "subsets", "train", "doctor"):
        assert verb in proc.stdout
    proc = _ok(_run([apptainer, "exec", "--cleanenv", str(cpu_image), "bioinstruct", "--version"]))
    assert proc.stdout.strip() == f"bioinstruct {_version()}"


def _filter_inputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = [
        {"instruction": "List the common side effects of metformin in adults.", "input": "",
         "output": "Nausea, diarrhoea, abdominal pain, metallic taste."},
        {"instruction": "List the common side effects of metformin in adult patients.", "input": "",
         "output": "Nausea and diarrhoea."},  # near-duplicate of the first
        {"instruction": "Describe the picture of the chest X-ray.", "input": "", "output": "A normal chest."},
        {"instruction": "Summarize.", "input": "text", "output": "short"},
        {"instruction": "Extract all medication names from the clinical note below.",
         "input": "Patient started on lisinopril 10 mg and atorvastatin 20 mg.", "output": "lisinopril, atorvastatin"},
        {"instruction": "Write a program that parses HL7 messages in Python.", "input": "", "output": "import hl7"},
    ]
    (folder / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    shutil.copy(REPO / "bioinstruct" / "data" / "seed_tasks.jsonl", folder / "pool.jsonl")
    return folder


@pytest.mark.container
def test_cpu_image_filter_job_on_a_bound_data_directory(apptainer, cpu_image, tmp_path):
    """A filter job inside the image, reading and writing a bound directory, decides exactly
    as the same job on the host."""
    data = _filter_inputs(tmp_path / "data")
    cache = tmp_path / "cache"
    cache.mkdir()
    args = ["filter", "--in", "{d}/candidates.jsonl", "--out", "{d}/run/filter/kept.jsonl", "--pool", "{d}/pool.jsonl"]
    proc = _ok(_run([apptainer, "run", "--cleanenv", "--bind", f"{data}:/data", "--bind", f"{cache}:/cache",
                     str(cpu_image), *[a.format(d="/data") for a in args]]))
    assert "kept 2 of 6" in proc.stdout
    assert "/cache is not writable" not in proc.stderr

    host = _filter_inputs(tmp_path / "host")
    _ok(_run([sys.executable, "-m", "bioinstruct", *[a.format(d=host) for a in args]]))
    for name in ("kept.jsonl", "decisions.jsonl"):
        assert (data / "run" / "filter" / name).read_bytes() == (host / "run" / "filter" / name).read_bytes(), name
    manifest = json.loads((data / "run" / "filter" / "manifest.json").read_text())
    assert manifest["status"] == "complete"


@pytest.mark.container
def test_cpu_image_warns_when_cache_is_not_bound(apptainer, cpu_image):
    proc = _ok(_run([apptainer, "run", "--cleanenv", "--no-home", str(cpu_image), "--version"]))
    assert "/cache is not writable" in proc.stderr


@pytest.mark.container
def test_cpu_image_as_an_unprivileged_user(apptainer, cpu_image):
    """Cluster users are not root. With ci-apptainer.sh's wrapper (run as root) the same
    image runs a filter job as 'nobody'; a real apptainer run by a non-root user needs
    nothing more than the other tests do."""
    with open(apptainer, "rb") as f:
        wrapper = b"BIOINSTRUCT_APPTAINER_WRAPPER" in f.read(4000)
    if not wrapper:
        pytest.skip("not the ci-apptainer.sh wrapper: the other tests already run as this user")
    # pytest's own temporary folders are private to root: use one 'nobody' can reach.
    shared = Path(tempfile.mkdtemp(prefix="bioinstruct-nobody-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        image = shared / "cpu.sif"
        shutil.copy(cpu_image, image)
        data = _filter_inputs(shared / "data")
        data.chmod(0o777)
        env = {**os.environ, "BIOINSTRUCT_APPTAINER_AS": "nobody"}
        proc = _ok(_run([apptainer, "exec", "--cleanenv", "--no-home", "--bind", f"{data}:/data", str(image),
                         "sh", "-c", "id -un && bioinstruct filter --in /data/candidates.jsonl"
                         " --out /data/run/kept.jsonl --pool /data/pool.jsonl"], env=env, cwd=shared))
        assert proc.stdout.splitlines()[0] == "nobody"
        assert "kept 2 of 6" in proc.stdout
        assert (data / "run" / "kept.jsonl").stat().st_uid == 65534
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.container
def test_launch_runs_a_stage_in_the_cpu_image_on_slurm_and_requeues_it(apptainer, cpu_image, local_slurm, tmp_path):
    """bioinstruct launch's container path on the local Slurm: the batch script's host side
    (bi_run) starts the task as `srun ... apptainer exec IMAGE python3 -m submitit...`.
    Slurm's warning signal (USR2 to the batch shell, sent here mid-run) crosses srun and
    apptainer to the stage, which stops cleanly and exits 75 out of the container; bi_run
    requeues the job with scontrol, and the second run resumes inside the image and ends
    with exactly what an uninterrupted run on the host writes."""
    from bioinstruct.cli import main
    from bioinstruct.launch.status import read_manifests
    from test_launch_slurm import wait_for_sweeps

    # The uninterrupted run, on the host, meanwhile (about 10 s).
    reference = subprocess.Popen([sys.executable, "-m", "bioinstruct", "generate", f"run_dir={tmp_path / 'host'}",
                                  "target=1500", "llm.backend=offline"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sweep = tmp_path / "boxed.yaml"
    sweep.write_text(f"""
name: boxed
defaults: {{all: {{resources: {{cpus_per_task: 1, mem_gb: 1, time_limit_min: 10}}, container: {{image: {cpu_image}}}}}}}
stages:
  generate: {{kind: generate, set: {{target: 1500, llm.backend: offline}}}}
""")
    run = tmp_path / "run"
    assert main(["launch", str(sweep), "--cluster", "slurm", f"run_dir={run}"]) == 0
    task = read_manifests(run)["boxed"]["stages"][0]["tasks"][0]
    script = Path(task["log"]["out"]).parent / f"{task['job_id']}_submission.sh"
    # The run directory, and a writable /cache where the image keeps its caches.
    assert (f"apptainer exec --bind {run},{run}/cache:/cache {cpu_image} python3 -u -m submitit.core._submit"
            in script.read_text())

    responses = run / "generate" / "responses.jsonl"
    deadline = time.time() + 180
    while not (responses.exists() and responses.read_bytes().count(b"\n") >= 30):
        assert time.time() < deadline, "generate did not start in the container"
        time.sleep(0.2)
    subprocess.run(["scancel", "--batch", "--signal=USR2", task["job_id"]], check=True)

    row = wait_for_sweeps(run, timeout=300)[0]
    log = Path(row["log"]).read_text()
    assert row["state"] == "done" and row["restarts"] == 1, (row, log)
    attempts = [json.loads(line) for line in Path(task["attempts"]).read_text().splitlines()]
    assert [(a["event"], a.get("outcome")) for a in attempts] == [
        ("start", None), ("end", "requeue"), ("start", None), ("end", "complete")], attempts
    assert "signal SIGUSR2" in attempts[1]["detail"] and "requeueing job" in log
    manifest = json.loads((run / "generate" / "manifest.json").read_text())
    # Inside the image the package is installed, not a git checkout: no revision recorded.
    assert manifest["attempt"] == 2 and manifest["git_revision"] is None, manifest
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    host = tmp_path / "host" / "generate" / "instructions.jsonl"
    assert (run / "generate" / "instructions.jsonl").read_bytes() == host.read_bytes()


@pytest.mark.container
def test_no_secret_from_the_build_environment_is_in_the_cpu_image(apptainer, cpu_image):
    for what in ("--labels", "--environment", "--runscript", "--test", "--deffile", "--helpfile"):
        out = _ok(_run([apptainer, "inspect", what, str(cpu_image)])).stdout
        assert CONTAINER_CANARY not in out, what
    env = _ok(_run([apptainer, "exec", "--cleanenv", str(cpu_image), "env"])).stdout
    assert CONTAINER_CANARY not in env and "OPENAI_API_KEY" not in env
    # Every file of the image (the container alone: no home, no host /tmp; /proc would show
    # grep's own command line).
    proc = _run([apptainer, "exec", "--contain", "--cleanenv", "--no-home", str(cpu_image), "grep", "-rlF",
                 "--exclude-dir=proc", "--exclude-dir=sys", "--exclude-dir=dev", CONTAINER_CANARY, "/"], timeout=300)
    assert proc.returncode == 1 and not proc.stdout, proc.stdout + proc.stderr  # 1: no match
    # Keys reach a job from the environment at run time.
    proc = _ok(_run([apptainer, "exec", str(cpu_image), "sh", "-c", 'test "$OPENAI_API_KEY" = "$EXPECTED"'],
                    env={**os.environ, "OPENAI_API_KEY": "sk-run-time", "EXPECTED": "sk-run-time"}))


@pytest.mark.container
def test_post_sees_no_secret_from_the_build_environment(apptainer, cpu_image, tmp_path):
    """What %post sees, it can write into the image: build.sh keeps apptainer's run-time
    variables (APPTAINERENV_OPENAI_API_KEY, ...) out of the build, and apptainer passes no
    other variable of the caller's."""
    definition = tmp_path / "env.def"
    definition.write_text(f"Bootstrap: localimage\nFrom: {cpu_image}\n\n%post\n    env >/post-env.txt\n")
    proc = build_image(apptainer, str(definition), tmp_path / "sandbox", "--sandbox")
    assert "not passing APPTAINERENV_OPENAI_API_KEY to the build" in proc.stdout
    env = (tmp_path / "sandbox" / "post-env.txt").read_text()
    assert "PATH=" in env and CONTAINER_CANARY not in env, env


@pytest.mark.container
def test_gpu_definition_builds_on_the_cpu_base(apptainer, gpu_on_cpu_base):
    """The Apptainerfile's %post installs the pinned stack around the base's torch without a
    conflict, and its %test (import check, bioinstruct doctor) passes."""
    sandbox, log = gpu_on_cpu_base
    torch_version = importlib.metadata.version("torch")
    assert "No broken requirements found." in log
    assert f"import check: torch {torch_version}" in log  # %test ran; the stand-in torch was kept
    assert re.search(r"package deepspeed +\d", log) and re.search(r"DeepSpeed accelerator +cpu", log)  # doctor ran
    frozen = {_normal(n): v for n, _, v in (line.partition("==") for line in
              (sandbox / "opt" / "bioinstruct" / "pip-freeze.txt").read_text().splitlines()) if v}
    for name, version in _requirements(REPO / "requirements" / "gpu.txt").items():
        assert frozen.get(name) == version, name
    assert frozen["torch"] == torch_version
    labels = json.loads(_ok(_run([apptainer, "inspect", "--json", "--labels", str(sandbox)])).stdout)
    labels = labels["data"]["attributes"]["labels"]
    assert labels["org.opencontainers.image.version"] == _version()
    assert labels["bioinstruct.torch"] == torch_version
    # DeepSpeed was installed as pure Python (DS_BUILD_OPS=0): no op compiled in.
    probe = "from deepspeed.git_version_info import installed_ops as ops; print(sorted(k for k, v in ops.items() if v))"
    proc = _ok(_run([apptainer, "exec", "--cleanenv", str(sandbox), "python", "-c", probe]))
    assert proc.stdout.strip().splitlines()[-1] == "[]"  # (after DeepSpeed's accelerator warning)
    assert not list(sandbox.rglob("deepspeed/ops/**/*.so")), "a DeepSpeed op was compiled into the image"


@pytest.mark.container
def test_gpu_image_caches_go_to_the_bound_scratch(apptainer, gpu_on_cpu_base, tmp_path):
    """Hugging Face's cache and DeepSpeed's JIT op folder resolve under /cache, which a bind
    puts on scratch; nothing lands in $HOME."""
    sandbox, _ = gpu_on_cpu_base
    scratch, home = tmp_path / "scratch", tmp_path / "home"
    scratch.mkdir()
    home.mkdir()
    probe = ("import os, huggingface_hub.constants as c\n"
             "from torch.utils.cpp_extension import _get_build_directory\n"
             "print(c.HF_HUB_CACHE)\n"
             "print(_get_build_directory('bioinstruct_probe', verbose=False))\n"
             "print(os.environ['TRITON_CACHE_DIR'])\n")
    proc = _ok(_run([apptainer, "exec", "--cleanenv", "--home", str(home), "--bind", f"{scratch}:/cache",
                     str(sandbox), "python", "-c", probe]))
    hub, extensions, triton = proc.stdout.split()
    assert hub == "/cache/huggingface/hub" and triton == "/cache/triton"
    assert extensions.startswith("/cache/torch_extensions/")
    assert (scratch / extensions.removeprefix("/cache/")).is_dir()  # created on the bound scratch
    assert not any(home.iterdir()), list(home.iterdir())


@pytest.mark.container
def test_no_secret_from_the_build_environment_is_in_the_gpu_sandbox(gpu_on_cpu_base):
    sandbox, _ = gpu_on_cpu_base
    proc = _run(["grep", "-rlF", CONTAINER_CANARY, str(sandbox)], timeout=300)
    assert proc.returncode == 1 and not proc.stdout, proc.stdout + proc.stderr
