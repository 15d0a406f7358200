"""The ``openai`` backend: the official async client against any OpenAI-compatible
``base_url``, request by request.

A token bucket on requests/min and tokens/min (a request counts its prompt plus
``max_tokens``, as providers count it); retries with exponential backoff and jitter on 429,
5xx, timeouts and dropped connections, honouring Retry-After; a cap on attempts per
request, after which the request is recorded in ``failures.jsonl`` and sent again on the
next run (never silently dropped). A request goes out only if its worst case fits the
budget beside the worst cases of those in flight; if it does not, the backend waits for
their real costs before deciding, so a run stops within one request's worst case of a cap.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Iterator

from .backend import Backend, OnFailure, OnResponse, openai_client
from .config import Request
from .ledger import ApiFatal, BudgetExhausted, Journal
from .limits import RateLimiter


class EmptyResponse(Exception):
    """A 200 answer without choices."""


def describe(exc: BaseException) -> str:
    """One line about an API error, without request headers (where the key travels)."""
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" {status}" if status else "") + f": {str(exc)[:300]}"


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


class LiveBackend(Backend):
    def run(self, journal: Journal, pending: Iterator[Request], on_response: OnResponse,
            on_failure: OnFailure | None) -> str:
        return asyncio.run(self._run(journal, pending, on_response, on_failure))

    async def _run(self, journal: Journal, pending: Iterator[Request], on_response: OnResponse,
                   on_failure: OnFailure | None) -> str:
        cfg = journal.cfg
        client = openai_client(cfg, asynchronous=True, max_retries=0)
        limiter = RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute)
        in_flight: dict[asyncio.Task, Request] = {}
        # Answers are handed on in the order they were appended to responses.jsonl, the order
        # a replay reads them in: what the caller decides is a function of that file alone.
        appended: list[dict] = []
        deferred: Request | None = None  # held back by the budget until answers come in
        stop: str | BudgetExhausted | None = None
        try:
            while True:
                while stop is None and len(in_flight) < cfg.concurrency:
                    request = next(pending, None) if deferred is None else deferred
                    deferred = None
                    if request is None:
                        stop = "exhausted"
                        break
                    try:
                        journal.check_budget(request, list(in_flight.values()))
                    except BudgetExhausted as e:
                        # Requests in flight usually cost far less than their worst case:
                        # wait for their answers and look again, stop only when none is left.
                        deferred = request
                        if not in_flight:
                            stop = e
                        break
                    task = asyncio.create_task(self._send(journal, client, limiter, request, appended))
                    in_flight[task] = request
                if not in_flight:
                    break
                finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                failed = []
                for task in sorted(finished, key=lambda t: in_flight[t].id):
                    request = in_flight.pop(task)
                    outcome = task.result()
                    if not isinstance(outcome, dict):
                        journal.fail(request, *outcome)
                        failed.append(request)
                for record in appended:
                    if stop != "done" and on_response(record):
                        stop = "done"
                appended.clear()
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
                journal.ledger.save()
        finally:
            for task in in_flight:
                task.cancel()
            await client.close()
        if isinstance(stop, BudgetExhausted):
            raise stop
        return stop or "exhausted"

    @staticmethod
    async def _send(journal: Journal, client, limiter: RateLimiter, request: Request,
                    appended: list[dict]) -> dict | tuple[str, int]:
        """One request with retries: the response record, or (error, attempts) when it gave up."""
        import openai

        cfg = journal.cfg
        tokens, _ = journal.pending_cost(request)
        error = ""
        for attempt in range(1, cfg.max_attempts + 1):
            await limiter.acquire(tokens)
            try:
                response = await client.chat.completions.create(
                    model=cfg.model, messages=request.messages, **cfg.sampling())
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
                    wait = random.uniform(0, min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1)))
                if attempt < cfg.max_attempts:
                    await asyncio.sleep(wait)
                continue
            choice = response.choices[0]
            usage = response.usage
            usage = ({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
                     if usage else {"prompt_tokens": 0, "completion_tokens": 0})
            record = journal.record(request, choice.message.content, choice.finish_reason, usage, attempt,
                                    response.id)
            appended.append(record)  # no await since the append to the file: the same order
            return record
        return error, cfg.max_attempts
