"""How close does the live backend get to an endpoint's requests/min and tokens/min limits?

    python bench/generate_throughput.py                 # 20 s per scenario, rpm 600, latency 0.2 s
    python bench/generate_throughput.py --quick         # 5 s per scenario (CI keeps it working)
    python bench/generate_throughput.py --rpm 1200 --tpm 240000 --latency 0.5 --seconds 30

Runs bioinstruct's Engine (backend=openai, the real async openai client) against the local
OpenAI-protocol server (bioinstruct.testing.openai_server), which enforces the same limits
(a request costs its prompt plus max_tokens, as providers count it) and answers after a fixed
latency. Scenarios: requests/min binding, without faults and with ~20% injected faults (429
with Retry-After, 500/503, dropped connections, slow answers past the client timeout); and
tokens/min binding (200-token requests). Prints one table: requests/min and tokens/min
admitted by the server (sustained, the first second's burst left out) as fractions of their
limits (goal: the binding one within 5%), answers recorded per minute, retries, the 429s the
server sent (injected ones included) and the process's CPU seconds.
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
from bioinstruct.reporting.tables import format_table  # noqa: E402
from bioinstruct.testing.openai_server import Faults, OpenAIServer  # noqa: E402

FAULTS = Faults(rate_limit=0.05, server_error=0.06, drop=0.04, slow=0.03, empty_choices=0.02,
                seed=7, slow_seconds=3.0, retry_after=0.2)


def scenario(name: str, rpm: int, tpm: int, max_tokens: int, latency: float, seconds: float,
             faults: Faults | None) -> list:
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-local")
    with OpenAIServer(lambda body: "ok", faults, latency=latency, requests_per_minute=rpm,
                      tokens_per_minute=tpm) as server, tempfile.TemporaryDirectory() as tmp:
        cfg = LLMConfig(backend="openai", base_url=server.base_url, model="gpt-4", max_tokens=max_tokens,
                        requests_per_minute=rpm, tokens_per_minute=tpm, concurrency=64, timeout=1.0,
                        max_attempts=8, backoff_base=0.05, backoff_max=1.0)
        engine = Engine(cfg, Path(tmp))
        requests = (Request(f"r{i}", [{"role": "user", "content": "ping"}]) for i in itertools.count())
        start, cpu = time.monotonic(), time.process_time()
        engine.run(requests, lambda record: time.monotonic() - start >= seconds)
        elapsed, cpu = time.monotonic() - start, time.process_time() - cpu
        sent_rpm, sent_tpm = server.admitted_rates(warmup=1.0)
        stats = server.stats
    return [name, f"{rpm:,}", f"{sent_rpm:,.0f}", f"{sent_rpm / rpm:.1%}", f"{tpm:,}", f"{sent_tpm:,.0f}",
            f"{sent_tpm / tpm:.1%}", f"{60 * engine.ledger.requests / elapsed:,.0f}", engine.ledger.retries,
            stats.outcomes["rate_limited"], f"{elapsed:.1f}", f"{cpu:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=600, help="requests/min limit")
    parser.add_argument("--tpm", type=int, default=60_000,
                        help="tokens/min limit of the tokens-bound scenario (200-token requests)")
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="5 s per scenario")
    args = parser.parse_args()
    seconds = 5.0 if args.quick else args.seconds
    os.environ.setdefault("BIOINSTRUCT_PROGRESS", "0")
    loose = 10**9  # the limit that does not bind
    rows = [scenario("requests-bound", args.rpm, loose, 16, args.latency, seconds, None),
            scenario("requests-bound, ~20% faults", args.rpm, loose, 16, args.latency, seconds, FAULTS),
            scenario("tokens-bound", 100 * args.rpm, args.tpm, 199, args.latency, seconds, None)]
    print(format_table(["scenario", "limit req/min", "sent req/min", "of limit", "limit tok/min", "sent tok/min",
                        "of limit", "answered/min", "retries", "429 sent", "seconds", "CPU s"], rows))
    print("Sent = admitted by the server, sustained (after the first second). 429 sent counts injected "
          "faults and the server's own rate limiting.")


if __name__ == "__main__":
    main()
