"""Rate limits: each API key (each client address, without keys) may send `rate_limit` requests a second, with
bursts of up to `rate_burst`; more is a 429 `rate_limited` with Retry-After.

A token bucket per client: it holds up to `rate_burst` requests and refills at `rate_limit` a second. Probes,
/metrics and the page's static files are not counted (a page load fetches dozens of them at once); every other
request is, refused ones included, so that guessing keys is limited per address. A client is its key when it sends a
valid one (header or page session), else its address: the peer's, or, behind a proxy named in --trusted-proxies,
the address that proxy forwarded (uvicorn reads X-Forwarded-For from those proxies only; see app/server.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from app.api_errors import error_response, route_path
from app.auth import OPEN_PATHS, ApiKeys, client_address, key_index
from app.errors import RateLimited
from app.metrics import METRICS_PATH

STATIC_PREFIXES = ("/assets/", "/static/", "/gradio_api/file=", "/favicon.ico", "/theme.css", "/manifest.json")
MAX_CLIENTS = 10_000  # buckets kept; beyond it, the full ones (idle clients) are forgotten


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimit:
    """ASGI middleware: a token bucket per client."""

    def __init__(self, app, rate: float, burst: int, keys: ApiKeys | None) -> None:
        self.app = app
        self.rate = rate
        self.burst = burst
        self.keys = keys
        self.buckets: dict[str, _Bucket] = {}

    async def __call__(self, scope, receive, send) -> None:
        path = route_path(scope)
        if (scope["type"] != "http" or path in OPEN_PATHS or path == METRICS_PATH
                or (scope.get("method") in ("GET", "HEAD") and path.startswith(STATIC_PREFIXES))):
            await self.app(scope, receive, send)
            return
        wait_s = self.take(self._client(scope), time.monotonic())
        if wait_s:
            await error_response(RateLimited(
                f"请求过于频繁：每个{'密钥' if self.keys else '客户端地址'}每秒最多 {self.rate:g} 个请求"
                f"（可短时突发 {self.burst} 个），请 {math.ceil(wait_s)} 秒后重试", retry_after=math.ceil(wait_s)
            ))(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _client(self, scope) -> str:
        index = key_index(scope, self.keys) if self.keys else None
        return f"key {index}" if index is not None else f"address {client_address(scope)}"

    def take(self, client: str, now: float) -> float:
        """Take one request from `client`'s bucket: 0 when it may go, else the seconds until it could."""
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= MAX_CLIENTS:
                self._forget_idle(now)
            bucket = self.buckets[client] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        full_after_s = self.burst / self.rate
        for client in [c for c, b in self.buckets.items() if now - b.at >= full_after_s]:
            del self.buckets[client]
