"""The fake chat-completions endpoint of :class:`~bioinstruct.testing.openai_server.OpenAIServer`:
answers from a *responder*, enforced rate limits, injected faults, and the OpenAI wire format
(ids, error bodies, rate-limit headers) that the files and batches endpoints share.

Token counts are an approximation, not a tokenizer: ``round(words * 1.3)`` for each text
(:func:`count_tokens`), summed over the message contents for the prompt. Limits
(``requests_per_minute``, ``tokens_per_minute``) are token buckets refilled continuously,
as the real API enforces them: a burst may use the whole minute's budget, then requests
are refused with a 429 whose ``Retry-After`` says when the next one fits. A request costs
its prompt tokens plus its ``max_tokens`` against the token budget, as in the real API.
Only chat completions count against the limits.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from .http_server import Reply

log = logging.getLogger(__name__)

Responder = Callable[[dict], str]
"""Receives a chat-completions request body; returns the assistant's text."""

CHAT_PATH = "/v1/chat/completions"


# --------------------------------------------------------------------------- text


def count_tokens(text: str | None) -> int:
    """Approximate token count: whitespace words x 1.3, rounded (English averages ~1.3)."""
    if not text:
        return 0
    return round(len(text.split()) * 1.3)


def message_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or a list of parts (``{"type": "text"}``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return str(content)


def prompt_tokens(body: dict) -> int:
    return sum(count_tokens(message_text(m.get("content"))) for m in body.get("messages", []) if isinstance(m, dict))


def echo_responder(body: dict) -> str:
    """The default answer: deterministic, short, and visibly about the last user message."""
    users = [m for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    words = message_text(users[-1].get("content")).split() if users else []
    return "Echo: " + " ".join(words[:24]) if words else "Echo."


_WORD = re.compile(r"\S+")


def _cut_to_tokens(text: str, limit: int) -> str:
    # Keep the longest prefix of whole words that counts as at most `limit` tokens, and keep
    # its original whitespace so a caller comparing prefixes sees the model's own text.
    keep = int(limit / 1.3) + 1
    while keep > 0 and round(keep * 1.3) > limit:
        keep -= 1
    if keep == 0:
        return ""
    ends = [m.end() for m in _WORD.finditer(text)]
    return text[: ends[keep - 1]] if keep <= len(ends) else text


# --------------------------------------------------------------------------- configuration


@dataclass
class Faults:
    """Per-request fault probabilities for ``/v1/chat/completions``.

    One draw from a seeded RNG picks at most one fault per request, so the rates are
    exclusive and must sum to at most 1. Sequential clients see the same faults for the
    same seed; concurrent clients see the same rates in a different order.
    """

    rate_limit: float = 0.0  # 429 + Retry-After: `retry_after` seconds, OpenAI error body
    server_error: float = 0.0  # 500 or 503, picked at random
    slow: float = 0.0  # answer only after `slow_seconds` (set the client timeout below it)
    drop: float = 0.0  # close the connection without any response
    malformed: float = 0.0  # 200, Content-Type application/json, body cut in the middle
    empty_choices: float = 0.0  # 200 with "choices": []
    truncated: float = 0.0  # finish_reason "length", content cut at a random character
    content_filter: float = 0.0  # finish_reason "content_filter", content null
    seed: int = 0
    slow_seconds: float = 5.0
    retry_after: float = 0.05

    KINDS = ("rate_limit", "server_error", "slow", "drop", "malformed", "empty_choices", "truncated",
             "content_filter")

    def __post_init__(self) -> None:
        rates = [getattr(self, k) for k in self.KINDS]
        if any(not 0.0 <= r <= 1.0 for r in rates):
            raise ValueError(f"fault probabilities must lie in [0, 1]: {dict(zip(self.KINDS, rates))}")
        if sum(rates) > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities sum to {sum(rates):.3f} > 1")


# Stats.outcomes key for each fault.
_OUTCOME = {"rate_limit": "rate_limited", "server_error": "server_error", "slow": "slow", "drop": "dropped",
            "malformed": "malformed", "empty_choices": "empty", "truncated": "truncated",
            "content_filter": "content_filter"}


@dataclass
class Stats:
    """Counts since the server started; ``OpenAIServer.stats`` returns a copy.

    ``outcomes`` counts chat completions by outcome (``ok``, ``rate_limited``,
    ``server_error``, ``slow``, ``dropped``, ``malformed``, ``empty``, ``truncated``,
    ``content_filter``, ``bad_request``, ``responder_error``) plus ``unauthorized`` for
    any request refused for its key. Tokens are those served in 200 answers.
    """

    requests: int = 0  # HTTP requests of any kind
    chat_requests: int = 0
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# --------------------------------------------------------------------------- the OpenAI wire format


def new_id(prefix: str, n: int = 24) -> str:
    return prefix + uuid.uuid4().hex[:n]


def api_error(message: str, type_: str = "invalid_request_error", code: str | None = None,
              param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _duration(seconds: float) -> str:
    # The x-ratelimit-reset-* headers use Go's duration syntax ("20ms", "1.5s", "6m0s").
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


def _retry_after_headers(seconds: float) -> dict[str, str]:
    # The client prefers retry-after-ms and accepts a decimal retry-after; a 0 there would
    # make it fall back to its own exponential backoff, so never round down to 0.
    ms = max(1, math.ceil(seconds * 1000))
    return {"retry-after": f"{ms / 1000:.3f}".rstrip("0").rstrip("."), "retry-after-ms": str(ms)}


class _Bucket:
    """A token bucket: `capacity` units, refilled at capacity per minute, continuously."""

    def __init__(self, capacity: int) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / 60.0
        self.level = float(capacity)
        self.updated = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` fits (0 if it fits now; inf if it never can)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    def reset_in(self) -> float:
        return (self.capacity - self.level) / self.rate


# --------------------------------------------------------------------------- the endpoint


class ChatAPI:
    """``POST /v1/chat/completions``: its answers, limits, faults and counts (see
    :class:`~bioinstruct.testing.openai_server.OpenAIServer` for the arguments).
    ``stopping``: set when the server stops; slow answers wait on it."""

    def __init__(self, responder: Responder | None, faults: Faults | None, latency: float,
                 requests_per_minute: int | None, tokens_per_minute: int | None,
                 stopping: threading.Event) -> None:
        self.responder = responder or echo_responder
        self.faults = faults or Faults()
        self.latency = latency
        self._stopping = stopping
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._buckets = {name: _Bucket(limit) for name, limit in
                         (("requests", requests_per_minute), ("tokens", tokens_per_minute)) if limit}
        self._stats = Stats()
        self._admissions: list[tuple[float, int]] = []

    @property
    def stats(self) -> Stats:
        with self._lock:
            return dataclasses.replace(self._stats, outcomes=collections.Counter(self._stats.outcomes))

    @property
    def admissions(self) -> list[tuple[float, int]]:
        with self._lock:
            return list(self._admissions)

    def count_request(self) -> None:
        """One HTTP request of any kind."""
        with self._lock:
            self._stats.requests += 1

    def count(self, outcome: str) -> None:
        with self._lock:
            self._stats.outcomes[outcome] += 1

    def handle(self, raw: bytes) -> Reply:
        """``POST /v1/chat/completions`` with body ``raw``."""
        with self._lock:
            self._stats.chat_requests += 1
        body, problem = self.parse(raw)
        if problem:
            self.count("bad_request")
            return Reply.json(problem, 400)
        n_prompt = prompt_tokens(body)
        cost = n_prompt + int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
        wait, limit_headers = self._admit(cost)
        if wait:
            self.count("rate_limited")
            return self._rate_limited(wait, limit_headers)
        with self._lock:
            self._admissions.append((time.monotonic(), cost))
        # Faults are drawn after admission: a request that fails still used its slot, as an
        # answered-with-an-error request does on the real API.
        with self._lock:
            fault = self._draw(self._rng, self.faults)
            jitter = self._rng.random()
        f = self.faults
        if fault == "rate_limit":
            self.count("rate_limited")
            return Reply.json(api_error("Rate limit reached for requests (injected fault). Please try again in "
                                        f"{f.retry_after}s.", "requests", "rate_limit_exceeded"), 429,
                               {**limit_headers, **_retry_after_headers(f.retry_after)})
        if fault == "server_error":
            self.count("server_error")
            if jitter < 0.5:
                return Reply.json(api_error("The server had an error while processing your request. Sorry about "
                                            "that!", "server_error"), 500)
            return Reply.json(api_error("The server is overloaded or not ready yet.", "server_error"), 503)
        if fault == "drop":
            self.count("dropped")
            return Reply(drop=True)
        if fault == "slow":
            # Counted now: the client usually gives up before the answer exists.
            self.count("slow")
            if self._stopping.wait(f.slow_seconds):
                return Reply(drop=True)
        if self.latency and self._stopping.wait(self.latency):
            return Reply(drop=True)
        try:
            completion, n_completion = self.complete(body, n_prompt, fault, jitter)
        except Exception as exc:
            self.count("responder_error")
            log.exception("responder failed")
            return Reply.json(api_error(f"The responder failed: {exc!r}", "server_error"), 500)
        if fault != "slow":
            self.count(_OUTCOME.get(fault, "ok"))
        if fault == "malformed":
            # Cut the JSON in the middle, as a proxy that drops a connection mid-body would.
            text = json.dumps(completion)
            return Reply(200, text[: len(text) // 2].encode(), limit_headers)
        with self._lock:
            self._stats.prompt_tokens += n_prompt
            self._stats.completion_tokens += n_completion
        return Reply.json(completion, 200, limit_headers)

    @staticmethod
    def parse(raw: bytes) -> tuple[dict, dict | None]:
        try:
            body = json.loads(raw)
        except ValueError:
            return {}, api_error("We could not parse the JSON body of your request. (HINT: This likely means you "
                                 "aren't using your HTTP library correctly.)")
        if not isinstance(body, dict):
            return {}, api_error("The request body must be a JSON object.")
        if not body.get("model"):
            return body, api_error("You must provide a model parameter.", param="model")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return body, api_error("Missing required parameter: 'messages'.", param="messages",
                                   code="missing_required_parameter")
        if body.get("stream"):
            return body, api_error("This test server does not stream; call without stream=True.", param="stream")
        return body, None

    @staticmethod
    def _draw(rng: random.Random, faults: Faults) -> str | None:
        u, edge = rng.random(), 0.0
        for kind in Faults.KINDS:
            edge += getattr(faults, kind)
            if u < edge:
                return kind
        return None

    def complete(self, body: dict, n_prompt: int, fault: str | None, jitter: float) -> tuple[dict, int]:
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        choices = []
        for index in range(0 if fault == "empty_choices" else max(1, int(body.get("n") or 1))):
            text: str | None = self.responder(body)
            if not isinstance(text, str):
                raise TypeError(f"the responder returned {type(text).__name__}, not str")
            finish = "stop"
            if limit is not None and count_tokens(text) > int(limit):
                text, finish = _cut_to_tokens(text, int(limit)), "length"
            if fault == "truncated":
                text, finish = text[: int(jitter * len(text))], "length"
            elif fault == "content_filter":
                text, finish = None, "content_filter"
            choices.append({"index": index, "message": {"role": "assistant", "content": text, "refusal": None,
                                                        "annotations": []},
                            "logprobs": None, "finish_reason": finish})
        n_completion = sum(count_tokens(c["message"]["content"]) for c in choices)
        completion = {"id": new_id("chatcmpl-", 29), "object": "chat.completion", "created": int(time.time()),
                      "model": body["model"], "choices": choices,
                      "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                                "total_tokens": n_prompt + n_completion},
                      "service_tier": "default", "system_fingerprint": "fp_local_test"}
        return completion, n_completion

    # ---- enforced limits

    def _admit(self, cost: int) -> tuple[float, dict[str, str]]:
        """(0, headers) and the request is charged, or (seconds to wait, headers)."""
        if not self._buckets:
            return 0.0, {}
        amounts = {"requests": 1, "tokens": cost}
        with self._lock:
            now = time.monotonic()
            for bucket in self._buckets.values():
                bucket.refill(now)
            wait = max(b.wait_for(amounts[name]) for name, b in self._buckets.items())
            if not wait:
                for name, bucket in self._buckets.items():
                    bucket.level -= amounts[name]
            headers = {}
            for name, bucket in self._buckets.items():
                headers[f"x-ratelimit-limit-{name}"] = str(int(bucket.capacity))
                headers[f"x-ratelimit-remaining-{name}"] = str(max(0, int(bucket.level)))
                headers[f"x-ratelimit-reset-{name}"] = _duration(bucket.reset_in())
        return wait, headers

    @staticmethod
    def _rate_limited(wait: float, headers: dict[str, str]) -> Reply:
        if math.isinf(wait):
            # Larger than the whole per-minute budget: waiting cannot help, so say so.
            return Reply.json(api_error("Request too large: it needs more tokens than the tokens-per-minute limit.",
                                        "tokens", "rate_limit_exceeded"), 429, {**headers, "x-should-retry": "false"})
        return Reply.json(api_error(f"Rate limit reached. Please try again in {_duration(wait)}.", "requests",
                                    "rate_limit_exceeded"), 429, {**headers, **_retry_after_headers(wait)})
