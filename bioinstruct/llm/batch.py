"""The ``openai-batch`` backend: the Batch API at half price.

Requests go up in chunks of ``llm.batch_size`` as a JSONL file; the batch id and the
chunk's request ids are saved in ``batch.json`` *before* polling starts. A batch takes
minutes to a day: after ``llm.batch_wait_seconds`` the job ends with BatchPending (stage
status ``waiting``) instead of holding an allocation, and the next run (the same command,
``launch --resume``, a job with a later begin time) collects the saved batch instead of
paying again; so does a run after a kill.
Results come back unordered; they are matched by ``custom_id`` and handled in submission
order, so the outcome does not depend on the order the provider chose. Requests that
failed inside the batch, or were left undone by an expired batch, go into the next chunk,
up to ``llm.max_attempts`` each.
"""

from __future__ import annotations

import io
import json
import sys
import time
from typing import Iterator

from ..errors import StageStopped, UserError
from ..io.rows import atomic_write_json, read_json
from ..runs.progress import progress
from .backend import Backend, OnFailure, OnResponse, openai_client
from .config import Request
from .ledger import ApiFatal, BudgetExhausted, Journal

ENDPOINT = "/v1/chat/completions"


class BatchPending(StageStopped):
    """A Batch API batch is still running at the provider; its id is saved in batch.json.
    The job ends rather than hold an allocation for hours: the next run collects it."""
    manifest_status = "waiting"


def _request_line(journal: Journal, request: Request) -> str:
    body = {"model": journal.cfg.model, "messages": request.messages, **journal.cfg.sampling()}
    return json.dumps({"custom_id": request.id, "method": "POST", "url": ENDPOINT, "body": body})


def _submit(journal: Journal, client, chunk: list[Request], attempts: dict[str, int]) -> dict:
    payload = "".join(_request_line(journal, r) + "\n" for r in chunk).encode()
    upload = client.files.create(file=("requests.jsonl", io.BytesIO(payload)), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h",
                                  metadata={"bioinstruct": journal.out_dir.name})
    state = {"batch_id": batch.id, "input_file_id": upload.id, "collected": False,
             "requests": [{"id": r.id, "messages": r.messages, "meta": r.meta,
                           "attempts": attempts.get(r.id, 1)} for r in chunk]}
    atomic_write_json(journal.out_dir / "batch.json", state)
    print(f"submitted batch {batch.id} with {len(chunk)} requests", file=sys.stderr)
    return state


FINAL = ("completed", "failed", "expired", "cancelled")


def _wait(journal: Journal, client, batch_id: str):
    """The batch once it is final; BatchPending when it is not within batch_wait_seconds."""
    deadline = time.monotonic() + journal.cfg.batch_wait_seconds
    bar = progress(desc=f"batch {batch_id}", unit="req")
    try:
        while True:
            batch = client.batches.retrieve(batch_id)
            counts = batch.request_counts
            if counts is not None:
                bar.total = counts.total
                bar.n = counts.completed + counts.failed
                bar.refresh()
            if batch.status in FINAL:
                return batch
            if time.monotonic() >= deadline:
                done = f"{counts.completed + counts.failed} of {counts.total} done" if counts else "no count yet"
                raise BatchPending(f"batch {batch_id} is {batch.status} at the provider ({done}); its id is "
                                   f"saved in {journal.out_dir / 'batch.json'}: run the same command again "
                                   f"later (or `bioinstruct launch RUN_DIR --resume`) to collect it")
            time.sleep(min(journal.cfg.batch_poll_seconds, max(0.0, deadline - time.monotonic())))
    finally:
        bar.close()


def _read_file(client, file_id: str | None) -> list[dict]:
    if not file_id:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _collect(journal: Journal, client, state: dict, on_response: OnResponse,
             on_failure: OnFailure | None) -> tuple[bool, list[tuple[Request, int]]]:
    """Record the batch's results in submission order; return (stop?, requests to send again)."""
    batch = _wait(journal, client, state["batch_id"])
    if batch.status == "failed":
        errors = [e.message for e in (batch.errors.data if batch.errors else [])][:3]
        raise ApiFatal(f"batch {batch.id} failed validation: {'; '.join(errors) or 'no detail'}")
    results = {line["custom_id"]: line for line in
               _read_file(client, batch.output_file_id) + _read_file(client, batch.error_file_id)}
    stop, again = False, []
    for saved in state["requests"]:
        request = Request(saved["id"], saved["messages"], saved["meta"])
        if request.id in journal.done:  # recorded before a kill, and replayed since
            continue
        line = results.get(request.id)
        response = (line or {}).get("response") or {}
        body = response.get("body") or {}
        if response.get("status_code") == 200 and body.get("choices"):
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            record = journal.record(request, choice["message"].get("content"), choice.get("finish_reason"),
                                   {"prompt_tokens": usage.get("prompt_tokens", 0),
                                    "completion_tokens": usage.get("completion_tokens", 0)},
                                    saved["attempts"], body.get("id"))
            stop = on_response(record) or stop
            continue
        error = ((line or {}).get("error") or body.get("error") or
                 {"message": f"no result (batch {batch.status})"})
        message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
        if saved["attempts"] >= journal.cfg.max_attempts:
            journal.fail(request, message, saved["attempts"])
            stop = (on_failure is not None and on_failure(request)) or stop
        else:
            again.append((request, saved["attempts"] + 1))
    state["collected"] = True
    atomic_write_json(journal.out_dir / "batch.json", state)
    journal.ledger.save()
    return stop, again


class BatchBackend(Backend):
    def run(self, journal: Journal, pending: Iterator[Request], on_response: OnResponse,
            on_failure: OnFailure | None) -> str:
        # The client's own retries cover the few control calls (upload, create, poll).
        client = openai_client(journal.cfg, asynchronous=False, max_retries=5)
        state_path = journal.out_dir / "batch.json"
        again: list[tuple[Request, int]] = []
        state = read_json(state_path) if state_path.exists() else None
        if state and not state["collected"]:
            print(f"resuming batch {state['batch_id']} saved by an earlier run", file=sys.stderr)
            stop, again = _collect(journal, client, state, on_response, on_failure)
            if stop:
                return "done"
        budget_error: UserError | None = None
        while True:
            chunk, attempts = [], {}
            for request, attempt in again:
                chunk.append(request)
                attempts[request.id] = attempt
            again = []
            while len(chunk) < journal.cfg.batch_size and budget_error is None:
                request = next(pending, None)
                if request is None:
                    break
                try:
                    journal.check_budget(request, chunk)
                except BudgetExhausted as e:
                    budget_error = e
                    break
                chunk.append(request)
            if not chunk:
                if budget_error:
                    raise budget_error
                return "exhausted"
            stop, again = _collect(journal, client, _submit(journal, client, chunk, attempts), on_response,
                                   on_failure)
            if stop:
                return "done"
