"""A local server that speaks the OpenAI HTTP protocol, with injectable faults.

It answers the calls the official ``openai`` client makes for generation jobs:

* ``POST /v1/chat/completions`` (non-streaming; ``n`` choices; ``max_tokens`` and
  ``max_completion_tokens`` cut the answer with ``finish_reason="length"``);
* ``POST /v1/files`` (multipart upload), ``GET /v1/files``, ``GET /v1/files/{id}``,
  ``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``;
* ``POST /v1/batches``, ``GET /v1/batches``, ``GET /v1/batches/{id}``,
  ``POST /v1/batches/{id}/cancel`` for ``/v1/chat/completions`` batches.

Anything else gets a 404 with an OpenAI-style error body. The answers come from a
*responder*, a function of the request body (default: a short deterministic echo).

Two uses:

1. Tests drive the real ``openai`` client (sync and async) against it over loopback and
   check how code copes with rate limits, server errors, timeouts, dropped connections,
   malformed bodies and odd finish reasons (:class:`Faults`, :class:`BatchFaults`).
2. Rehearsing a generation job without paying, from a shell::

       python -m bioinstruct.testing.openai_server --port 8000 --latency 0.2 --rpm 500 \\
           --fault-rate-limit 0.05 --fault-server-error 0.01

       # in another shell; any key works unless the server was started with --api-key
       OPENAI_API_KEY=sk-local bioinstruct generate run_dir=runs/rehearsal \
           llm.base_url=http://127.0.0.1:8000/v1 target=200

   (any other program using the ``openai`` client: ``OPENAI_BASE_URL=http://127.0.0.1:8000/v1``).
   Ctrl-C (or SIGTERM) stops the server and prints what it served. ``--port 0`` picks a
   free port and prints it. ``--responder pkg.module:function`` plugs in a function
   ``(request_body: dict) -> str`` for realistic answers (the default echo will not parse
   as generated tasks).

In Python::

    from bioinstruct.testing.openai_server import Faults, OpenAIServer

    with OpenAIServer(faults=Faults(rate_limit=0.2, seed=1)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
        ...
        assert server.stats.outcomes["rate_limited"] > 0

Token counts and enforced limits: :mod:`.openai_chat`; files and batches:
:mod:`.openai_batches`; the HTTP plumbing (stdlib only, a thread per connection, HTTP/1.1
keep-alive): :mod:`.http_server`.
"""


from __future__ import annotations

import argparse
import collections
import hmac
import importlib
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .http_server import BackgroundServer, Reply
from .openai_batches import BatchAPI, BatchFaults
from .openai_chat import (CHAT_PATH, ChatAPI, Faults, Responder, Stats, api_error, count_tokens, echo_responder, new_id)

log = logging.getLogger(__name__)

__all__ = ["BatchFaults", "Faults", "OpenAIServer", "RequestRecord", "Responder", "Stats", "count_tokens",
           "echo_responder", "main"]


@dataclass
class RequestRecord:
    """One HTTP request as the server received it."""

    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class OpenAIServer(BackgroundServer):
    """An OpenAI-protocol server on a background thread; use as a context manager.

    ``responder``: the answer to a chat request (default :func:`echo_responder`).
    ``faults`` / ``batch_faults``: what goes wrong, and how often.
    ``latency``: seconds added to every normal chat answer.
    ``requests_per_minute`` / ``tokens_per_minute``: enforced limits (429 + Retry-After,
    ``x-ratelimit-*`` headers on chat answers).
    ``api_key``: when set, any request without ``Authorization: Bearer <api_key>`` gets 401.
    ``batch_delay``: seconds a batch takes from creation to its final status.
    ``keep_requests``: how many recent requests :attr:`requests` keeps.
    """

    def __init__(self, responder: Responder | None = None, faults: Faults | None = None, *,
                 batch_faults: BatchFaults | None = None, latency: float = 0.0,
                 requests_per_minute: int | None = None, tokens_per_minute: int | None = None,
                 api_key: str | None = None, batch_delay: float = 0.2, host: str = "127.0.0.1",
                 port: int = 0, keep_requests: int = 10_000) -> None:
        super().__init__(host, port)
        self.api_key = api_key
        self.chat = ChatAPI(responder, faults, latency, requests_per_minute, tokens_per_minute, self.stopping)
        self.batches = BatchAPI(self.chat, batch_faults, batch_delay, self.stopping)
        self._lock = threading.Lock()
        self._records: collections.deque[RequestRecord] = collections.deque(maxlen=keep_requests)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ---- what happened

    @property
    def stats(self) -> Stats:
        return self.chat.stats

    @property
    def admissions(self) -> list[tuple[float, int]]:
        """(time.monotonic(), tokens charged) of every chat request admitted under the
        limits (a request costs its prompt plus max_tokens), whether or not limits are set:
        what a provider's rate limiter would have counted."""
        return self.chat.admissions

    def admitted_rates(self, warmup: float = 1.0) -> tuple[float, float]:
        """Sustained (requests/min, tokens/min) admitted, from ``warmup`` seconds after the
        first admission to the last (the client's initial burst left out)."""
        times = self.admissions
        if not times:
            return 0.0, 0.0
        window = [(t, tokens) for t, tokens in times if t >= times[0][0] + warmup]
        if len(window) < 2:
            raise ValueError(f"too short to measure: {times[-1][0] - times[0][0]:.2f} s of admissions")
        # Counted between the window's first and last admissions: the first one opens it.
        seconds = window[-1][0] - window[0][0]
        return 60 * (len(window) - 1) / seconds, 60 * sum(tokens for _, tokens in window[1:]) / seconds

    @property
    def requests(self) -> list[RequestRecord]:
        """The most recent requests (up to ``keep_requests``), oldest first."""
        with self._lock:
            return list(self._records)

    @property
    def chat_bodies(self) -> list[dict]:
        """The JSON bodies of the chat-completion requests received, oldest first."""
        out = []
        for r in self.requests:
            if r.method == "POST" and urlsplit(r.path).path == CHAT_PATH:
                try:
                    out.append(r.json())
                except ValueError:
                    pass
        return out

    @property
    def authorizations(self) -> list[str | None]:
        """The Authorization header of each recorded request (None where absent)."""
        return [next((v for k, v in r.headers.items() if k.lower() == "authorization"), None)
                for r in self.requests]

    # ---- dispatch

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        started = time.monotonic()
        self.chat.count_request()
        with self._lock:
            self._records.append(RequestRecord(method, target, headers, body))
        try:
            reply = self._route(method, target, headers, body)
        except Exception as exc:  # a bug here or in the responder: answer like the API would
            log.exception("error handling %s %s", method, target)
            reply = Reply.json(api_error(f"The server had an error while processing your request: {exc!r}",
                                         "server_error"), 500)
        reply.headers.setdefault("x-request-id", new_id("req_", 32))
        reply.headers.setdefault("openai-processing-ms", str(round((time.monotonic() - started) * 1000)))
        return reply

    def _route(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        if self.api_key is not None:
            auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
            if not hmac.compare_digest(auth.encode(), f"Bearer {self.api_key}".encode()):
                self.chat.count("unauthorized")
                # Unlike the real API, never echo (part of) the key that was sent.
                message = ("Incorrect API key provided." if auth else
                           "You didn't provide an API key. Provide it in an Authorization header (Bearer auth).")
                return Reply.json(api_error(message, code="invalid_api_key" if auth else None), 401)
        url = urlsplit(target)
        path, query = url.path.rstrip("/"), parse_qs(url.query)
        if method == "POST" and path == CHAT_PATH:
            return self.chat.handle(body)
        parts = path.split("/")[1:]  # "", "v1", ... -> "v1", ...
        reply = self.batches.route(method, parts, query, headers, body)
        if reply is None:
            reply = Reply.json(api_error(f"Invalid URL ({method} {url.path})"), 404)
        return reply


# --------------------------------------------------------------------------- CLI


def _load_responder(spec: str) -> Responder:
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"--responder wants MODULE:FUNCTION, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bioinstruct.testing.openai_server",
        description="Serve the OpenAI chat/files/batches protocol locally, with injectable faults, until Ctrl-C.",
        epilog="Point a client at it with OPENAI_BASE_URL=http://HOST:PORT/v1 and any OPENAI_API_KEY.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every normal answer")
    parser.add_argument("--rpm", type=int, help="requests per minute, enforced with 429 + Retry-After")
    parser.add_argument("--tpm", type=int, help="tokens per minute, enforced with 429 + Retry-After")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: accept any)")
    parser.add_argument("--batch-delay", type=float, default=2.0,
                        help="seconds from batch creation to its final status (default 2)")
    parser.add_argument("--responder", metavar="MODULE:FUNCTION",
                        help="function(request_body: dict) -> str giving the answers (default: an echo)")
    for kind in Faults.KINDS:
        parser.add_argument(f"--fault-{kind.replace('_', '-')}", type=float, default=0.0, metavar="P",
                            help=f"probability of the {kind.replace('_', ' ')} fault per chat request")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    parser.add_argument("--slow-seconds", type=float, default=5.0, help="delay of the slow fault")
    parser.add_argument("--retry-after", type=float, default=0.05, help="Retry-After of the rate-limit fault")
    parser.add_argument("--batch-request-error", type=float, default=0.0, metavar="P",
                        help="probability that a request inside a batch fails with a 500")
    parser.add_argument("--batch-expire", action="store_true", help="batches expire half-way")
    args = parser.parse_args(argv)
    try:
        faults = Faults(seed=args.seed, slow_seconds=args.slow_seconds, retry_after=args.retry_after,
                        **{kind: getattr(args, f"fault_{kind}") for kind in Faults.KINDS})
    except ValueError as exc:
        parser.error(str(exc))
    server = OpenAIServer(_load_responder(args.responder) if args.responder else None, faults,
                          batch_faults=BatchFaults(args.batch_request_error, args.batch_expire, seed=args.seed),
                          latency=args.latency, requests_per_minute=args.rpm, tokens_per_minute=args.tpm,
                          api_key=args.api_key, batch_delay=args.batch_delay, host=args.host, port=args.port)
    if threading.current_thread() is threading.main_thread():
        # A shell starts background jobs with SIGINT ignored, and batch schedulers stop jobs
        # with SIGTERM: both should end in the same clean shutdown and summary as Ctrl-C.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.default_int_handler)
    with server:
        print(f"serving the OpenAI protocol at {server.base_url} (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    stats = server.stats
    outcomes = ", ".join(f"{k}={v}" for k, v in sorted(stats.outcomes.items())) or "none"
    print(f"\n{stats.requests} requests, {stats.chat_requests} chat completions ({outcomes}), "
          f"{stats.total_tokens} tokens served", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
