"""Client-side rate limits of the live backend: stay under the provider's requests/min and
tokens/min instead of earning 429s, and pause everyone when one answer says Retry-After."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """Two token buckets (requests and tokens per minute) with a shared pause for Retry-After.

    Bucket capacity is one second's worth, so no 60-second window ever sees much more
    than the limit (a full minute's burst at start would double it and earn 429s). A
    request costs its prompt plus its ``max_tokens``, as providers count it; one larger
    than the bucket waits for a full bucket and leaves it in debt, so the long-run rate
    stays the limit whatever the request size.
    """

    def __init__(self, requests_per_minute: int, tokens_per_minute: int):
        self.rates = (requests_per_minute / 60.0, tokens_per_minute / 60.0)
        self.capacity = (max(1.0, self.rates[0]), max(float(tokens_per_minute) / 60.0, 1.0))
        self.level = list(self.capacity)
        self.stamp = time.monotonic()
        self.paused_until = 0.0
        self.lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        elapsed, self.stamp = now - self.stamp, now
        self.level = [min(c, lv + r * elapsed) for c, lv, r in zip(self.capacity, self.level, self.rates)]

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def acquire(self, tokens: int) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                if now < self.paused_until:
                    await asyncio.sleep(self.paused_until - now)
                    continue
                self._refill(now)
                need = min(tokens, self.capacity[1])
                if self.level[0] >= 1 and self.level[1] >= need:
                    self.level[0] -= 1
                    self.level[1] -= tokens
                    return
                wait = max((1 - self.level[0]) / self.rates[0], (need - self.level[1]) / self.rates[1])
                await asyncio.sleep(max(wait, 0.001))
