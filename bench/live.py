"""What bench.load and bench.fairness share: a real server on a tiny model, its RSS, latency summaries."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import LiveServer, start_server

log = logging.getLogger(__name__)

ERROR_FIELDS = ("code", "message", "field")


def tiny_model(work: Path) -> Path:
    """A random tiny mT5 (Hugging Face layout) built under `work` in seconds."""
    from tests.tiny_model import build_tiny_models  # torch: only in the process that builds it

    return build_tiny_models(work / "tiny-mt5")["huggingface"]


@contextlib.contextmanager
def served(work: Path, model_dir: Path, flags: list[str]) -> Iterator[LiveServer]:
    """webui.py on a free loopback port with its logs under `work`, ready (/readyz 200); stopped after."""
    server = start_server(work, "--model-dir", str(model_dir), *flags)
    log.info("server pid=%d at %s", server.process.pid, server.url)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def rss_bytes(pid: int) -> int | None:
    """Resident set size (VmRSS) of a live process, in bytes; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def percentile(ordered: list[float], share: float) -> float:
    """The `share` (0-1) quantile of sorted values, interpolating between neighbours."""
    if len(ordered) == 1:
        return ordered[0]
    position = share * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(values_ms: list[float]) -> dict:
    """Count, p50, p95, p99 and max of latencies in milliseconds (None where there are none)."""
    ordered = sorted(values_ms)
    if not ordered:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    return {"count": len(ordered), "p50_ms": round(percentile(ordered, 0.50), 1),
            "p95_ms": round(percentile(ordered, 0.95), 1), "p99_ms": round(percentile(ordered, 0.99), 1),
            "max_ms": round(ordered[-1], 1)}


def is_uniform_error(body: object) -> bool:
    """True for the contract's error body: {"error": {"code", "message", "field"}, "request_id"}."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict) or "request_id" not in body:
        return False
    error = body["error"]
    return all(name in error for name in ERROR_FIELDS) and isinstance(error["code"], str) \
        and isinstance(error["message"], str)


def parse_answer(data: bytes) -> tuple[int, dict, bytes]:
    """Status, headers (lower-case names) and body of an HTTP/1.1 answer read whole from a raw connection."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body
