"""Generation through the real openai client, over loopback HTTP, against a local
OpenAI-protocol server that injects faults (bioinstruct.testing.openai_server)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bioinstruct.errors import ConfigError, StageStopped, UserError
from bioinstruct.stages.generate import GenerateConfig, offline_responder, run
from bioinstruct.io.rows import read_jsonl
from bioinstruct.llm import LLMConfig
from bioinstruct.runs.rundir import read_manifest
from bioinstruct.testing.openai_server import BatchFaults, Faults, OpenAIServer
from conftest import wait_for_lines

pytestmark = pytest.mark.integration

KEY = "sk-test-Zq81-never-write-me-down"


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return KEY


def live_cfg(run_dir, server, target=60, **llm):
    base = dict(backend="openai", base_url=server.base_url, timeout=1.0, backoff_base=0.01, backoff_max=0.05,
                concurrency=8, requests_per_minute=60_000, tokens_per_minute=100_000_000)
    return GenerateConfig(run_dir=str(run_dir), target=target, llm=LLMConfig(**(base | llm)))


def instructions(run_dir):
    return read_jsonl(Path(run_dir) / "generate" / "instructions.jsonl")


def assert_complete_without_duplicates(run_dir, target):
    inst = instructions(run_dir)
    assert len(inst) == target
    assert len({(r["instruction"], r["input"]) for r in inst}) == target
    responses = read_jsonl(Path(run_dir) / "generate" / "responses.jsonl")
    assert len({r["id"] for r in responses}) == len(responses)
    return inst, responses


def test_target_reached_under_20_percent_faults_and_key_never_on_disk(tmp_path, api_key, capfd):
    faults = Faults(rate_limit=0.05, server_error=0.04, slow=0.02, drop=0.03, malformed=0.02,
                    empty_choices=0.02, truncated=0.01, content_filter=0.01, seed=3, slow_seconds=1.5,
                    retry_after=0.02)
    with OpenAIServer(offline_responder, faults, api_key=KEY) as server:
        cfg = live_cfg(tmp_path, server, target=120)
        cfg.num_tasks = 5  # 2 new tasks a response: many requests, so faults hit often
        m = run(cfg)
        stats = server.stats
    assert m["status"] == "complete"
    inst, responses = assert_complete_without_duplicates(tmp_path, 120)
    assert sum(stats.outcomes[k] for k in stats.outcomes if k != "ok") >= 0.1 * stats.chat_requests
    assert m["summary"]["retries"] > 0
    assert all(r["backend"] == "openai" and r["model"] == "gpt-4" and "usage" in r for r in inst)
    # The key travels only in the Authorization header; nothing written or printed holds it.
    out, err = capfd.readouterr()
    assert KEY not in out + err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_wrong_key_stops_at_once_without_leaking_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-Ax9-secret")
    with OpenAIServer(offline_responder, api_key=KEY) as server:
        with pytest.raises(UserError) as e:
            run(live_cfg(tmp_path, server))
        assert server.stats.outcomes["unauthorized"] <= 8  # only the first wave of requests
    assert "sk-wrong-Ax9-secret" not in str(e.value) and "AuthenticationError" in str(e.value)
    assert read_manifest(tmp_path / "generate")["status"] == "failed"


def test_no_key_and_no_price_fail_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIServer(offline_responder) as server:
        with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
            run(live_cfg(tmp_path, server))
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        cfg = live_cfg(tmp_path, server, model="my-local-model")
        cfg.llm.budget.max_cost = 5.0
        with pytest.raises(ConfigError, match="no entry for model 'my-local-model'"):
            run(cfg)
        assert server.stats.chat_requests == 0


def test_cost_budget_stops_cleanly(tmp_path, api_key):
    with OpenAIServer(offline_responder) as server:
        cfg = live_cfg(tmp_path, server, target=500, concurrency=2)
        cfg.llm.budget.max_cost = 0.5
        with pytest.raises(StageStopped, match=r"max_cost"):
            run(cfg)
    usage = read_manifest(tmp_path / "generate")
    assert usage["status"] == "stopped"
    spent = sum(1 for _ in read_jsonl(tmp_path / "generate" / "responses.jsonl"))
    assert spent >= 1
    import json
    assert json.loads((tmp_path / "generate" / "usage.json").read_text())["cost_usd"] <= 0.5


def test_kill_9_at_random_moments_then_rerun_completes_without_loss(tmp_path, api_key):
    run_dir = tmp_path / "victim"
    with OpenAIServer(offline_responder, latency=0.4) as server:  # a whole run takes ~6 s
        cmd = [sys.executable, "-m", "bioinstruct", "generate", f"run_dir={run_dir}", "target=300",
               f"llm.base_url={server.base_url}", "llm.concurrency=4", "llm.requests_per_minute=100000",
               "llm.tokens_per_minute=1000000000"]
        rng = random.Random(1)
        responses = run_dir / "generate" / "responses.jsonl"
        kills = 3
        for _ in range(kills):
            before = responses.read_bytes().count(b"\n") if responses.exists() else 0
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_lines(responses, before + rng.randint(2, 8), proc)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        served_ok = server.stats.outcomes["ok"]
    inst, responses = assert_complete_without_duplicates(run_dir, 300)
    # Answers recorded before a kill were never asked again; at most the requests in
    # flight at each kill (4) were paid for without being recorded.
    assert served_ok <= len(responses) + 4 * kills


def batch_cfg(run_dir, server, target=40, **llm):
    # These tests wait for their batches in the job (batch_wait_seconds); users' jobs end at
    # once and leave collecting to the next run (test_no_job_waits_for_a_batch...).
    return live_cfg(run_dir, server, target, **({"backend": "openai-batch", "batch_size": 4,
                                                "batch_poll_seconds": 0.05, "batch_wait_seconds": 60} | llm))


def test_batch_api_with_per_request_errors(tmp_path, api_key):
    with OpenAIServer(offline_responder, batch_faults=BatchFaults(request_error=0.25, seed=2),
                      batch_delay=0.05) as server:
        cfg = batch_cfg(tmp_path, server)
        cfg.num_tasks = 5  # 2 new tasks a response: ~20 requests in 5+ batches
        m = run(cfg)
    assert m["status"] == "complete"
    inst, responses = assert_complete_without_duplicates(tmp_path, 40)
    assert all(r["backend"] == "openai-batch" for r in responses)
    assert any(r["attempts"] > 1 for r in responses)  # failed requests went into a later batch
    # Half price, as the Batch API charges.
    full = sum(r["usage"]["prompt_tokens"] * 30 + r["usage"]["completion_tokens"] * 60 for r in responses) / 1e6
    assert m["summary"]["cost_usd"] == pytest.approx(full / 2, rel=1e-6)


def test_expired_batches_resend_what_they_left_undone(tmp_path, api_key):
    with OpenAIServer(offline_responder, batch_faults=BatchFaults(expire=True, expire_after=0.5),
                      batch_delay=0.05) as server:
        cfg = batch_cfg(tmp_path, server, target=20)
        cfg.num_tasks = 5
        m = run(cfg)
    assert m["status"] == "complete"
    inst, responses = assert_complete_without_duplicates(tmp_path, 20)
    assert any(r["attempts"] > 1 for r in responses)


def test_batch_resumes_polling_after_kill_instead_of_paying_again(tmp_path, api_key):
    with OpenAIServer(offline_responder, batch_delay=3.0) as server:
        cfg = batch_cfg(tmp_path, server, target=5, batch_size=10)
        cmd = [sys.executable, "-m", "bioinstruct", "generate", f"run_dir={tmp_path}", "target=5",
               "llm.backend=openai-batch", f"llm.base_url={server.base_url}", "llm.batch_size=10",
               "llm.batch_poll_seconds=0.05"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state = tmp_path / "generate" / "batch.json"
        deadline = time.time() + 30
        while not state.exists():
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        m = run(cfg)
        created = [r for r in server.requests if r.method == "POST" and r.path.startswith("/v1/batches")]
    assert m["status"] == "complete"
    assert len(created) == 1  # the saved batch was polled, not submitted again
    assert_complete_without_duplicates(tmp_path, 5)


# Faults that make answers arrive out of order (retries, backoff) without changing any
# answer's text: the dataset must then not depend on timing at all.
REORDERING = Faults(rate_limit=0.06, server_error=0.06, drop=0.04, malformed=0.02, empty_choices=0.02,
                    seed=11, retry_after=0.02)


def assert_ledger_matches_files(stage):
    """usage.json is the sum over responses.jsonl and failures.jsonl."""
    import json
    usage = json.loads((stage / "usage.json").read_text())
    responses = read_jsonl(stage / "responses.jsonl")
    failures = read_jsonl(stage / "failures.jsonl") if (stage / "failures.jsonl").exists() else []
    assert usage["requests"] == len(responses)
    assert usage["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in responses)
    assert usage["completion_tokens"] == sum(r["usage"]["completion_tokens"] for r in responses)
    assert usage["failed_requests"] == len(failures)
    assert usage["retries"] == sum(r["attempts"] - 1 for r in responses + failures)
    cost = sum(r["usage"]["prompt_tokens"] * 30 + r["usage"]["completion_tokens"] * 60 for r in responses) / 1e6
    assert usage["cost_usd"] == pytest.approx(cost, abs=1e-5)


def test_kill_9_resume_and_reparse_give_the_uninterrupted_dataset_and_ledger(tmp_path, api_key):
    target = 150
    with OpenAIServer(offline_responder, REORDERING, latency=0.1) as server:
        reference = tmp_path / "reference"
        cfg = live_cfg(reference, server, target=target, max_attempts=50)
        cfg.num_tasks = 6  # 3 new tasks a response: ~60 requests, reordered by faults
        run(cfg)
        run_dir = tmp_path / "victim"
        cmd = [sys.executable, "-m", "bioinstruct", "generate", f"run_dir={run_dir}", f"target={target}",
               "num_tasks=6", f"llm.base_url={server.base_url}", "llm.concurrency=8", "llm.max_attempts=50",
               "llm.backoff_base=0.01", "llm.backoff_max=0.05", "llm.requests_per_minute=100000",
               "llm.tokens_per_minute=1000000000"]
        stage = run_dir / "generate"
        rng = random.Random(5)
        for _ in range(3):
            before = (stage / "responses.jsonl").read_bytes().count(b"\n") if (stage / "responses.jsonl").exists() else 0
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_lines(stage / "responses.jsonl", before + rng.randint(3, 12), proc)
            time.sleep(rng.uniform(0, 0.05))  # not always right after an append
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            # A reparse between kills (it stops short of the target) rebuilds the ledger too.
            subprocess.run([*cmd, "--reparse"], capture_output=True, check=False)
            assert_ledger_matches_files(stage)
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert_ledger_matches_files(stage)
    for name in ("instructions.jsonl", "decisions.jsonl"):
        assert (stage / name).read_bytes() == (reference / "generate" / name).read_bytes(), name
    reparse = subprocess.run([*cmd, "--reparse"], capture_output=True, text=True)
    assert reparse.returncode == 0, reparse.stderr
    for name in ("instructions.jsonl", "decisions.jsonl"):
        assert (stage / name).read_bytes() == (reference / "generate" / name).read_bytes(), name
    assert_ledger_matches_files(stage)
    assert_ledger_matches_files(reference / "generate")
    assert_complete_without_duplicates(run_dir, target)


def waiting_row(run_dir):
    """What `bioinstruct status` shows for a generate task (its job ended) with this output."""
    from bioinstruct.launch.status import task_rows

    class NoQueue:  # the job is no longer in Slurm's queue and sacct knows nothing of it
        def live(self, ids):
            return {}

        def ended(self, ids, raw_ids):
            return {}

    attempts = run_dir / "attempts.jsonl"
    attempts.write_text("")
    task = {"index": 0, "label": "generate", "outputs": [str(run_dir / "generate")],
            "config_hash": read_manifest(run_dir / "generate")["config_hash"], "attempts": str(attempts),
            "job_id": "41", "log": {"err": "/logs/41_0_log.err"}}
    row = task_rows({"stages": [{"name": "generate", "tasks": [task]}]}, NoQueue())[0]
    return row["state"], row["detail"]


def test_no_job_waits_for_a_batch_and_the_next_run_collects_it(tmp_path, api_key):
    with OpenAIServer(offline_responder, batch_delay=1.5) as server:
        cmd = [sys.executable, "-m", "bioinstruct", "generate", f"run_dir={tmp_path}", "target=5",
               "llm.backend=openai-batch", f"llm.base_url={server.base_url}", "llm.batch_size=10"]
        first = subprocess.run(cmd, capture_output=True, text=True)
        assert first.returncode == 2 and "run the same command again" in first.stderr, first.stderr
        manifest = read_manifest(tmp_path / "generate")
        batch_id = json.loads((tmp_path / "generate" / "batch.json").read_text())["batch_id"]
        assert manifest["status"] == "waiting" and batch_id in manifest["error"]
        assert waiting_row(tmp_path)[:2] == ("waiting", manifest["error"].splitlines()[-1])
        assert read_jsonl(tmp_path / "generate" / "responses.jsonl") == []
        # Later runs look once and end while the batch is pending; one after it finished collects.
        deadline = time.time() + 60
        while (done := subprocess.run(cmd, capture_output=True, text=True)).returncode != 0:
            assert f"batch {batch_id} is " in done.stderr and "run the same command again" in done.stderr, done.stderr
            assert time.time() < deadline
            time.sleep(0.3)
        created = [r for r in server.requests if r.method == "POST" and r.path.startswith("/v1/batches")]
    assert read_manifest(tmp_path / "generate")["status"] == "complete"
    assert len(created) == 1  # the saved batch was collected, not submitted again
    assert_complete_without_duplicates(tmp_path, 5)


def test_a_request_out_of_attempts_stops_the_run_and_the_next_run_gives_the_same_dataset(tmp_path, api_key):
    # Half the attempts fail: a quarter of the requests run out of their 2 attempts.
    with OpenAIServer(offline_responder, Faults(server_error=0.5, seed=8), latency=0.02) as server:
        reference = live_cfg(tmp_path / "reference", server, target=60, max_attempts=50)
        reference.num_tasks = 6
        run(reference)
        cfg = live_cfg(tmp_path / "flaky", server, target=60, max_attempts=2)
        cfg.num_tasks = 6
        stops = 0
        while True:
            try:
                run(cfg)
                break
            except StageStopped as e:
                assert "ran out of attempts" in str(e) and "run again" in str(e), e
                stops += 1
                assert stops < 100
    assert stops >= 1  # some request did run out of attempts
    failures = read_jsonl(tmp_path / "flaky" / "generate" / "failures.jsonl")
    assert len(failures) >= stops
    for name in ("instructions.jsonl", "decisions.jsonl"):
        assert ((tmp_path / "flaky" / "generate" / name).read_bytes()
                == (tmp_path / "reference" / "generate" / name).read_bytes()), name
    assert_ledger_matches_files(tmp_path / "flaky" / "generate")
