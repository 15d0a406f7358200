"""The local OpenAI-protocol server, driven by the real ``openai`` client over loopback."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import time

import openai
import pytest

from bioinstruct.testing.openai_server import (
    BatchFaults,
    Faults,
    OpenAIServer,
    count_tokens,
    echo_responder,
)

pytestmark = pytest.mark.unit

MODEL = "gpt-4-local"
HELLO = [{"role": "user", "content": "Name three symptoms of anemia."}]


@pytest.fixture
def serve():
    """serve(**kwargs) -> a started OpenAIServer, stopped at teardown."""
    servers = []

    def start(*args, **kwargs) -> OpenAIServer:
        servers.append(OpenAIServer(*args, **kwargs).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def client_for(server: OpenAIServer, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("api_key", "sk-test")
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=server.base_url, **kwargs)


def ask(client, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=HELLO, **kwargs)


# --------------------------------------------------------------------------- chat


def test_round_trip_like_the_api(serve):
    server = serve()
    answer = ask(client_for(server), temperature=0.7, max_tokens=50)
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.model == MODEL and answer.system_fingerprint
    [choice] = answer.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == echo_responder({"messages": HELLO})
    assert answer.usage.prompt_tokens == count_tokens(HELLO[0]["content"]) == 6
    assert answer.usage.completion_tokens == count_tokens(choice.message.content)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    [body] = server.chat_bodies
    assert body["temperature"] == 0.7 and body["max_tokens"] == 50 and body["messages"] == HELLO
    stats = server.stats
    assert stats.outcomes == {"ok": 1} and stats.total_tokens == answer.usage.total_tokens


def test_responder_n_choices_and_max_tokens(serve):
    server = serve(lambda body: f"answer at temperature {body.get('temperature')} " + "word " * 40)
    client = client_for(server)
    answer = ask(client, n=3, temperature=0.2)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert answer.choices[0].message.content.startswith("answer at temperature 0.2")
    cut = ask(client, max_tokens=5)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens <= 5
    assert cut.choices[0].message.content == "answer at temperature None"  # 4 words ~ 5 tokens


def test_bad_requests_and_unknown_paths(serve):
    client = client_for(serve())
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.NotFoundError) as err:
        client.models.list()
    assert err.value.body["message"] == "Invalid URL (GET /v1/models)"


# --------------------------------------------------------------------------- faults


def test_rate_limit_fault_is_a_429_with_retry_after(serve):
    server = serve(faults=Faults(rate_limit=1.0, retry_after=0.05))
    with pytest.raises(openai.RateLimitError) as err:
        ask(client_for(server))
    assert err.value.status_code == 429
    assert err.value.response.headers["retry-after"] == "0.05"
    assert err.value.response.headers["retry-after-ms"] == "50"
    assert err.value.code == "rate_limit_exceeded"
    assert server.stats.outcomes == {"rate_limited": 1}


def test_server_errors_are_500_or_503(serve):
    server = serve(faults=Faults(server_error=1.0, seed=0))
    client = client_for(server)
    codes = set()
    for _ in range(12):
        with pytest.raises(openai.InternalServerError) as err:
            ask(client)
        assert isinstance(err.value, openai.APIStatusError) and err.value.body["type"] == "server_error"
        codes.add(err.value.status_code)
    assert codes == {500, 503}


def test_slow_answer_times_out_on_the_client(serve):
    server = serve(faults=Faults(slow=1.0, slow_seconds=3.0))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask(client_for(server, timeout=0.3))
    assert time.monotonic() - started < 2.0
    assert server.stats.outcomes == {"slow": 1}


def test_dropped_connection_is_a_connection_error(serve):
    server = serve(faults=Faults(drop=1.0))
    with pytest.raises(openai.APIConnectionError) as err:
        ask(client_for(server))
    # APITimeoutError subclasses APIConnectionError: a drop must not look like a timeout.
    assert type(err.value) is openai.APIConnectionError
    assert server.stats.outcomes == {"dropped": 1}


def test_malformed_body_raises_a_json_error_not_an_openai_error(serve):
    server = serve(faults=Faults(malformed=1.0))
    # The client parses a 200 application/json body with json.loads and lets the
    # JSONDecodeError through: callers must catch ValueError, not only openai.APIError.
    with pytest.raises(json.JSONDecodeError):
        ask(client_for(server, max_retries=2))
    assert server.stats.chat_requests == 1  # and it is not retried


def test_odd_but_valid_answers(serve):
    empty = ask(client_for(serve(faults=Faults(empty_choices=1.0)))).choices
    assert empty == []
    full = echo_responder({"messages": HELLO})
    for seed in range(3):
        [choice] = ask(client_for(serve(faults=Faults(truncated=1.0, seed=seed)))).choices
        assert choice.finish_reason == "length"
        assert full.startswith(choice.message.content) and len(choice.message.content) < len(full)
    [choice] = ask(client_for(serve(faults=Faults(content_filter=1.0)))).choices
    assert choice.finish_reason == "content_filter" and choice.message.content is None


def test_mixed_faults_on_one_keep_alive_client(serve):
    faults = Faults(rate_limit=0.1, server_error=0.1, drop=0.1, malformed=0.1, empty_choices=0.1, seed=7)
    server = serve(faults=faults)
    client = client_for(server)
    seen: dict[str, int] = {}
    for _ in range(100):
        try:
            answer = ask(client)
            kind = "ok" if answer.choices else "empty"
        except openai.RateLimitError:
            kind = "rate_limited"
        except openai.InternalServerError:
            kind = "server_error"
        except openai.APIConnectionError:
            kind = "dropped"
        except json.JSONDecodeError:
            kind = "malformed"
        seen[kind] = seen.get(kind, 0) + 1
    # Every answer reached the client intact: nothing of one response leaked into the next.
    assert seen == dict(server.stats.outcomes)
    assert set(seen) == {"ok", "empty", "rate_limited", "server_error", "dropped", "malformed"}


def test_client_retries_ride_out_rate_limits(serve):
    server = serve(faults=Faults(rate_limit=0.5, retry_after=0.02, seed=3))
    client = client_for(server, max_retries=8)
    started = time.monotonic()
    for _ in range(20):
        assert ask(client).choices[0].finish_reason == "stop"
    stats = server.stats
    assert stats.outcomes["ok"] == 20 and stats.outcomes["rate_limited"] >= 5
    # The client slept the server's Retry-After, not its own 0.5 s+ backoff.
    assert time.monotonic() - started < 0.5 * stats.outcomes["rate_limited"]


# --------------------------------------------------------------------------- limits


def test_requests_per_minute_enforced(serve):
    server = serve(requests_per_minute=10)
    client = client_for(server)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    assert raw.headers["x-ratelimit-limit-requests"] == "10"
    assert raw.headers["x-ratelimit-remaining-requests"] == "9"
    ok, limited = 1, None
    for _ in range(15):
        try:
            ask(client)
            ok += 1
        except openai.RateLimitError as err:
            limited = err
            break
    assert ok == 10 and limited is not None  # the whole minute's budget, then no more
    retry_after = float(limited.response.headers["retry-after"])
    assert 3.0 < retry_after <= 6.0  # one request's worth of a 10/minute refill
    assert limited.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert server.stats.outcomes == {"ok": 10, "rate_limited": 1}


def test_tokens_per_minute_enforced(serve):
    server = serve(tokens_per_minute=100)
    client = client_for(server, max_retries=3)
    ask(client, max_tokens=60)
    with pytest.raises(openai.RateLimitError) as err:
        ask(client_for(server), max_tokens=60)
    assert 0 < float(err.value.response.headers["retry-after"]) <= 60
    # More than the whole minute's budget: the server says not to retry, and the client obeys.
    with pytest.raises(openai.RateLimitError) as err:
        ask(client, max_tokens=500)
    assert err.value.response.headers["x-should-retry"] == "false"
    assert server.stats.chat_requests == 3


def test_async_client_with_32_concurrent_requests(serve):
    server = serve(latency=0.1)

    async def run():
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0) as client:
            return await asyncio.gather(*(
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"question {i}"}])
                for i in range(32)))

    started = time.monotonic()
    answers = asyncio.run(run())
    elapsed = time.monotonic() - started
    assert [a.choices[0].message.content for a in answers] == [f"Echo: question {i}" for i in range(32)]
    assert server.stats.outcomes == {"ok": 32}
    assert elapsed < 32 * 0.1 / 2  # served concurrently, not one after another


def test_api_key_required_and_sent_only_in_headers(serve, tmp_path):
    secret = "sk-local-secret-4f9d"
    server = serve(api_key=secret)
    with pytest.raises(openai.AuthenticationError) as err:
        ask(client_for(server, api_key="sk-wrong"))
    assert secret not in json.dumps(err.value.body)
    client = client_for(server, api_key=secret)
    ask(client)
    (tmp_path / "in.jsonl").write_text('{"a": 1}\n')
    client.files.create(file=tmp_path / "in.jsonl", purpose="batch")
    assert server.stats.outcomes["unauthorized"] == 1
    assert server.authorizations == ["Bearer sk-wrong", f"Bearer {secret}", f"Bearer {secret}"]
    for record in server.requests:
        assert secret not in record.path and secret.encode() not in record.body
        assert all(secret not in value for name, value in record.headers.items() if name.lower() != "authorization")


# --------------------------------------------------------------------------- files


def test_file_upload_and_download_round_trip(serve, tmp_path):
    client = client_for(serve())
    data = "héllo\r\n--boundary-like line\nnull byte \x00 end".encode() + bytes(range(256))
    path = tmp_path / "blob.jsonl"
    path.write_bytes(data)
    uploaded = client.files.create(file=path, purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(data)
    assert uploaded.filename == "blob.jsonl" and uploaded.purpose == "batch"
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).content == data
    second = client.files.create(file=("x.jsonl", b"tail\n"), purpose="user_data")
    assert [f.id for f in client.files.list()] == [second.id, uploaded.id]
    assert [f.id for f in client.files.list(purpose="batch")] == [uploaded.id]
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_raw_http_keep_alive_and_chunked_bodies(serve):
    server = serve()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    # A rejected request's body must be consumed, or it would be read as the next request.
    conn.request("POST", "/v1/nowhere", body=b'{"padding": "' + b"x" * 5000 + b'"}')
    response = conn.getresponse()
    assert response.status == 404 and json.loads(response.read())["error"]["type"] == "invalid_request_error"
    body = json.dumps({"model": MODEL, "messages": HELLO}).encode()
    conn.request("POST", "/v1/chat/completions", body=iter([body[:10], body[10:]]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["choices"]
    conn.request("PUT", "/v1/files", body=b"{}")
    response = conn.getresponse()
    assert response.status == 404 and json.loads(response.read())["error"]["message"] == "Invalid URL (PUT /v1/files)"
    conn.close()


# --------------------------------------------------------------------------- batches


def batch_lines(n: int, url: str = "/v1/chat/completions") -> list[dict]:
    return [{"custom_id": f"req-{i}", "method": "POST", "url": url,
             "body": {"model": MODEL, "messages": [{"role": "user", "content": f"question number {i}"}]}}
            for i in range(n)]


def submit(client, tmp_path, lines: list[dict] | str):
    text = lines if isinstance(lines, str) else "".join(json.dumps(line) + "\n" for line in lines)
    path = tmp_path / f"batch-{time.monotonic_ns()}.jsonl"
    path.write_text(text)
    upload = client.files.create(file=path, purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                 completion_window="24h", metadata={"run": "test"})


def wait(client, batch_id: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled") or time.monotonic() > deadline:
            return batch
        time.sleep(0.02)


def read_jsonl(client, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_batch_completes_and_survives_a_client_restart(serve, tmp_path):
    server = serve(batch_delay=0.3)
    lines = batch_lines(20)
    first = client_for(server)
    created = submit(first, tmp_path, lines)
    assert created.status == "validating" and created.metadata == {"run": "test"}
    first.close()  # "restart": a new client knows only the batch id
    fresh = client_for(server)
    assert [b.id for b in fresh.batches.list()] == [created.id]
    batch = wait(fresh, created.id)
    assert batch.status == "completed" and batch.error_file_id is None
    assert batch.request_counts.total == batch.request_counts.completed == 20 and batch.request_counts.failed == 0
    assert batch.completed_at and batch.in_progress_at and batch.model == MODEL
    assert batch.usage.input_tokens == sum(count_tokens(l["body"]["messages"][0]["content"]) for l in lines)
    output = read_jsonl(fresh, batch.output_file_id)
    assert fresh.files.retrieve(batch.output_file_id).purpose == "batch_output"
    by_id = {line["custom_id"]: line for line in output}
    assert sorted(by_id) == sorted(line["custom_id"] for line in lines)
    for line in lines:
        result = by_id[line["custom_id"]]
        assert result["error"] is None and result["id"].startswith("batch_req_")
        assert result["response"]["status_code"] == 200
        content = result["response"]["body"]["choices"][0]["message"]["content"]
        assert content == echo_responder(line["body"])
    assert [line["custom_id"] for line in output] != [line["custom_id"] for line in lines]  # shuffled


def test_batch_request_errors_land_in_the_error_file(serve, tmp_path):
    server = serve(batch_delay=0.1, batch_faults=BatchFaults(request_error=0.3, seed=1))
    client = client_for(server)
    batch = wait(client, submit(client, tmp_path, batch_lines(20)).id)
    counts = batch.request_counts
    assert batch.status == "completed" and counts.total == 20 and 0 < counts.failed < 20
    assert counts.completed + counts.failed == 20
    ok = read_jsonl(client, batch.output_file_id)
    errors = read_jsonl(client, batch.error_file_id)
    assert len(ok) == counts.completed and len(errors) == counts.failed
    for line in errors:
        assert line["response"]["status_code"] == 500
        assert line["response"]["body"]["error"]["type"] == "server_error"
    assert sorted(line["custom_id"] for line in ok + errors) == sorted(f"req-{i}" for i in range(20))


def test_expired_batch_keeps_partial_output(serve, tmp_path):
    server = serve(batch_delay=0.1, batch_faults=BatchFaults(expire=True, expire_after=0.5))
    client = client_for(server)
    batch = wait(client, submit(client, tmp_path, batch_lines(20)).id)
    assert batch.status == "expired" and batch.expired_at
    assert (batch.request_counts.completed, batch.request_counts.failed) == (10, 10)
    assert len(read_jsonl(client, batch.output_file_id)) == 10
    expired = read_jsonl(client, batch.error_file_id)
    assert {line["error"]["code"] for line in expired} == {"batch_expired"}
    assert all(line["response"] is None for line in expired)


def test_invalid_batch_input_fails_the_batch(serve, tmp_path):
    client = client_for(serve(batch_delay=0.1))
    good = json.dumps(batch_lines(1)[0])
    batch = wait(client, submit(client, tmp_path, f"{good}\nthis is not json\n").id)
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    [error] = batch.errors.data
    assert error.code == "invalid_json_line" and error.line == 2
    wrong_url = batch_lines(2, url="/v1/embeddings")
    batch = wait(client, submit(client, tmp_path, wrong_url).id)
    assert batch.status == "failed" and batch.errors.data[0].code == "invalid_url"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")


def test_cancel_a_batch(serve, tmp_path):
    client = client_for(serve(batch_delay=0.5))
    batch = submit(client, tmp_path, batch_lines(5))
    assert client.batches.cancel(batch.id).status == "cancelling"
    assert wait(client, batch.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


# --------------------------------------------------------------------------- CLI


def test_cli_serves_until_interrupted():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bioinstruct.testing.openai_server", "--port", "0",
                             "--fault-empty-choices", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        base_url = line.split(" at ")[1].split()[0]
        answer = openai.OpenAI(base_url=base_url, api_key="anything", max_retries=0).chat.completions.create(
            model=MODEL, messages=HELLO)
        assert answer.choices == []
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "1 chat completions (empty=1)" in err
