"""The backend interface: how a stage's requests reach a model.

A backend sends the requests it is given and records each answer (or each request that ran
out of attempts) in the stage's :class:`~bioinstruct.llm.ledger.Journal` *before* handing
it to the caller's callback. Backends: :mod:`.offline` (a local function), :mod:`.live`
(the OpenAI client, request by request) and :mod:`.batch` (the Batch API).
"""

from __future__ import annotations

import abc
import os
from typing import Callable, Iterator

from .config import LLMConfig, Request
from .ledger import Journal

OnResponse = Callable[[dict], bool]  # sees each recorded answer; True: stop
OnFailure = Callable[[Request], bool]  # sees each request that ran out of attempts; True: stop


class Backend(abc.ABC):
    @abc.abstractmethod
    def run(self, journal: Journal, pending: Iterator[Request], on_response: OnResponse,
            on_failure: OnFailure | None) -> str:
        """Send ``pending`` (requests not answered yet); return why it stopped: 'done' (a
        callback said so) or 'exhausted' (no more requests); or raise BudgetExhausted,
        ApiFatal or a backend's own StageStopped. Once a callback returns True, nothing
        more is sent and nothing more is handed on."""


def openai_client(cfg: LLMConfig, *, asynchronous: bool, max_retries: int):
    """The official client for ``cfg``'s endpoint; the key goes from the environment to the
    client and nowhere else."""
    import openai

    cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return cls(api_key=os.environ[cfg.api_key_env], base_url=cfg.base_url,
               timeout=cfg.attempt_timeout(), max_retries=max_retries)
