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

Token counts are an approximation, not a tokenizer: ``round(words * 1.3)`` for each text
(:func:`count_tokens`), summed over the message contents for the prompt. Limits
(``requests_per_minute``, ``tokens_per_minute``) are token buckets refilled continuously,
as the real API enforces them: a burst may use the whole minute's budget, then requests
are refused with a 429 whose ``Retry-After`` says when the next one fits. A request costs
its prompt tokens plus its ``max_tokens`` against the token budget, as in the real API.
Only chat completions count against the limits.

The server is stdlib only: :class:`http.server.ThreadingHTTPServer` in a background
thread, one thread per client connection, HTTP/1.1 keep-alive.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import email.message
import hmac
import importlib
import json
import logging
import math
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

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
class BatchFaults:
    """Faults of the Batch API.

    ``request_error``: probability that a request of a batch fails with a 500 (its line
    goes to the error file). ``expire``: the batch stops after ``expire_after`` (a
    fraction) of its requests and ends ``expired``; the finished ones are in the output
    file, the others in the error file with code ``batch_expired`` (as the real API does).
    ``seed``: batch k (0, 1, ...) draws from ``Random(seed * 1_000_003 + k)``, so its
    failures and its output order do not depend on other traffic.
    """

    request_error: float = 0.0
    expire: bool = False
    expire_after: float = 0.5
    seed: int = 0


@dataclass
class RequestRecord:
    """One HTTP request as the server received it."""

    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


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


# --------------------------------------------------------------------------- helpers


def _new_id(prefix: str, n: int = 24) -> str:
    return prefix + uuid.uuid4().hex[:n]


def _error(message: str, type_: str = "invalid_request_error", code: str | None = None,
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


@dataclass
class _Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    drop: bool = False  # close the connection instead of answering

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> "_Reply":
        return cls(status, json.dumps(obj).encode(), dict(headers or {}))


@dataclass
class _File:
    id: str
    purpose: str
    filename: str
    data: bytes
    created_at: int

    def to_json(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict | None
    created_at: int
    index: int
    status: str = "validating"
    model: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: dict | None = None
    counts: dict = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    usage: dict = field(default_factory=lambda: {"input_tokens": 0, "output_tokens": 0})
    times: dict = field(default_factory=dict)  # in_progress_at, finalizing_at, completed_at, ...
    cancel_requested: bool = False

    def to_json(self) -> dict:
        inp, out = self.usage["input_tokens"], self.usage["output_tokens"]
        obj = {"id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": self.errors,
               "input_file_id": self.input_file_id, "completion_window": self.completion_window,
               "status": self.status, "output_file_id": self.output_file_id,
               "error_file_id": self.error_file_id, "created_at": self.created_at,
               "expires_at": self.created_at + 24 * 3600, "request_counts": dict(self.counts),
               "metadata": self.metadata, "model": self.model,
               "usage": {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0},
                         "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0},
                         "total_tokens": inp + out}}
        for name in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                     "cancelling_at", "cancelled_at"):
            obj[name] = self.times.get(name)
        return obj


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart/form-data body: name -> (filename or None, raw bytes)."""
    header = email.message.Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ValueError("multipart/form-data without a boundary")
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046), so splitting on
    # CRLF + "--boundary" leaves every part's bytes exactly as sent, binary included.
    chunks = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    fields: dict[str, tuple[str | None, bytes]] = {}
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without a blank line after its headers")
        part = email.message_from_bytes(head.lstrip(b" \t").removeprefix(b"\r\n"))
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (part.get_filename(), data)
    return fields


def _read_chunked(rfile) -> bytes:
    out = []
    while True:
        size = int(rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(out)
        out.append(rfile.read(size))
        rfile.readline()


def _page(items: list[dict], query: dict[str, list[str]], default_limit: int) -> dict:
    """A cursor page (`after`, `limit`) of items listed newest first, as the API lists them."""
    after = query.get("after", [None])[0]
    limit = int(query.get("limit", [default_limit])[0])
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    data = items[:limit]
    return {"object": "list", "data": data, "has_more": len(items) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


# --------------------------------------------------------------------------- HTTP layer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client pools connections
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm
    # holds the body until the client's delayed ACK (~40 ms per request on Linux).
    disable_nagle_algorithm = True
    timeout = 300  # close a keep-alive connection idle this long
    server: "_HTTPServer"

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.track(self.connection, False)

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            pass  # the client went away (e.g. it timed out on a slow answer): nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    do_PUT = do_PATCH = do_DELETE  # only to answer them with the API's JSON 404, not http.server's HTML 501

    def _serve(self) -> None:
        # Read the whole body first, whatever the answer: bytes left unread would be parsed
        # as the next request on this keep-alive connection.
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body = _read_chunked(self.rfile)
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        except ValueError:
            self.send_error(400, "Bad Content-Length or chunk size")  # also closes: the framing is lost
            return
        headers = {k: v for k, v in self.headers.items()}
        reply = self.server.app._handle(self.command, self.path, headers, body)
        if reply.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops SYNs when dozens of async clients connect at once,
    # and a dropped SYN costs the client a 1 s retransmit.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], app: "OpenAIServer") -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._conn_lock:
            (self._connections.add if open_ else self._connections.discard)(conn)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("error while serving %s", client_address)


# --------------------------------------------------------------------------- the server


class OpenAIServer:
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
        self.responder = responder or echo_responder
        self.faults = faults or Faults()
        self.batch_faults = batch_faults or BatchFaults()
        self.latency = latency
        self.api_key = api_key
        self.batch_delay = batch_delay
        self._address = (host, port)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._rng = random.Random(self.faults.seed)
        self._buckets = {name: _Bucket(limit) for name, limit in
                         (("requests", requests_per_minute), ("tokens", tokens_per_minute)) if limit}
        self._stats = Stats()
        self._admissions: list[tuple[float, int]] = []
        self._records: collections.deque[RequestRecord] = collections.deque(maxlen=keep_requests)
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    def start(self) -> "OpenAIServer":
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._httpd = _HTTPServer(self._address, self)
        # A short poll interval keeps stop() quick: shutdown() waits for the loop's next poll.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openai-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wakes slow answers and batch workers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()  # idle keep-alive connections would hold their threads
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._address[0]}:{self.port}/v1"

    # ---- what happened

    @property
    def stats(self) -> Stats:
        with self._lock:
            return dataclasses.replace(self._stats, outcomes=collections.Counter(self._stats.outcomes))

    @property
    def admissions(self) -> list[tuple[float, int]]:
        """(time.monotonic(), tokens charged) of every chat request admitted under the
        limits (a request costs its prompt plus max_tokens), whether or not limits are set:
        what a provider's rate limiter would have counted."""
        with self._lock:
            return list(self._admissions)

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

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._stats.outcomes[outcome] += 1

    # ---- dispatch

    def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Reply:
        started = time.monotonic()
        with self._lock:
            self._stats.requests += 1
            self._records.append(RequestRecord(method, target, headers, body))
        try:
            reply = self._route(method, target, headers, body)
        except Exception as exc:  # a bug here or in the responder: answer like the API would
            log.exception("error handling %s %s", method, target)
            reply = _Reply.json(_error(f"The server had an error while processing your request: {exc!r}",
                                       "server_error"), 500)
        reply.headers.setdefault("x-request-id", _new_id("req_", 32))
        reply.headers.setdefault("openai-processing-ms", str(round((time.monotonic() - started) * 1000)))
        return reply

    def _route(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Reply:
        if self.api_key is not None:
            auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
            if not hmac.compare_digest(auth.encode(), f"Bearer {self.api_key}".encode()):
                self._count("unauthorized")
                # Unlike the real API, never echo (part of) the key that was sent.
                message = ("Incorrect API key provided." if auth else
                           "You didn't provide an API key. Provide it in an Authorization header (Bearer auth).")
                return _Reply.json(_error(message, code="invalid_api_key" if auth else None), 401)
        url = urlsplit(target)
        path, query = url.path.rstrip("/"), parse_qs(url.query)
        parts = path.split("/")[1:]  # "", "v1", ... -> "v1", ...
        if method == "POST" and path == CHAT_PATH:
            return self._chat(body)
        if parts[:2] == ["v1", "files"]:
            if len(parts) == 2 and method == "POST":
                return self._upload(headers, body)
            if len(parts) == 2 and method == "GET":
                return self._list_files(query)
            if len(parts) in (3, 4):
                return self._file(method, parts[2], content=len(parts) == 4 and parts[3] == "content",
                                  bad=len(parts) == 4 and parts[3] != "content")
        if parts[:2] == ["v1", "batches"]:
            if len(parts) == 2 and method == "POST":
                return self._create_batch(body)
            if len(parts) == 2 and method == "GET":
                with self._lock:
                    items = [b.to_json() for b in reversed(self._batches.values())]
                return _Reply.json(_page(items, query, 20))
            if len(parts) == 3 and method == "GET":
                with self._lock:
                    batch = self._batches.get(parts[2])
                    obj = batch.to_json() if batch else None
                return _Reply.json(obj) if obj else self._no_batch(parts[2])
            if len(parts) == 4 and parts[3] == "cancel" and method == "POST":
                return self._cancel_batch(parts[2])
        return _Reply.json(_error(f"Invalid URL ({method} {url.path})"), 404)

    # ---- chat completions

    def _chat(self, raw: bytes) -> _Reply:
        with self._lock:
            self._stats.chat_requests += 1
        body, problem = self._parse_chat(raw)
        if problem:
            self._count("bad_request")
            return _Reply.json(problem, 400)
        n_prompt = prompt_tokens(body)
        cost = n_prompt + int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
        wait, limit_headers = self._admit(cost)
        if wait:
            self._count("rate_limited")
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
            self._count("rate_limited")
            return _Reply.json(_error("Rate limit reached for requests (injected fault). Please try again in "
                                      f"{f.retry_after}s.", "requests", "rate_limit_exceeded"), 429,
                               {**limit_headers, **_retry_after_headers(f.retry_after)})
        if fault == "server_error":
            self._count("server_error")
            if jitter < 0.5:
                return _Reply.json(_error("The server had an error while processing your request. Sorry about "
                                          "that!", "server_error"), 500)
            return _Reply.json(_error("The server is overloaded or not ready yet.", "server_error"), 503)
        if fault == "drop":
            self._count("dropped")
            return _Reply(drop=True)
        if fault == "slow":
            # Counted now: the client usually gives up before the answer exists.
            self._count("slow")
            if self._stopping.wait(f.slow_seconds):
                return _Reply(drop=True)
        if self.latency and self._stopping.wait(self.latency):
            return _Reply(drop=True)
        try:
            completion, n_completion = self._complete(body, n_prompt, fault, jitter)
        except Exception as exc:
            self._count("responder_error")
            log.exception("responder failed")
            return _Reply.json(_error(f"The responder failed: {exc!r}", "server_error"), 500)
        if fault != "slow":
            self._count(_OUTCOME.get(fault, "ok"))
        if fault == "malformed":
            # Cut the JSON in the middle, as a proxy that drops a connection mid-body would.
            text = json.dumps(completion)
            return _Reply(200, text[: len(text) // 2].encode(), limit_headers)
        with self._lock:
            self._stats.prompt_tokens += n_prompt
            self._stats.completion_tokens += n_completion
        return _Reply.json(completion, 200, limit_headers)

    @staticmethod
    def _parse_chat(raw: bytes) -> tuple[dict, dict | None]:
        try:
            body = json.loads(raw)
        except ValueError:
            return {}, _error("We could not parse the JSON body of your request. (HINT: This likely means you "
                              "aren't using your HTTP library correctly.)")
        if not isinstance(body, dict):
            return {}, _error("The request body must be a JSON object.")
        if not body.get("model"):
            return body, _error("You must provide a model parameter.", param="model")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return body, _error("Missing required parameter: 'messages'.", param="messages",
                                code="missing_required_parameter")
        if body.get("stream"):
            return body, _error("This test server does not stream; call without stream=True.", param="stream")
        return body, None

    @staticmethod
    def _draw(rng: random.Random, faults: Faults) -> str | None:
        u, edge = rng.random(), 0.0
        for kind in Faults.KINDS:
            edge += getattr(faults, kind)
            if u < edge:
                return kind
        return None

    def _complete(self, body: dict, n_prompt: int, fault: str | None, jitter: float) -> tuple[dict, int]:
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
        completion = {"id": _new_id("chatcmpl-", 29), "object": "chat.completion", "created": int(time.time()),
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
    def _rate_limited(wait: float, headers: dict[str, str]) -> _Reply:
        if math.isinf(wait):
            # Larger than the whole per-minute budget: waiting cannot help, so say so.
            return _Reply.json(_error("Request too large: it needs more tokens than the tokens-per-minute limit.",
                                      "tokens", "rate_limit_exceeded"), 429, {**headers, "x-should-retry": "false"})
        return _Reply.json(_error(f"Rate limit reached. Please try again in {_duration(wait)}.", "requests",
                                  "rate_limit_exceeded"), 429, {**headers, **_retry_after_headers(wait)})

    # ---- files

    def _upload(self, headers: dict[str, str], body: bytes) -> _Reply:
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if not ctype.lower().startswith("multipart/form-data"):
            return _Reply.json(_error("Uploads must be multipart/form-data."), 400)
        try:
            fields = _parse_multipart(ctype, body)
        except ValueError as exc:
            return _Reply.json(_error(f"Could not parse the multipart body: {exc}"), 400)
        if "file" not in fields or "purpose" not in fields:
            missing = "file" if "file" not in fields else "purpose"
            return _Reply.json(_error(f"Missing required parameter: '{missing}'.", param=missing,
                                      code="missing_required_parameter"), 400)
        filename, data = fields["file"]
        purpose = fields["purpose"][1].decode("utf-8", "replace")
        return _Reply.json(self._store(purpose, filename or "upload", data).to_json())

    def _store(self, purpose: str, filename: str, data: bytes) -> _File:
        entry = _File(_new_id("file-"), purpose, filename, data, int(time.time()))
        with self._lock:
            self._files[entry.id] = entry
        return entry

    def _list_files(self, query: dict[str, list[str]]) -> _Reply:
        purpose = query.get("purpose", [None])[0]
        with self._lock:
            items = [f.to_json() for f in reversed(self._files.values()) if purpose in (None, f.purpose)]
        return _Reply.json(_page(items, query, 10_000))

    def _file(self, method: str, file_id: str, *, content: bool, bad: bool) -> _Reply:
        with self._lock:
            entry = self._files.get(file_id)
        if bad or method not in ("GET", "DELETE") or (content and method != "GET"):
            return _Reply.json(_error("Invalid URL"), 404)
        if entry is None:
            return _Reply.json(_error(f"No such File object: {file_id}", param="id"), 404)
        if content:
            return _Reply(200, entry.data, content_type="application/octet-stream")
        if method == "DELETE":
            with self._lock:
                self._files.pop(file_id, None)
            return _Reply.json({"id": file_id, "object": "file", "deleted": True})
        return _Reply.json(entry.to_json())

    # ---- batches

    @staticmethod
    def _no_batch(batch_id: str) -> _Reply:
        return _Reply.json(_error(f"No batch found with id '{batch_id}'.", param="batch_id"), 404)

    def _create_batch(self, raw: bytes) -> _Reply:
        try:
            body = json.loads(raw)
        except ValueError:
            return _Reply.json(_error("We could not parse the JSON body of your request."), 400)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not body.get(name):
                return _Reply.json(_error(f"Missing required parameter: '{name}'.", param=name,
                                          code="missing_required_parameter"), 400)
        if body["endpoint"] != CHAT_PATH:
            return _Reply.json(_error(f"This test server runs only {CHAT_PATH} batches.", param="endpoint"), 400)
        if body["completion_window"] != "24h":
            return _Reply.json(_error("Invalid completion_window: only '24h' is supported.",
                                      param="completion_window"), 400)
        with self._lock:
            entry = self._files.get(body["input_file_id"])
            if entry is None:
                return _Reply.json(_error(f"No such File object: {body['input_file_id']}",
                                          param="input_file_id"), 404)
            batch = _Batch(_new_id("batch_"), entry.id, body["endpoint"], body["completion_window"],
                           body.get("metadata"), int(time.time()), index=len(self._batches))
            self._batches[batch.id] = batch
            obj = batch.to_json()
        # One worker per batch: it moves the batch through its states on the batch_delay clock,
        # so a client sees validating and in_progress before the final status.
        threading.Thread(target=self._run_batch, args=(batch, entry.data), name=f"openai-{batch.id}",
                         daemon=True).start()
        return _Reply.json(obj)

    def _cancel_batch(self, batch_id: str) -> _Reply:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return self._no_batch(batch_id)
            if batch.status not in ("validating", "in_progress", "cancelling"):
                return _Reply.json(_error(f"Cannot cancel a batch with status '{batch.status}'."), 400)
            if batch.status != "cancelling":
                batch.cancel_requested = True
                batch.status = "cancelling"
                batch.times["cancelling_at"] = int(time.time())
            return _Reply.json(batch.to_json())

    @staticmethod
    def _validate_batch_input(data: bytes, endpoint: str) -> tuple[list[dict], list[dict]]:
        """The requests of a batch input file, or the errors that fail the batch."""
        requests, errors, seen = [], [], set()

        def bad(code: str, message: str, line: int, param: str | None = None) -> None:
            errors.append({"code": code, "message": message, "param": param, "line": line})

        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            bad("invalid_file_encoding", "The input file is not UTF-8.", 1)
            return [], errors
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                bad("invalid_json_line", f"Line {number} is not parseable as valid JSON.", number)
                continue
            if not isinstance(req, dict):
                bad("invalid_json_line", f"Line {number} is not a JSON object.", number)
                continue
            missing = [k for k in ("custom_id", "method", "url", "body") if k not in req]
            if missing:
                bad("missing_required_parameter", f"Line {number} lacks {missing[0]!r}.", number, missing[0])
            elif req["url"] != endpoint:
                bad("invalid_url", f"Line {number}: url {req['url']!r} differs from the batch's endpoint "
                    f"{endpoint!r}.", number, "url")
            elif str(req["method"]).upper() != "POST":
                bad("invalid_method", f"Line {number}: method must be POST.", number, "method")
            elif req["custom_id"] in seen:
                bad("duplicate_custom_id", f"Line {number}: custom_id {req['custom_id']!r} is used twice.",
                    number, "custom_id")
            else:
                seen.add(req["custom_id"])
                requests.append(req)
        if not requests and not errors:
            bad("empty_file", "The input file has no requests.", 1)
        return requests, errors

    def _run_batch(self, batch: _Batch, data: bytes) -> None:
        rng = random.Random(self.batch_faults.seed * 1_000_003 + batch.index)
        start = time.monotonic()
        if self._stopping.wait(self.batch_delay * 0.25):
            return
        requests, errors = self._validate_batch_input(data, batch.endpoint)
        with self._lock:
            if batch.cancel_requested:
                return self._finish_batch(batch, "cancelled", [], [], rng)
            if errors:
                batch.status, batch.errors = "failed", {"object": "list", "data": errors}
                batch.times["failed_at"] = int(time.time())
                return
            batch.status = "in_progress"
            batch.times["in_progress_at"] = int(time.time())
            batch.counts["total"] = len(requests)
            batch.model = next((r["body"].get("model") for r in requests if isinstance(r["body"], dict)), None)
        run = len(requests)
        if self.batch_faults.expire:
            run = min(run, int(len(requests) * self.batch_faults.expire_after))
        # Spread the work over the in_progress phase so pollers see request_counts grow.
        step = self.batch_delay * 0.7 / max(1, len(requests))
        outputs: list[dict] = []
        failures: list[dict] = []
        for i, req in enumerate(requests[:run]):
            with self._lock:
                if batch.cancel_requested:
                    break
            line, ok, usage = self._batch_request(req, rng)
            (outputs if ok else failures).append(line)
            with self._lock:
                batch.counts["completed" if ok else "failed"] += 1
                batch.usage["input_tokens"] += usage[0]
                batch.usage["output_tokens"] += usage[1]
            if self._stopping.wait(max(0.0, start + self.batch_delay * 0.25 + (i + 1) * step - time.monotonic())):
                return
        with self._lock:
            if batch.cancel_requested:
                return self._finish_batch(batch, "cancelled", outputs, failures, rng)
            batch.status = "finalizing"
            batch.times["finalizing_at"] = int(time.time())
        if self._stopping.wait(max(0.0, start + self.batch_delay - time.monotonic())):
            return
        with self._lock:
            if run < len(requests):
                for req in requests[run:]:
                    failures.append({"id": _new_id("batch_req_", 32), "custom_id": req["custom_id"],
                                     "response": None,
                                     "error": {"code": "batch_expired", "message": "This request could not be "
                                               "executed before the completion window expired."}})
                batch.counts["failed"] += len(requests) - run
                return self._finish_batch(batch, "expired", outputs, failures, rng)
            self._finish_batch(batch, "completed", outputs, failures, rng)

    def _finish_batch(self, batch: _Batch, status: str, outputs: list[dict], failures: list[dict],
                      rng: random.Random) -> None:
        # Called with self._lock held. Real batches come back in no particular order.
        rng.shuffle(outputs)
        rng.shuffle(failures)
        for lines, attr, kind in ((outputs, "output_file_id", "output"), (failures, "error_file_id", "error")):
            if lines:
                data = "".join(json.dumps(line) + "\n" for line in lines).encode()
                entry = _File(_new_id("file-"), "batch_output", f"{batch.id}_{kind}.jsonl", data, int(time.time()))
                self._files[entry.id] = entry
                setattr(batch, attr, entry.id)
        batch.status = status
        batch.times[f"{status}_at"] = int(time.time())

    def _batch_request(self, req: dict, rng: random.Random) -> tuple[dict, bool, tuple[int, int]]:
        """One request of a batch: (output or error line, succeeded, (prompt, completion) tokens)."""
        line = {"id": _new_id("batch_req_", 32), "custom_id": req["custom_id"], "error": None}
        request_id = _new_id("req_", 32)
        body, problem = self._parse_chat(json.dumps(req["body"]).encode())
        if problem is None and rng.random() < self.batch_faults.request_error:
            problem, status = _error("The server had an error while processing your request. Sorry about that!",
                                     "server_error"), 500
        else:
            status = 400
        if problem is not None:
            line["response"] = {"status_code": status, "request_id": request_id, "body": problem}
            return line, False, (0, 0)
        n_prompt = prompt_tokens(body)
        try:
            completion, n_completion = self._complete(body, n_prompt, None, 0.0)
        except Exception as exc:
            log.exception("responder failed in a batch")
            line["response"] = {"status_code": 500, "request_id": request_id,
                                "body": _error(f"The responder failed: {exc!r}", "server_error")}
            return line, False, (0, 0)
        line["response"] = {"status_code": 200, "request_id": request_id, "body": completion}
        return line, True, (n_prompt, n_completion)


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
