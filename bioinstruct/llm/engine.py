"""The engine a stage drives: its :class:`~bioinstruct.llm.ledger.Journal` plus the backend
that ``llm.backend`` names.

    engine = Engine(cfg, stage_dir, responder=offline_fn)
    for record in engine.replay(): ...            # what earlier runs already paid for
    stop = engine.run(requests, on_response)       # on_response(record) -> True to stop
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..errors import ConfigError
from .backend import Backend, OnFailure, OnResponse
from .batch import BatchBackend
from .config import LLMConfig, Request, preflight
from .ledger import Journal
from .live import LiveBackend
from .offline import OfflineBackend


class Engine(Journal):
    """Sends requests through one backend, appending every answer to responses.jsonl."""

    def __init__(self, cfg: LLMConfig, out_dir: Path, responder: Callable[[dict], str] | None = None):
        super().__init__(cfg, out_dir)
        self.backend: Backend
        if cfg.backend == "offline":
            if responder is None:
                raise ConfigError("llm.backend=offline needs a local responder; this stage has none")
            self.backend = OfflineBackend(responder)
        elif cfg.backend == "openai":
            self.backend = LiveBackend()
        else:
            self.backend = BatchBackend()

    def run(self, requests: Iterable[Request], on_response: OnResponse,
            on_failure: OnFailure | None = None) -> str:
        """Send the requests not yet answered; return why it stopped: 'done' (a callback said
        so), 'exhausted' (no more requests) or raise BudgetExhausted / ApiFatal / BatchPending.

        ``on_response`` sees each answer after it is in responses.jsonl, in that file's order;
        ``on_failure`` sees each request that ran out of attempts (after failures.jsonl).
        Once a callback returns True, nothing more is sent and nothing more is handed on."""
        preflight(self.cfg)
        pending = (r for r in requests if r.id not in self.done)
        with self.writing():
            try:
                return self.backend.run(self, pending, on_response, on_failure)
            finally:
                self.ledger.save()
