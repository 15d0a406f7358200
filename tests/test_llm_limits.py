"""The live backend's limits, measured where a provider measures them: at the server.

Requests/min and tokens/min (a request costs its prompt plus max_tokens), budgets reached
within one request's worst-case cost, and the usage ledger, all through the real openai
client over loopback against bioinstruct.testing.openai_server."""

import asyncio
import itertools
import json
import re
import time
from pathlib import Path

import pytest

from bioinstruct.io.rows import read_jsonl
from bioinstruct.llm import BudgetExhausted, Engine, LLMConfig, RateLimiter, Request
from bioinstruct.testing.openai_server import Faults, OpenAIServer

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-limits")


def pings():
    return (Request(f"r{i:05d}", [{"role": "user", "content": "ping"}]) for i in itertools.count())


def fast(server, **kw) -> LLMConfig:
    """No rate limit in the way: these tests are about other limits."""
    return LLMConfig(**({"backend": "openai", "base_url": server.base_url, "timeout": 5.0,
                         "requests_per_minute": 60_000, "tokens_per_minute": 10**9} | kw))


def run_for(engine: Engine, seconds: float, min_answers: int = 0) -> None:
    """Run until `seconds` have passed and at least `min_answers` were recorded: a loaded
    machine makes the run longer, never the measurement shorter."""
    start = time.monotonic()
    engine.run(pings(), lambda record: time.monotonic() - start >= seconds and engine.ledger.requests >= min_answers)


@pytest.mark.parametrize("bound", ["requests", "tokens"])
def test_sustained_rate_within_5_percent_of_the_limit_at_the_server(tmp_path, bound):
    # 20 requests/s, or 4,000 tokens/s of 200-token requests (20 requests/s): each the
    # binding limit in its case, with the other far away. The server enforces the same
    # limit as the client, with a whole minute's burst allowed, as providers do.
    rpm, tpm, max_tokens = (1200, 10**9, 16) if bound == "requests" else (60_000, 240_000, 199)
    with OpenAIServer(lambda body: "pong", latency=0.05, requests_per_minute=rpm, tokens_per_minute=tpm) as server:
        cfg = LLMConfig(backend="openai", base_url=server.base_url, max_tokens=max_tokens, concurrency=16,
                        requests_per_minute=rpm, tokens_per_minute=tpm, timeout=5.0, backoff_base=0.05)
        run_for(Engine(cfg, tmp_path), seconds=6.0, min_answers=60)
        sent_rpm, sent_tpm = server.admitted_rates(warmup=1.0)
        stats = server.stats
    assert stats.outcomes["rate_limited"] == 0
    fraction = sent_rpm / rpm if bound == "requests" else sent_tpm / tpm
    print(f"{bound}/min at the server: {fraction:.3f} of the limit")
    assert 0.95 <= fraction <= 1.05, fraction


def test_a_request_larger_than_the_bucket_is_charged_in_full():
    # tokens_per_minute=60,000 is a 1,000-token bucket refilled at 1,000/s; 1,500-token
    # requests (prompt + max_tokens) can go once per 1.5 s, not once per second.
    async def three():
        limiter = RateLimiter(60_000, 60_000)
        start = time.monotonic()
        for _ in range(3):
            await limiter.acquire(1500)
        return time.monotonic() - start

    assert asyncio.run(three()) >= 2.9


def spent(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "usage.json").read_text())


def test_cost_cap_reached_within_one_request_and_the_message_states_the_spend(tmp_path):
    with OpenAIServer(lambda body: "word " * 600) as server:  # ~780 of 3,072 tokens: worst case is 4x
        cfg = fast(server, concurrency=16)
        cfg.budget.max_cost = 1.0
        with pytest.raises(BudgetExhausted) as e:
            Engine(cfg, tmp_path).run(pings(), lambda record: False)
    usage = spent(tmp_path)
    worst = float(re.search(r"the next request may cost up to \$([\d.]+)", str(e.value)).group(1))
    assert f"${usage['cost_usd']:.2f} of $1.00 spent" in str(e.value)
    assert 1.0 - worst <= usage["cost_usd"] <= 1.0
    assert usage["requests"] > 16  # not one wave of worst cases


def test_request_cap_is_reached_exactly(tmp_path):
    with OpenAIServer(lambda body: "pong") as server:
        cfg = fast(server, concurrency=8)
        cfg.budget.max_requests = 13
        with pytest.raises(BudgetExhausted, match=r"max_requests \(13 of 13 used\)"):
            Engine(cfg, tmp_path).run(pings(), lambda record: False)
        assert server.stats.outcomes["ok"] == 13
    assert len(read_jsonl(tmp_path / "responses.jsonl")) == 13


def test_nothing_is_sent_or_retried_after_the_caller_stops(tmp_path):
    # Every other answer fails on the wire; the caller stops at its 10th answer.
    faults = Faults(server_error=0.3, drop=0.2, seed=4)
    with OpenAIServer(lambda body: "pong", faults, latency=0.3) as server:
        cfg = fast(server, concurrency=8, backoff_base=0.2, backoff_max=0.4)
        engine = Engine(cfg, tmp_path)
        handed = []
        engine.run(pings(), lambda record: handed.append(record) or len(handed) >= 10)
        sent_at_stop = server.stats.chat_requests
        time.sleep(1.0)  # longer than any backoff: a retry would have been sent by now
        sent_later = server.stats.chat_requests
    assert len(handed) == 10 and sent_later == sent_at_stop
    # Answers that came in the same instant as the 10th are recorded; none is awaited after.
    assert len(read_jsonl(tmp_path / "responses.jsonl")) < 10 + 8


def test_default_timeout_fits_a_full_answer_at_20_tokens_per_second():
    cfg = LLMConfig()
    assert cfg.max_tokens == 3072 and cfg.attempt_timeout() >= 3072 / 20
    assert LLMConfig(timeout=7.0).attempt_timeout() == 7.0
