"""The ``offline`` backend: a deterministic local function answers, for the quickstart and
tests. Its answers are synthetic and every record says so (``backend: offline``)."""

from __future__ import annotations

from typing import Callable, Iterator

from .backend import Backend, OnFailure, OnResponse
from .config import Request, estimate_tokens
from .ledger import Journal


class OfflineBackend(Backend):
    def __init__(self, responder: Callable[[dict], str]):
        self.responder = responder  # the chat-completions request body -> the answer's text

    def run(self, journal: Journal, pending: Iterator[Request], on_response: OnResponse,
            on_failure: OnFailure | None) -> str:
        cfg = journal.cfg
        for request in pending:
            journal.check_budget(request, [])
            body = {"model": cfg.model, "messages": request.messages, **cfg.sampling()}
            content = self.responder(body)
            prompt = sum(estimate_tokens(m["content"]) for m in request.messages)
            usage = {"prompt_tokens": prompt, "completion_tokens": estimate_tokens(content)}
            record = journal.record(request, content, "stop", usage, 1, None)
            if on_response(record):
                return "done"
        return "exhausted"
