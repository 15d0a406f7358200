"""Paid LLM calls, made safe to interrupt: the client machinery of generate, classify and the judge.

Every answered request is appended to ``responses.jsonl`` (flush + fsync) *before* the
caller sees it; that file is the ledger of what was paid for. A restarted job replays it,
sends only the requests it does not hold, and so never pays twice for the same answer.

Backends (``llm.backend``), behind one interface (:mod:`.backend`):

* ``openai`` (:mod:`.live`): the official async client against any OpenAI-compatible
  ``base_url``, with client-side rate limits (:mod:`.limits`), retries honouring
  Retry-After, and a cap on attempts per request after which the request is recorded in
  ``failures.jsonl`` and sent again on the next run (never silently dropped).
* ``openai-batch`` (:mod:`.batch`): the Batch API (half price); a batch not done within
  ``batch_wait_seconds`` ends the run (BatchPending, status ``waiting``) and the next run
  collects the saved batch instead of submitting again.
* ``offline`` (:mod:`.offline`): a deterministic local function, for the quickstart and
  tests. Its answers are synthetic and every record says so (``backend: offline``).

Budgets (``llm.budget``, :mod:`.ledger`) count every run of a stage. A request goes out
only if its worst case fits beside the worst cases of those in flight.

The API key is read from the environment variable named by ``llm.api_key_env`` and handed
to the client only; it is never written to a file, a log line or an error message.

Also here: prompt templates (:mod:`.prompts`) and the LLM judge (:mod:`.judge`), imported
from their modules.
"""

from .batch import BatchPending
from .config import DEFAULT_MAX_COST, DEFAULT_PRICES, TRANSPORT_KEYS, Budget, LLMConfig, Request, preflight
from .engine import Engine
from .ledger import ApiFatal, BudgetExhausted, Ledger
from .limits import RateLimiter

__all__ = ["ApiFatal", "BatchPending", "Budget", "BudgetExhausted", "DEFAULT_MAX_COST", "DEFAULT_PRICES",
           "Engine", "LLMConfig", "Ledger", "RateLimiter", "Request", "TRANSPORT_KEYS", "preflight"]
