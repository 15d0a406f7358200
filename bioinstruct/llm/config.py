"""What a stage asks of its LLM: the ``llm`` config section, one request, and the checks
that must pass before anything is sent."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

from ..errors import ConfigError
from ..runs.config import ranged

# USD per 1M tokens (list prices); extend or override in the config for your model.
DEFAULT_PRICES = {
    "gpt-4": {"prompt": 30.0, "completion": 60.0},
    "gpt-4-0613": {"prompt": 30.0, "completion": 60.0},
    "gpt-4-turbo": {"prompt": 10.0, "completion": 30.0},
    "gpt-4o": {"prompt": 2.5, "completion": 10.0},
    "gpt-4o-mini": {"prompt": 0.15, "completion": 0.6},
    "offline": {"prompt": 0.0, "completion": 0.0},
}


# A cap nobody chose is still a cap: a typo in a target or a loop that never accepts
# anything stops here, not at the card's limit. A full 25,005-instruction GPT-4 run costs
# several hundred dollars; set llm.budget.max_cost to what you mean to spend.
DEFAULT_MAX_COST = 100.0


@dataclasses.dataclass
class Budget:
    """Limits for one stage's calls, counted over all runs of it (None: no limit)."""
    max_requests: int | None = ranged(None, low=0)
    max_tokens: int | None = ranged(None, low=0)
    max_cost: float | None = ranged(DEFAULT_MAX_COST, low=0.0)  # USD, from the price table


# LLMConfig keys that decide how requests are sent and paid for, not what comes back: a stage
# resumes or skips across a change in them (a raised budget continues a stopped run).
TRANSPORT_KEYS = ("api_key_env", "timeout", "max_attempts", "backoff_base", "backoff_max",
                  "max_consecutive_failures", "concurrency", "requests_per_minute", "tokens_per_minute",
                  "batch_poll_seconds", "batch_wait_seconds", "batch_discount", "prices", "budget")


@dataclasses.dataclass
class LLMConfig:
    backend: Literal["openai", "openai-batch", "offline"] = "offline"
    model: str = "gpt-4"
    base_url: str | None = None  # None: the client's default (OPENAI_BASE_URL or api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"  # the *name* of the variable; the key never enters a config
    temperature: float = ranged(1.0, low=0.0, high=2.0)  # the OpenAI API's range
    top_p: float = ranged(1.0, low=0.0, high=1.0)
    max_tokens: int = ranged(3072, low=1)
    timeout: float | None = ranged(None, above=0.0)  # seconds per attempt; None: 30 s + max_tokens at 20 tokens/s
    max_attempts: int = ranged(6, low=1)  # per request and run; then failures.jsonl, retried next run
    backoff_base: float = ranged(1.0, low=0.0)  # seconds; doubles per attempt, full jitter, capped below
    backoff_max: float = ranged(60.0, low=0.0)
    max_consecutive_failures: int = ranged(20, low=1)  # an endpoint that fails this many requests in a row stops the run
    concurrency: int = ranged(16, low=1)
    requests_per_minute: int = ranged(500, low=1)
    tokens_per_minute: int = ranged(150_000, low=1)
    batch_size: int = ranged(500, low=1)  # requests per Batch API job
    batch_poll_seconds: float = ranged(30.0, above=0.0)
    # How long a job waits for a submitted batch before it ends (manifest status `waiting`)
    # and leaves the collecting to the next run: 0 looks once. Batches take minutes to 24 h.
    batch_wait_seconds: float = ranged(0.0, low=0.0)
    batch_discount: float = ranged(0.5, above=0.0, high=1.0)  # the Batch API's price factor
    prices: dict[str, dict[str, float]] = dataclasses.field(default_factory=lambda: dict(DEFAULT_PRICES))
    budget: Budget = dataclasses.field(default_factory=Budget)

    def __post_init__(self):
        for model, price in self.prices.items():
            if set(price) != {"prompt", "completion"}:
                raise ValueError(f"prices.{model} needs exactly 'prompt' and 'completion' (USD per 1M tokens)")

    def attempt_timeout(self) -> float:
        """Long enough for a full-length answer from a slow endpoint: one that times out is
        paid for and then asked again."""
        return self.timeout if self.timeout is not None else 30.0 + self.max_tokens / 20.0

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


@dataclasses.dataclass
class Request:
    id: str  # stable across runs: the resume key and the Batch API custom_id
    messages: list[dict[str, str]]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # kept with the response


def estimate_tokens(text: str) -> int:
    """A deliberately high estimate (≈3 characters per token) for budgets and the
    tokens/min bucket: overestimating only slows a run, underestimating overspends."""
    return len(text) // 3 + 1


def preflight(cfg: LLMConfig) -> None:
    """What must hold before anything is sent; stages call it before doing any work."""
    if cfg.backend == "offline":
        return
    if not os.environ.get(cfg.api_key_env):
        raise ConfigError(f"llm.backend={cfg.backend} needs an API key in the environment variable "
                          f"{cfg.api_key_env} (llm.api_key_env names another; llm.backend=offline needs none)")
    if cfg.budget.max_cost is not None and cfg.model not in cfg.prices:
        raise ConfigError(f"llm.budget.max_cost={cfg.budget.max_cost:g} (USD) needs a price but llm.prices has no "
                          f"entry for model '{cfg.model}': add llm.prices.{cfg.model}={{prompt: X, completion: Y}} "
                          f"(USD per 1M tokens), or set llm.budget.max_cost=null for a server that costs nothing")
