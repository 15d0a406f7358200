"""Paid LLM calls, made safe to interrupt: the client machinery of generate, classify and the judge.

Every answered request is appended to ``responses.jsonl`` (flush + fsync) *before* the
caller sees it; that file is the ledger of what was paid for. A restarted job replays it,
sends only the requests it does not hold, and so never pays twice for the same answer.

Backends (``llm.backend``):

* ``openai``: the official async client against any OpenAI-compatible ``base_url``; a
  token bucket on requests/min and tokens/min (a request counts its prompt plus
  ``max_tokens``, as providers count it), retries with exponential backoff and jitter
  on 429, 5xx, timeouts and dropped connections, honouring Retry-After; a cap on attempts
  per request, after which the request is recorded in ``failures.jsonl`` and sent again
  on the next run (never silently dropped).
* ``openai-batch``: the Batch API (half price): a chunk of requests is uploaded as JSONL,
  the batch id saved in ``batch.json``, results matched by ``custom_id``. A batch not done
  within ``batch_wait_seconds`` ends the run (BatchPending, status ``waiting``); the next
  run collects the saved batch instead of submitting again.
* ``offline``: a deterministic local function, for the quickstart and tests. Its answers
  are synthetic and every record says so (``backend: offline``).

Budgets (``llm.budget``) count every run of a stage. A request goes out only if its worst
case fits beside the worst cases of those in flight; if it does not, the engine waits for
their real costs before deciding, so a run stops within one request's worst case of a cap.

The API key is read from the environment variable named by ``llm.api_key_env`` and handed
to the client only; it is never written to a file, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from .errors import ConfigError, StageStopped, UserError
from .io import JsonlAppender, atomic_write_json, iter_jsonl, repair_jsonl

# USD per 1M tokens (list prices); extend or override in the config for your model.
DEFAULT_PRICES = {
    "gpt-4": {"prompt": 30.0, "completion": 60.0},
    "gpt-4-0613": {"prompt": 30.0, "completion": 60.0},
    "gpt-4-turbo": {"prompt": 10.0, "completion": 30.0},
    "gpt-4o": {"prompt": 2.5, "completion": 10.0},
    "gpt-4o-mini": {"prompt": 0.15, "completion": 0.6},
    "offline": {"prompt": 0.0, "completion": 0.0},
}


# A cap nobody chose is still a cap: a typo in a target or a loop that never accepts
# anything stops here, not at the card's limit. A full 25,005-instruction GPT-4 run costs
# several hundred dollars; set llm.budget.max_cost to what you mean to spend.
DEFAULT_MAX_COST = 100.0


@dataclasses.dataclass
class Budget:
    """Limits for one stage's calls, counted over all runs of it (None: no limit)."""
    max_requests: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = DEFAULT_MAX_COST  # USD, from the price table


# LLMConfig keys that decide how requests are sent and paid for, not what comes back: a stage
# resumes or skips across a change in them (a raised budget continues a stopped run).
TRANSPORT_KEYS = ("api_key_env", "timeout", "max_attempts", "backoff_base", "backoff_max",
                  "max_consecutive_failures", "concurrency", "requests_per_minute", "tokens_per_minute",
                  "batch_poll_seconds", "batch_wait_seconds", "batch_discount", "prices", "budget")


@dataclasses.dataclass
class LLMConfig:
    backend: Literal["openai", "openai-batch", "offline"] = "offline"
    model: str = "gpt-4"
    base_url: str | None = None  # None: the client's default (OPENAI_BASE_URL or api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"  # the *name* of the variable; the key never enters a config
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 3072
    timeout: float | None = None  # seconds per attempt; None: 30 s + max_tokens at 20 tokens/s
    max_attempts: int = 6  # per request and run; then failures.jsonl, retried next run
    backoff_base: float = 1.0  # seconds; doubles per attempt, full jitter, capped below
    backoff_max: float = 60.0
    max_consecutive_failures: int = 20  # an endpoint that fails this many requests in a row stops the run
    concurrency: int = 16
    requests_per_minute: int = 500
    tokens_per_minute: int = 150_000
    batch_size: int = 500  # requests per Batch API job
    batch_poll_seconds: float = 30.0
    # How long a job waits for a submitted batch before it ends (manifest status `waiting`)
    # and leaves the collecting to the next run: 0 looks once. Batches take minutes to 24 h.
    batch_wait_seconds: float = 0.0
    batch_discount: float = 0.5  # the Batch API's price factor
    prices: dict[str, dict[str, float]] = dataclasses.field(default_factory=lambda: dict(DEFAULT_PRICES))
    budget: Budget = dataclasses.field(default_factory=Budget)

    def __post_init__(self):
        for name in ("concurrency", "requests_per_minute", "tokens_per_minute", "max_attempts", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.batch_wait_seconds < 0:
            raise ValueError("batch_wait_seconds must be >= 0 (0: look once, then end the job)")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be > 0 (or null: 30 s + max_tokens at 20 tokens/s)")
        for model, price in self.prices.items():
            if set(price) != {"prompt", "completion"}:
                raise ValueError(f"prices.{model} needs exactly 'prompt' and 'completion' (USD per 1M tokens)")

    def attempt_timeout(self) -> float:
        """Long enough for a full-length answer from a slow endpoint: one that times out is
        paid for and then asked again."""
        return self.timeout if self.timeout is not None else 30.0 + self.max_tokens / 20.0

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


@dataclasses.dataclass
class Request:
    id: str  # stable across runs: the resume key and the Batch API custom_id
    messages: list[dict[str, str]]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # kept with the response


class BudgetExhausted(StageStopped):
    """A budget limit stopped the run; the state is saved and a re-run continues."""


class BatchPending(StageStopped):
    """A Batch API batch is still running at the provider; its id is saved in batch.json.
    The job ends rather than hold an allocation for hours: the next run collects it."""
    manifest_status = "waiting"


class ApiFatal(UserError):
    """An error no retry can fix (bad key, unknown model, malformed request)."""


def estimate_tokens(text: str) -> int:
    """A deliberately high estimate (≈3 characters per token) for budgets and the
    tokens/min bucket: overestimating only slows a run, underestimating overspends."""
    return len(text) // 3 + 1


def preflight(cfg: LLMConfig) -> None:
    """What must hold before anything is sent; stages call it before doing any work."""
    if cfg.backend == "offline":
        return
    if not os.environ.get(cfg.api_key_env):
        raise ConfigError(f"llm.backend={cfg.backend} needs an API key in the environment variable "
                          f"{cfg.api_key_env} (llm.api_key_env names another; llm.backend=offline needs none)")
    if cfg.budget.max_cost is not None and cfg.model not in cfg.prices:
        raise ConfigError(f"llm.budget.max_cost={cfg.budget.max_cost:g} (USD) needs a price but llm.prices has no "
                          f"entry for model '{cfg.model}': add llm.prices.{cfg.model}={{prompt: X, completion: Y}} "
                          f"(USD per 1M tokens), or set llm.budget.max_cost=null for a server that costs nothing")


class Ledger:
    """Totals of what was spent, kept in ``usage.json`` and rebuilt from the files on resume."""

    def __init__(self, cfg: LLMConfig, path: Path):
        self.cfg, self.path = cfg, path
        self.requests = self.prompt_tokens = self.completion_tokens = 0
        self.retries = self.failures = 0
        self.cost = 0.0
        self.extra: dict[str, Any] = {}

    def price(self, model: str) -> dict[str, float] | None:
        return self.cfg.prices.get(model)

    def request_cost(self, model: str, prompt: int, completion: int, backend: str) -> float:
        price = self.price(model)
        if price is None or backend == "offline":
            return 0.0
        factor = self.cfg.batch_discount if backend == "openai-batch" else 1.0
        return factor * (prompt * price["prompt"] + completion * price["completion"]) / 1e6

    def add_response(self, record: dict) -> None:
        u = record["usage"]
        self.requests += 1
        self.retries += record.get("attempts", 1) - 1
        self.prompt_tokens += u["prompt_tokens"]
        self.completion_tokens += u["completion_tokens"]
        self.cost += self.request_cost(record["model"], u["prompt_tokens"], u["completion_tokens"],
                                       record["backend"])

    def add_failure(self, record: dict) -> None:
        self.failures += 1
        self.retries += record.get("attempts", 1) - 1

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def limit_reached(self, pending: list[tuple[int, float]], next_one: tuple[int, float]) -> str | None:
        """The first budget limit that the next request could pass, counting the requests in
        flight (``pending``) and the next one at their worst case, (tokens, cost) each: the
        prompt plus ``max_tokens``. The reason states what was really spent so far."""
        b = self.cfg.budget
        tokens = self.tokens + sum(t for t, _ in pending) + next_one[0]
        cost = self.cost + sum(c for _, c in pending) + next_one[1]
        if b.max_requests is not None and self.requests + len(pending) + 1 > b.max_requests:
            return f"max_requests ({self.requests} of {b.max_requests} used)"
        if b.max_tokens is not None and tokens > b.max_tokens:
            return (f"max_tokens ({self.tokens:,} of {b.max_tokens:,} used; the next request "
                    f"may use up to {next_one[0]:,})")
        if b.max_cost is not None and cost > b.max_cost:
            return (f"max_cost (${self.cost:.2f} of ${b.max_cost:.2f} spent; the next request "
                    f"may cost up to ${next_one[1]:.2f})")
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "retries": self.retries,
                "failed_requests": self.failures, "cost_usd": round(self.cost, 6),
                "model": self.cfg.model, "backend": self.cfg.backend, **self.extra}

    def save(self) -> None:
        atomic_write_json(self.path, self.snapshot())


class RateLimiter:
    """Two token buckets (requests and tokens per minute) with a shared pause for Retry-After.

    Bucket capacity is one second's worth, so no 60-second window ever sees much more
    than the limit (a full minute's burst at start would double it and earn 429s). A
    request costs its prompt plus its ``max_tokens``, as providers count it; one larger
    than the bucket waits for a full bucket and leaves it in debt, so the long-run rate
    stays the limit whatever the request size.
    """

    def __init__(self, requests_per_minute: int, tokens_per_minute: int):
        self.rates = (requests_per_minute / 60.0, tokens_per_minute / 60.0)
        self.capacity = (max(1.0, self.rates[0]), max(float(tokens_per_minute) / 60.0, 1.0))
        self.level = list(self.capacity)
        self.stamp = time.monotonic()
        self.paused_until = 0.0
        self.lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        elapsed, self.stamp = now - self.stamp, now
        self.level = [min(c, lv + r * elapsed) for c, lv, r in zip(self.capacity, self.level, self.rates)]

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def acquire(self, tokens: int) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                if now < self.paused_until:
                    await asyncio.sleep(self.paused_until - now)
                    continue
                self._refill(now)
                need = min(tokens, self.capacity[1])
                if self.level[0] >= 1 and self.level[1] >= need:
                    self.level[0] -= 1
                    self.level[1] -= tokens
                    return
                wait = max((1 - self.level[0]) / self.rates[0], (need - self.level[1]) / self.rates[1])
                await asyncio.sleep(max(wait, 0.001))


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None
    return None


def _is_retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                        openai.InternalServerError, EmptyResponse)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    # A 200 whose body is not JSON reaches us as a decoding error: transient.
    return isinstance(exc, (json.JSONDecodeError, ValueError))


class EmptyResponse(Exception):
    """A 200 answer without choices."""


def describe(exc: BaseException) -> str:
    """One line about an API error, without request headers (where the key travels)."""
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" {status}" if status else "") + f": {str(exc)[:300]}"


class Engine:
    """Sends requests through one backend, appending every answer to responses.jsonl.

        engine = Engine(cfg, stage_dir, responder=offline_fn)
        for record in engine.replay(): ...            # what earlier runs already paid for
        stop = engine.run(requests, on_response)       # on_response(record) -> True to stop
    """

    def __init__(self, cfg: LLMConfig, out_dir: Path, responder: Callable[[dict], str] | None = None):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.responses_path = self.out_dir / "responses.jsonl"
        self.failures_path = self.out_dir / "failures.jsonl"
        self.responder = responder
        self.ledger = Ledger(cfg, self.out_dir / "usage.json")
        self.done: set[str] = set()
        self.consecutive_failures = 0
        self._appended: list[dict] | None = None  # answers not yet handed on (live backend)
        if cfg.backend == "offline" and responder is None:
            raise ConfigError("llm.backend=offline needs a local responder; this stage has none")

    # ---- resume -------------------------------------------------------------------------
    def replay(self) -> Iterator[dict]:
        """The responses of earlier runs, in file order; also rebuilds the ledger."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        repair_jsonl(self.responses_path)
        repair_jsonl(self.failures_path)
        if self.failures_path.exists():
            for record in iter_jsonl(self.failures_path):
                self.ledger.add_failure(record)
        if not self.responses_path.exists():
            return
        for record in iter_jsonl(self.responses_path):
            if record["id"] in self.done:  # a batch result already saved before a kill
                continue
            self.done.add(record["id"])
            self.ledger.add_response(record)
            yield record

    # ---- sending ------------------------------------------------------------------------
    def run(self, requests: Iterable[Request], on_response: Callable[[dict], bool],
            on_failure: Callable[[Request], bool] | None = None) -> str:
        """Send the requests not yet answered; return why it stopped: 'done' (a callback said
        so), 'exhausted' (no more requests) or raise BudgetExhausted / ApiFatal.

        ``on_response`` sees each answer after it is in responses.jsonl, in that file's order;
        ``on_failure`` sees each request that ran out of attempts (after failures.jsonl).
        Once a callback returns True, nothing more is sent and nothing more is handed on."""
        preflight(self.cfg)
        pending = (r for r in requests if r.id not in self.done)
        self._next: Request | None = None
        with JsonlAppender(self.responses_path) as responses, JsonlAppender(self.failures_path) as failures:
            self._responses, self._failures = responses, failures
            try:
                if self.cfg.backend == "offline":
                    return self._run_offline(pending, on_response)
                if self.cfg.backend == "openai":
                    return asyncio.run(self._run_live(pending, on_response, on_failure))
                from .llm_batch import run_batches
                return run_batches(self, pending, on_response, on_failure)
            finally:
                self.ledger.save()

    def record(self, request: Request, content: str | None, finish_reason: str | None,
               usage: dict[str, int], attempts: int, response_id: str | None) -> dict:
        """Append one answer to responses.jsonl (durably) and count it."""
        # Offline answers are synthetic; they must never pass for the configured model's.
        model = "offline" if self.cfg.backend == "offline" else self.cfg.model
        record = {"id": request.id, "backend": self.cfg.backend, "model": model,
                  "params": self.cfg.sampling(), "meta": request.meta, "content": content,
                  "finish_reason": finish_reason, "usage": usage, "attempts": attempts,
                  "response_id": response_id, "time": round(time.time(), 3)}
        if self.cfg.backend == "offline":
            record["synthetic"] = True
        self._responses.write(record)
        if self._appended is not None:
            self._appended.append(record)
        self.done.add(request.id)
        self.ledger.add_response(record)
        self.consecutive_failures = 0
        return record

    def fail(self, request: Request, error: str, attempts: int) -> None:
        record = {"id": request.id, "error": error, "attempts": attempts, "time": round(time.time(), 3)}
        self._failures.write(record)
        self.ledger.add_failure(record)
        self.consecutive_failures += 1
        print(f"request {request.id} failed after {attempts} attempts ({error}); "
              f"it will be sent again on the next run", file=sys.stderr)
        if self.consecutive_failures >= self.cfg.max_consecutive_failures:
            raise ApiFatal(f"{self.consecutive_failures} requests in a row failed; last error: {error}. "
                           f"Check llm.base_url and the endpoint, then re-run to continue.")

    def pending_cost(self, request: Request) -> tuple[int, float]:
        prompt = sum(estimate_tokens(m["content"]) for m in request.messages)
        tokens = prompt + self.cfg.max_tokens
        return tokens, self.ledger.request_cost(self.cfg.model, prompt, self.cfg.max_tokens, self.cfg.backend)

    def check_budget(self, request: Request, in_flight: list[Request]) -> None:
        reason = self.ledger.limit_reached([self.pending_cost(r) for r in in_flight], self.pending_cost(request))
        if reason:
            raise BudgetExhausted(f"budget limit reached: {reason}; state saved, raise the limit "
                                  f"(llm.budget.*) and re-run the same command to continue")

    def _run_offline(self, pending: Iterator[Request], on_response) -> str:
        for request in pending:
            self.check_budget(request, [])
            body = {"model": self.cfg.model, "messages": request.messages, **self.cfg.sampling()}
            content = self.responder(body)
            prompt = sum(estimate_tokens(m["content"]) for m in request.messages)
            usage = {"prompt_tokens": prompt, "completion_tokens": estimate_tokens(content)}
            record = self.record(request, content, "stop", usage, 1, None)
            if on_response(record):
                return "done"
        return "exhausted"

    async def _run_live(self, pending: Iterator[Request], on_response, on_failure) -> str:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(api_key=os.environ[self.cfg.api_key_env], base_url=self.cfg.base_url,
                             timeout=self.cfg.attempt_timeout(), max_retries=0)
        limiter = RateLimiter(self.cfg.requests_per_minute, self.cfg.tokens_per_minute)
        in_flight: dict[asyncio.Task, Request] = {}
        # Answers are handed on in the order they were appended to responses.jsonl, the order
        # a replay reads them in: what the caller decides is a function of that file alone.
        self._appended = []
        stop: str | BudgetExhausted | None = None
        try:
            while True:
                while stop is None and len(in_flight) < self.cfg.concurrency:
                    request = next(pending, None) if self._next is None else self._next
                    self._next = None
                    if request is None:
                        stop = "exhausted"
                        break
                    try:
                        self.check_budget(request, list(in_flight.values()))
                    except BudgetExhausted as e:
                        # Requests in flight usually cost far less than their worst case:
                        # wait for their answers and look again, stop only when none is left.
                        self._next = request
                        if not in_flight:
                            stop = e
                        break
                    task = asyncio.create_task(self._send(client, limiter, request))
                    in_flight[task] = request
                if not in_flight:
                    break
                finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                failed = []
                for task in sorted(finished, key=lambda t: in_flight[t].id):
                    request = in_flight.pop(task)
                    outcome = task.result()
                    if not isinstance(outcome, dict):
                        self.fail(request, *outcome)
                        failed.append(request)
                for record in self._appended:
                    if stop != "done" and on_response(record):
                        stop = "done"
                self._appended.clear()
                for request in failed:
                    if stop != "done" and on_failure is not None and on_failure(request):
                        stop = "done"
                if stop == "done":
                    # Answers still coming would be thrown away: stop asking (a request on
                    # the wire may still be billed; waiting for it would not change that).
                    for task in in_flight:
                        task.cancel()
                    await asyncio.gather(*in_flight, return_exceptions=True)
                    in_flight.clear()
                self.ledger.save()
        finally:
            for task in in_flight:
                task.cancel()
            self._appended = None
            await client.close()
        if isinstance(stop, BudgetExhausted):
            raise stop
        return stop or "exhausted"

    async def _send(self, client, limiter: RateLimiter, request: Request) -> dict | tuple[str, int]:
        """One request with retries: the response record, or (error, attempts) when it gave up."""
        import openai

        tokens, _ = self.pending_cost(request)
        error = ""
        for attempt in range(1, self.cfg.max_attempts + 1):
            await limiter.acquire(tokens)
            try:
                response = await client.chat.completions.create(
                    model=self.cfg.model, messages=request.messages, **self.cfg.sampling())
                if not getattr(response, "choices", None):
                    raise EmptyResponse("the response has no choices (or is not a chat completion)")
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError,
                    openai.BadRequestError) as e:
                raise ApiFatal(f"the API refused the request: {describe(e)}") from None
            except Exception as e:  # noqa: BLE001 - sorted into retryable or not just below
                if not _is_retryable(e):
                    raise
                error = describe(e)
                wait = _retry_after(e)
                if wait is not None:
                    limiter.pause(wait)
                else:
                    wait = random.uniform(0, min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (attempt - 1)))
                if attempt < self.cfg.max_attempts:
                    await asyncio.sleep(wait)
                continue
            choice = response.choices[0]
            usage = response.usage
            usage = ({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
                     if usage else {"prompt_tokens": 0, "completion_tokens": 0})
            return self.record(request, choice.message.content, choice.finish_reason, usage, attempt,
                               response.id)
        return error, self.cfg.max_attempts
