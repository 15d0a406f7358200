"""What was paid for: every answer appended to ``responses.jsonl`` (flush + fsync) before
its caller sees it, requests that ran out of attempts in ``failures.jsonl``, and the totals
in ``usage.json``, checked against the budget before each request goes out.

Every backend records through a :class:`Journal`; a restarted job replays it and sends only
the requests it does not hold, so it never pays twice for the same answer.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import StageStopped, UserError
from ..io.rows import JsonlAppender, atomic_write_json, iter_jsonl, repair_jsonl
from .config import LLMConfig, Request, estimate_tokens


class BudgetExhausted(StageStopped):
    """A budget limit stopped the run; the state is saved and a re-run continues."""


class ApiFatal(UserError):
    """An error no retry can fix (bad key, unknown model, malformed request)."""


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


class Journal:
    """The files of one stage's calls in ``out_dir``: what backends record answers and
    failures in, what a resumed run replays, and the budget check before each request."""

    def __init__(self, cfg: LLMConfig, out_dir: Path):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.responses_path = self.out_dir / "responses.jsonl"
        self.failures_path = self.out_dir / "failures.jsonl"
        self.ledger = Ledger(cfg, self.out_dir / "usage.json")
        self.done: set[str] = set()
        self.consecutive_failures = 0

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

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Open responses.jsonl and failures.jsonl for :meth:`record` and :meth:`fail`."""
        with JsonlAppender(self.responses_path) as responses, JsonlAppender(self.failures_path) as failures:
            self._responses, self._failures = responses, failures
            yield

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
