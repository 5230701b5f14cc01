"""What bench.load watches beside its clients: /healthz from a prober process, and the server's RSS."""

from __future__ import annotations

import asyncio
import http.client
import statistics
import time

from bench.live import latency_summary, rss_bytes

PROBE_TIMEOUT_S = 30.0
SLOW_PROBE_MS = 100.0


def probe(host: str, port: int, interval_s: float, stop, ready, sink) -> None:
    """In its own process: GET /healthz every `interval_s` on one keep-alive connection until `stop`."""
    samples, connection, next_at = [], None, time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        try:
            if connection is None:
                connection = http.client.HTTPConnection(host, port, timeout=PROBE_TIMEOUT_S)
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            outcome: int | str = response.status
        except (OSError, http.client.HTTPException) as exc:
            outcome = type(exc).__name__
            if connection is not None:
                connection.close()
            connection = None
        samples.append((started, (time.monotonic() - started) * 1000, outcome))
        ready.set()
        next_at = max(next_at + interval_s, time.monotonic())
        stop.wait(max(0.0, next_at - time.monotonic()))
    sink.put(samples)


def _slow_share(latencies: list[float]) -> float | None:
    return round(sum(ms > SLOW_PROBE_MS for ms in latencies) / len(latencies), 4) if latencies else None


def probe_figures(samples: list[tuple[float, float, int | str]], interval_s: float) -> dict:
    """Prober figures corrected for coordinated omission, with the raw ones beside them.

    One connection sends one probe at a time, so a probe stuck for L ms hides the probes due meanwhile;
    as HdrHistogram's recordValueWithExpectedInterval does, it also stands for L-interval, L-2*interval, ... ms."""
    raw = [ms for _, ms, _ in samples]
    interval_ms = interval_s * 1000
    corrected = list(raw)
    for ms in raw:
        missed = ms - interval_ms
        while missed >= interval_ms:
            corrected.append(missed)
            missed -= interval_ms
    return {**latency_summary(corrected), "over_100ms_share": _slow_share(corrected),
            "not_200": sum(outcome != 200 for _, _, outcome in samples),
            "raw": {**latency_summary(raw), "over_100ms_share": _slow_share(raw)}}


async def sample_rss(pid: int, samples: list[tuple[float, int]], every_s: float) -> None:
    """Append (time, RSS) of process `pid` to `samples` every `every_s`, until cancelled."""
    while True:
        value = rss_bytes(pid)
        if value is not None:
            samples.append((time.monotonic(), value))
        await asyncio.sleep(every_s)


def _mb(value: float) -> float:
    return round(value / 2**20, 1)


def rss_figures(samples: list[tuple[float, int]]) -> dict | None:
    """Start, end (medians of the first and last three samples), max, and the least-squares slope."""
    if len(samples) < 2:
        return None
    start, end = statistics.median(v for _, v in samples[:3]), statistics.median(v for _, v in samples[-3:])
    minutes = [(t - samples[0][0]) / 60 for t, _ in samples]
    slope = statistics.linear_regression(minutes, [v / 2**20 for _, v in samples]).slope
    return {"samples": len(samples), "start_mb": _mb(start), "end_mb": _mb(end),
            "max_mb": _mb(max(v for _, v in samples)), "slope_mb_per_min": round(slope, 3),
            "end_over_start": round(end / start, 3)}
