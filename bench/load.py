"""Bounded mixed load through a real server, with hang-ups, a /healthz prober and an RSS soak (issue 15).

    .venv/bin/python -m bench.load [--clients 64] [--seconds 60] [--soak-seconds 600] [--hangup 0.1]
                                   [--model-dir DIR] [--server-flags "--max-queue 32"]
                                   [--out bench/results/load_cpu.json]

A locust-like client written with asyncio and httpx. It starts webui.py on a free loopback port with a
random tiny mT5 (tests.tiny_model; or --model-dir), waits for /readyz 200, warms each route once
untimed, then runs exactly CLIENTS clients, each with its own keep-alive connection, sending requests
back to back for SECONDS, then SOAK_SECONDS more of the same load (the soak). The mix per request:
POST /augment 35% (1 text, 1-3 variants, max_length 16-32), POST /augment_batch 10% (5-20 texts,
2 variants, max_length 16), POST /classify 25% (3-5 labels), POST /generate 20% (task title or
sentiment, as GET /tasks lists them), GET /healthz 10%. Every request has a timeout (120 s).

Hang-ups: with probability HANGUP a client sends its request (not /healthz) on a fresh raw connection
and closes it after a random delay of 0-HANGUP_DELAY_MAX s, before the answer arrives; an answer that
starts arriving first is read, its status and body counted like any other (its latency is not: only
answers faster than the delay get there). The client then goes on with its own connection. A client
answered 503 with Retry-After waits min(Retry-After, 1 s), as a polite client does.

Measured:
- per phase and route: count by status, latency p50/p95/p99/max of 2xx answers and of the rest;
  503s with and without Retry-After; failures; non-2xx bodies not in the uniform error shape
  {"error": {"code", "message", "field"}, "request_id"};
- failures: every 5xx but a 503 carrying Retry-After (a 503 draining/not_ready without it counts),
  and every request that timed out, broke off or was closed by the server;
- /healthz from a prober in its own process, on its own connection, every PROBE_INTERVAL s
  throughout: p50/p95/p99/max and the share of probes over 100 ms, corrected for coordinated
  omission (a probe stuck for L ms also counts for the probes due meanwhile: L-100, L-200, ... ms;
  the uncorrected figures sit under "raw");
- the server's RSS (VmRSS) every RSS_INTERVAL s; over the soak: start, end, max and a least-squares
  slope in MB/minute. Start and end are medians of the first and last three soak samples;
- after the clients stop: /readyz once more (with any queue/waiting figure it carries) and /healthz;
  the server's exit code after SIGTERM.

Targets: no_5xx_other_than_503_with_retry_after; nothing_hung (no timeouts or broken connections);
healthz_p99_under_100ms (prober, whole run); error_bodies_uniform; ready_after_load;
queue_drained_after_load (/readyz's queue: nothing running or waiting; null without one); rss_flat: the
soak's slope is under 5 MB/min AND its end RSS is within 10% of its start RSS (null with
--soak-seconds 0). Absolute latencies depend on the machine; read them beside the same run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import multiprocessing
import random
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.live import is_uniform_error, latency_summary, parse_answer, rss_bytes, served, tiny_model
from bench.machine import describe, emit
from bench.texts import LABELS, TEXTS
from bench.watch import SLOW_PROBE_MS, probe, probe_figures, rss_figures, sample_rss

log = logging.getLogger("bench.load")

MIX = {"augment": 0.35, "augment_batch": 0.10, "classify": 0.25, "generate": 0.20, "healthz": 0.10}
GENERATE_TASKS = ("title", "sentiment")
REQUEST_TIMEOUT_S = 120.0
PROBE_INTERVAL_S = 0.1
RSS_INTERVAL_S = 2.0
MAX_BACKOFF_S = 1.0
RSS_SLOPE_LIMIT_MB_PER_MIN = 5.0
RSS_END_TOLERANCE = 0.10
EXAMPLES_KEPT = 5
# Outcomes without an HTTP status; all but a hang-up are failures.
HUNG_UP, TIMEOUT, BROKEN, CLOSED_BY_SERVER = "hung_up", "timeout", "transport_error", "closed_by_server"


@dataclass
class RouteTally:
    status: collections.Counter = field(default_factory=collections.Counter)
    ok_ms: list[float] = field(default_factory=list)
    other_ms: list[float] = field(default_factory=list)
    with_retry_after: int = 0
    without_retry_after: int = 0
    failures: int = 0
    nonuniform: int = 0

    def table(self) -> dict:
        return {"requests": sum(self.status.values()), "status": dict(sorted(self.status.items())),
                "latency_2xx": latency_summary(self.ok_ms), "latency_other": latency_summary(self.other_ms),
                "503_with_retry_after": self.with_retry_after, "503_without_retry_after": self.without_retry_after,
                "failures": self.failures, "nonuniform_error_bodies": self.nonuniform}


@dataclass
class Run:
    """Shared state of one load run: where the server is, when phases end, and what was counted."""

    host: str
    port: int
    pid: int
    soak_at: float
    deadline: float
    hangup: float
    hangup_delay_max: float
    generate_tasks: list[dict]
    tallies: dict = field(default_factory=lambda: collections.defaultdict(RouteTally))
    failures: collections.Counter = field(default_factory=collections.Counter)
    hangups: collections.Counter = field(default_factory=collections.Counter)
    bad_bodies: list = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)

    def phase(self, moment: float) -> str:
        return "load" if moment < self.soak_at else "soak"

    def record(self, phase: str, route: str, outcome: int | str, ms: float | None, headers=None,
               body: bytes = b"") -> None:
        """Count one outcome; `ms` None keeps it out of the latency figures."""
        tally = self.tallies[phase, route]
        tally.status[str(outcome)] += 1
        if outcome == HUNG_UP:
            return
        if isinstance(outcome, str):
            tally.failures += 1
            self.failures[outcome] += 1
            return
        if ms is not None:
            (tally.ok_ms if 200 <= outcome < 300 else tally.other_ms).append(ms)
        if 200 <= outcome < 300:
            return
        retry_after = bool(headers and headers.get("retry-after"))
        if outcome == 503:
            if retry_after:
                tally.with_retry_after += 1
            else:
                tally.without_retry_after += 1
        if outcome >= 500 and not (outcome == 503 and retry_after):
            tally.failures += 1
            self.failures[f"http_{outcome}"] += 1
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not is_uniform_error(parsed):
            tally.nonuniform += 1
            if len(self.bad_bodies) < EXAMPLES_KEPT:
                self.bad_bodies.append({"route": route, "status": outcome,
                                        "body": body[:300].decode("utf-8", "replace")})


def _text(rng: random.Random) -> str:
    return f"{rng.choice(TEXTS)}（{rng.randrange(10_000)}）"


def _request(route: str, rng: random.Random, generate_tasks: list[dict]) -> tuple[str, str, dict | None]:
    """Method, path and JSON body of one request to `route`."""
    if route == "augment":
        return "POST", "/augment", {"text": _text(rng), "num_return_sequences": rng.randint(1, 3),
                                    "max_length": rng.choice((16, 24, 32))}
    if route == "augment_batch":
        return "POST", "/augment_batch", {"texts": [_text(rng) for _ in range(rng.randint(5, 20))],
                                          "num_return_sequences": 2, "max_length": 16}
    if route == "classify":
        return "POST", "/classify", {"text": _text(rng), "labels": rng.sample(LABELS, rng.randint(3, 5))}
    if route == "generate":
        task = rng.choice(generate_tasks)
        return "POST", "/generate", {"task": task["name"], **{name: _text(rng) for name in task["fields"]},
                                     "max_length": 16}
    return "GET", "/healthz", None


async def _hang_up(run: Run, route: str, path: str, body: dict, rng: random.Random) -> None:
    """Send `body` on a fresh connection and close it after a random delay, unless the answer comes first."""
    started = time.monotonic()
    phase = run.phase(started)
    payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
    head = (f"POST {path} HTTP/1.1\r\nHost: {run.host}:{run.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode("latin-1")
    run.hangups["attempted"] += 1
    try:
        reader, writer = await asyncio.open_connection(run.host, run.port)
    except OSError:
        run.record(phase, route, BROKEN, 0.0)
        return
    try:
        writer.write(head + payload)
        await writer.drain()
        try:
            first = await asyncio.wait_for(reader.read(1), rng.uniform(0, run.hangup_delay_max))
        except asyncio.TimeoutError:
            run.hangups["hung_up"] += 1
            run.record(phase, route, HUNG_UP, 0.0)
            return
        if not first:
            run.record(phase, route, CLOSED_BY_SERVER, (time.monotonic() - started) * 1000)
            return
        run.hangups["answered_first"] += 1
        rest = await asyncio.wait_for(reader.read(), REQUEST_TIMEOUT_S)  # Connection: close ends the answer
        status, headers, answer = parse_answer(first + rest)
        # Only answers faster than the random delay get here: their latencies would flatter the figures.
        run.record(phase, route, status, None, headers, answer)
    except asyncio.TimeoutError:
        run.record(phase, route, TIMEOUT, (time.monotonic() - started) * 1000)
    except (OSError, ValueError, IndexError):
        run.record(phase, route, BROKEN, (time.monotonic() - started) * 1000)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _connection(run: Run) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://{run.host}:{run.port}", timeout=REQUEST_TIMEOUT_S,
                             limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))


async def _client(number: int, run: Run, seed: int) -> None:
    """One client: requests back to back on its own connection until the deadline."""
    rng = random.Random(seed * 1_000 + number)
    routes, weights = list(MIX), list(MIX.values())
    async with _connection(run) as client:
        while time.monotonic() < run.deadline:
            route = rng.choices(routes, weights)[0]
            method, path, body = _request(route, rng, run.generate_tasks)
            if route != "healthz" and rng.random() < run.hangup:
                await _hang_up(run, route, path, body, rng)
                continue
            started = time.monotonic()
            phase = run.phase(started)
            try:
                response = await client.request(method, path, json=body)
            except httpx.TimeoutException:
                run.record(phase, route, TIMEOUT, (time.monotonic() - started) * 1000)
                continue
            except httpx.TransportError:
                run.record(phase, route, BROKEN, (time.monotonic() - started) * 1000)
                continue
            run.record(phase, route, response.status_code, (time.monotonic() - started) * 1000,
                       response.headers, response.content)
            retry_after = response.headers.get("retry-after")
            if response.status_code == 503 and retry_after:
                with contextlib.suppress(ValueError):
                    await asyncio.sleep(min(float(retry_after), MAX_BACKOFF_S))


async def _drive(run: Run, clients: int, seed: int, rss_every_s: float) -> None:
    sampler = asyncio.create_task(sample_rss(run.pid, run.rss, rss_every_s))
    try:
        await asyncio.gather(*(_client(number, run, seed) for number in range(clients)))
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    value = rss_bytes(run.pid)
    if value is not None:
        run.rss.append((time.monotonic(), value))


def _after(url: str) -> dict:
    """/readyz and /healthz once the clients have stopped."""
    with httpx.Client(base_url=url, timeout=30) as client:
        readiness = client.get("/readyz")
        health = client.get("/healthz")
    body = readiness.json()
    queue = body.get("queue")
    return {"readyz_status": readiness.status_code, "readyz": body, "queue": queue,
            "queue_drained": None if queue is None else queue["running"] == queue["waiting"] == 0,
            "healthz_status": health.status_code,
            "ready": readiness.status_code == 200 and health.status_code == 200}


def _warm_up(url: str, generate_tasks: list[dict]) -> None:
    """One untimed request per route: a fresh server's first engine calls set up buffers."""
    rng = random.Random(0)
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        for route in MIX:
            method, path, body = _request(route, rng, generate_tasks)
            client.request(method, path, json=body).raise_for_status()


def run(*, clients: int = 64, seconds: float = 60, soak_seconds: float = 600, hangup: float = 0.1,
        hangup_delay_max: float = 0.5, model_dir: Path | None = None, server_flags: list[str] | None = None,
        seed: int = 0, rss_every_s: float = RSS_INTERVAL_S) -> dict:
    server_flags = server_flags or []
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="dpp-load-") as scratch:
        work = Path(scratch)
        model = model_dir or tiny_model(work)
        with served(work, model, server_flags) as server:
            listed = httpx.get(server.url + "/tasks", timeout=30).json()["tasks"]
            generate_tasks = [task for task in listed if task["name"] in GENERATE_TASKS]
            if not generate_tasks:
                raise RuntimeError(f"GET /tasks lists none of {GENERATE_TASKS}")
            _warm_up(server.url, generate_tasks)

            stop, ready, sink = context.Event(), context.Event(), context.Queue()
            prober = context.Process(target=probe,
                                     args=("127.0.0.1", server.port, PROBE_INTERVAL_S, stop, ready, sink))
            prober.start()
            if not ready.wait(60):
                prober.kill()
                raise RuntimeError("the /healthz prober never answered")
            started, client_cpu = time.monotonic(), time.process_time()
            run_state = Run(host="127.0.0.1", port=server.port, pid=server.process.pid,
                            soak_at=started + seconds, deadline=started + seconds + soak_seconds,
                            hangup=hangup, hangup_delay_max=hangup_delay_max, generate_tasks=generate_tasks)
            log.info("load: %d clients, %.0f s + %.0f s soak", clients, seconds, soak_seconds)
            try:
                asyncio.run(_drive(run_state, clients, seed, rss_every_s))
            finally:
                stop.set()
                probes = sink.get(timeout=60)
                prober.join(timeout=30)
            ended = time.monotonic()
            wall, client_cpu = ended - started, time.process_time() - client_cpu
            after = _after(server.url)
            exit_code = server.stop()

    phases = ["load", "soak"] if soak_seconds > 0 else ["load"]
    routes = {phase: {route: run_state.tallies[phase, route].table() for route in MIX
                      if (phase, route) in run_state.tallies} for phase in phases}
    http_failures = sum(n for kind, n in run_state.failures.items() if kind.startswith("http_"))
    nonuniform = sum(tally.nonuniform for tally in run_state.tallies.values())
    probes = [sample for sample in probes if started <= sample[0] <= ended]
    healthz = {"whole": probe_figures(probes, PROBE_INTERVAL_S),
               **{phase: probe_figures([s for s in probes if run_state.phase(s[0]) == phase], PROBE_INTERVAL_S)
                  for phase in phases}}
    rss = {"load": rss_figures([s for s in run_state.rss if s[0] < run_state.soak_at])}
    soak_rss = rss_figures([s for s in run_state.rss if s[0] >= run_state.soak_at]) if soak_seconds > 0 else None
    rss["soak"] = soak_rss
    rss_flat = None if soak_rss is None else (
        soak_rss["slope_mb_per_min"] < RSS_SLOPE_LIMIT_MB_PER_MIN
        and abs(soak_rss["end_over_start"] - 1) <= RSS_END_TOLERANCE)
    return {
        "benchmark": "load: mixed routes with hang-ups, /healthz prober, RSS over a soak",
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "model": str(model_dir) if model_dir else "tests.tiny_model (random tiny mT5, Hugging Face layout)",
        "settings": {"clients": clients, "seconds": seconds, "soak_seconds": soak_seconds, "hangup": hangup,
                     "hangup_delay_max_s": hangup_delay_max, "request_timeout_s": REQUEST_TIMEOUT_S,
                     "probe_interval_s": PROBE_INTERVAL_S, "rss_interval_s": rss_every_s, "mix": MIX,
                     "generate_tasks": [task["name"] for task in generate_tasks], "server_flags": server_flags,
                     "seed": seed},
        "wall_s": round(wall, 1),
        "client_cpu_s": round(client_cpu, 1),  # the client shares the machine with the server
        "requests_per_s": round(sum(sum(t.status.values()) for t in run_state.tallies.values()) / wall, 1),
        "routes": routes,
        "hangups": dict(run_state.hangups),
        "healthz_probe": healthz,
        "rss": rss,
        "failures": {"count": sum(run_state.failures.values()), "by_kind": dict(run_state.failures)},
        "nonuniform_error_bodies": {"count": nonuniform, "examples": run_state.bad_bodies},
        "after": after,
        "server_exit_code": exit_code,
        "targets": {
            "no_5xx_other_than_503_with_retry_after": http_failures == 0,
            "nothing_hung": sum(run_state.failures.values()) == http_failures,
            "healthz_p99_under_100ms": healthz["whole"]["p99_ms"] is not None
            and healthz["whole"]["p99_ms"] < SLOW_PROBE_MS,
            "error_bodies_uniform": nonuniform == 0,
            "ready_after_load": after["ready"],
            "queue_drained_after_load": after["queue_drained"],
            "rss_flat": rss_flat,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60, help="the load phase")
    parser.add_argument("--soak-seconds", type=float, default=600, help="the soak after it; 0 skips it")
    parser.add_argument("--hangup", type=float, default=0.1, help="share of requests the client hangs up on")
    parser.add_argument("--hangup-delay-max", type=float, default=0.5, help="longest wait before hanging up, s")
    parser.add_argument("--model-dir", type=Path, help="serve this model instead of a tiny random one")
    parser.add_argument("--server-flags", default="", help='more webui.py flags, e.g. "--max-queue 32"')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = run(clients=args.clients, seconds=args.seconds, soak_seconds=args.soak_seconds, hangup=args.hangup,
                 hangup_delay_max=args.hangup_delay_max, model_dir=args.model_dir,
                 server_flags=shlex.split(args.server_flags), seed=args.seed)
    return emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
