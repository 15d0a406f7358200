"""How close does the live backend get to an endpoint's requests/min limit?

    python bench/generate_throughput.py                 # 20 s per scenario, rpm 600, latency 0.2 s
    python bench/generate_throughput.py --quick         # 5 s per scenario (CI keeps it working)
    python bench/generate_throughput.py --rpm 1200 --latency 0.5 --seconds 30

Runs bioinstruct's Engine (backend=openai, the real async openai client) against the local
OpenAI-protocol server (bioinstruct.testing.openai_server), which enforces the same
requests/min limit and answers after a fixed latency; once without faults and once with
~20% injected faults (429 with Retry-After, 500/503, dropped connections, slow answers past
the client timeout). Prints one table: requests sent per second as a fraction of the limit
(goal: >= 95%), answers recorded per second, retries, and the 429s the server had to send
because the client went over its limit.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bioinstruct.llm import Engine, LLMConfig, Request  # noqa: E402
from bioinstruct.table import format_table  # noqa: E402
from bioinstruct.testing.openai_server import Faults, OpenAIServer  # noqa: E402

FAULTS = Faults(rate_limit=0.05, server_error=0.06, drop=0.04, slow=0.03, empty_choices=0.02,
                seed=7, slow_seconds=3.0, retry_after=0.2)


def scenario(name: str, rpm: int, latency: float, seconds: float, faults: Faults | None) -> list:
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-local")
    with OpenAIServer(lambda body: "ok", faults, latency=latency, requests_per_minute=rpm) as server, \
            tempfile.TemporaryDirectory() as tmp:
        cfg = LLMConfig(backend="openai", base_url=server.base_url, model="gpt-4", max_tokens=16,
                        requests_per_minute=rpm, tokens_per_minute=10**9, concurrency=64, timeout=1.0,
                        max_attempts=8, backoff_base=0.05, backoff_max=1.0)
        engine = Engine(cfg, Path(tmp))
        requests = (Request(f"r{i}", [{"role": "user", "content": "ping"}]) for i in itertools.count())
        start = time.monotonic()
        engine.run(requests, lambda record: time.monotonic() - start >= seconds)
        elapsed = time.monotonic() - start
        stats = server.stats
    sent_rate = stats.chat_requests / elapsed
    return [name, f"{rpm / 60:.1f}", f"{sent_rate:.2f}", f"{100 * sent_rate / (rpm / 60):.1f}%",
            f"{engine.ledger.requests / elapsed:.2f}", engine.ledger.retries,
            stats.outcomes["rate_limited"], f"{elapsed:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="5 s per scenario")
    args = parser.parse_args()
    seconds = 5.0 if args.quick else args.seconds
    os.environ.setdefault("BIOINSTRUCT_PROGRESS", "0")
    rows = [scenario("no faults", args.rpm, args.latency, seconds, None),
            scenario("~20% faults", args.rpm, args.latency, seconds, FAULTS)]
    print(format_table(["scenario", "limit req/s", "sent req/s", "of limit", "answered/s", "retries",
                        "429 sent", "seconds"], rows))
    print("429 sent counts both injected faults and the server's own rate limiting.")


if __name__ == "__main__":
    main()
