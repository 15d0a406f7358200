"""The fake files and batches endpoints of :class:`~bioinstruct.testing.openai_server.OpenAIServer`:
``/v1/files`` (multipart upload, list, get, content, delete) and ``/v1/batches`` (create, list,
get, cancel) for ``/v1/chat/completions`` batches, answered by the chat endpoint's responder.

A batch moves through validating, in_progress and finalizing on the ``batch_delay`` clock
(so pollers see ``request_counts`` grow) to completed, failed, expired or cancelled, with
its results in an output and an error file, in no particular order, as the real API does.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field

from .http_server import Reply, parse_multipart
from .openai_chat import CHAT_PATH, ChatAPI, api_error, new_id, prompt_tokens

log = logging.getLogger(__name__)


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


class BatchAPI:
    """The files and batches a client uploaded and created, and the workers that run the
    batches' requests through ``chat`` (its responder, not its limits or faults)."""

    def __init__(self, chat: ChatAPI, batch_faults: BatchFaults | None, batch_delay: float,
                 stopping: threading.Event) -> None:
        self.batch_faults = batch_faults or BatchFaults()
        self.batch_delay = batch_delay
        self._chat = chat
        self._stopping = stopping
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}

    def route(self, method: str, parts: list[str], query: dict[str, list[str]], headers: dict[str, str],
              body: bytes) -> Reply | None:
        """The answer to a request for ``/v1/files...`` or ``/v1/batches...`` (``parts``: the
        path's segments after the leading slash); None for any other path."""
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
                return Reply.json(_page(items, query, 20))
            if len(parts) == 3 and method == "GET":
                with self._lock:
                    batch = self._batches.get(parts[2])
                    obj = batch.to_json() if batch else None
                return Reply.json(obj) if obj else self._no_batch(parts[2])
            if len(parts) == 4 and parts[3] == "cancel" and method == "POST":
                return self._cancel_batch(parts[2])
        return None

    # ---- files

    def _upload(self, headers: dict[str, str], body: bytes) -> Reply:
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if not ctype.lower().startswith("multipart/form-data"):
            return Reply.json(api_error("Uploads must be multipart/form-data."), 400)
        try:
            fields = parse_multipart(ctype, body)
        except ValueError as exc:
            return Reply.json(api_error(f"Could not parse the multipart body: {exc}"), 400)
        if "file" not in fields or "purpose" not in fields:
            missing = "file" if "file" not in fields else "purpose"
            return Reply.json(api_error(f"Missing required parameter: '{missing}'.", param=missing,
                                        code="missing_required_parameter"), 400)
        filename, data = fields["file"]
        purpose = fields["purpose"][1].decode("utf-8", "replace")
        return Reply.json(self._store(purpose, filename or "upload", data).to_json())

    def _store(self, purpose: str, filename: str, data: bytes) -> _File:
        entry = _File(new_id("file-"), purpose, filename, data, int(time.time()))
        with self._lock:
            self._files[entry.id] = entry
        return entry

    def _list_files(self, query: dict[str, list[str]]) -> Reply:
        purpose = query.get("purpose", [None])[0]
        with self._lock:
            items = [f.to_json() for f in reversed(self._files.values()) if purpose in (None, f.purpose)]
        return Reply.json(_page(items, query, 10_000))

    def _file(self, method: str, file_id: str, *, content: bool, bad: bool) -> Reply:
        with self._lock:
            entry = self._files.get(file_id)
        if bad or method not in ("GET", "DELETE") or (content and method != "GET"):
            return Reply.json(api_error("Invalid URL"), 404)
        if entry is None:
            return Reply.json(api_error(f"No such File object: {file_id}", param="id"), 404)
        if content:
            return Reply(200, entry.data, content_type="application/octet-stream")
        if method == "DELETE":
            with self._lock:
                self._files.pop(file_id, None)
            return Reply.json({"id": file_id, "object": "file", "deleted": True})
        return Reply.json(entry.to_json())

    # ---- batches

    @staticmethod
    def _no_batch(batch_id: str) -> Reply:
        return Reply.json(api_error(f"No batch found with id '{batch_id}'.", param="batch_id"), 404)

    def _create_batch(self, raw: bytes) -> Reply:
        try:
            body = json.loads(raw)
        except ValueError:
            return Reply.json(api_error("We could not parse the JSON body of your request."), 400)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not body.get(name):
                return Reply.json(api_error(f"Missing required parameter: '{name}'.", param=name,
                                            code="missing_required_parameter"), 400)
        if body["endpoint"] != CHAT_PATH:
            return Reply.json(api_error(f"This test server runs only {CHAT_PATH} batches.", param="endpoint"), 400)
        if body["completion_window"] != "24h":
            return Reply.json(api_error("Invalid completion_window: only '24h' is supported.",
                                        param="completion_window"), 400)
        with self._lock:
            entry = self._files.get(body["input_file_id"])
            if entry is None:
                return Reply.json(api_error(f"No such File object: {body['input_file_id']}",
                                            param="input_file_id"), 404)
            batch = _Batch(new_id("batch_"), entry.id, body["endpoint"], body["completion_window"],
                           body.get("metadata"), int(time.time()), index=len(self._batches))
            self._batches[batch.id] = batch
            obj = batch.to_json()
        # One worker per batch: it moves the batch through its states on the batch_delay clock,
        # so a client sees validating and in_progress before the final status.
        threading.Thread(target=self._run_batch, args=(batch, entry.data), name=f"openai-{batch.id}",
                         daemon=True).start()
        return Reply.json(obj)

    def _cancel_batch(self, batch_id: str) -> Reply:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return self._no_batch(batch_id)
            if batch.status not in ("validating", "in_progress", "cancelling"):
                return Reply.json(api_error(f"Cannot cancel a batch with status '{batch.status}'."), 400)
            if batch.status != "cancelling":
                batch.cancel_requested = True
                batch.status = "cancelling"
                batch.times["cancelling_at"] = int(time.time())
            return Reply.json(batch.to_json())

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
                    failures.append({"id": new_id("batch_req_", 32), "custom_id": req["custom_id"],
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
                entry = _File(new_id("file-"), "batch_output", f"{batch.id}_{kind}.jsonl", data, int(time.time()))
                self._files[entry.id] = entry
                setattr(batch, attr, entry.id)
        batch.status = status
        batch.times[f"{status}_at"] = int(time.time())

    def _batch_request(self, req: dict, rng: random.Random) -> tuple[dict, bool, tuple[int, int]]:
        """One request of a batch: (output or error line, succeeded, (prompt, completion) tokens)."""
        line = {"id": new_id("batch_req_", 32), "custom_id": req["custom_id"], "error": None}
        request_id = new_id("req_", 32)
        body, problem = self._chat.parse(json.dumps(req["body"]).encode())
        if problem is None and rng.random() < self.batch_faults.request_error:
            problem, status = api_error("The server had an error while processing your request. Sorry about that!",
                                        "server_error"), 500
        else:
            status = 400
        if problem is not None:
            line["response"] = {"status_code": status, "request_id": request_id, "body": problem}
            return line, False, (0, 0)
        n_prompt = prompt_tokens(body)
        try:
            completion, n_completion = self._chat.complete(body, n_prompt, None, 0.0)
        except Exception as exc:
            log.exception("responder failed in a batch")
            line["response"] = {"status_code": 500, "request_id": request_id,
                                "body": api_error(f"The responder failed: {exc!r}", "server_error")}
            return line, False, (0, 0)
        line["response"] = {"status_code": 200, "request_id": request_id, "body": completion}
        return line, True, (n_prompt, n_completion)

