"""Fairness through a real server: heavy batch clients must not starve an interactive one (issue 15).

    .venv/bin/python -m bench.fairness [--rounds 2] [--arm-seconds 20] [--heavy-clients 1,4]
                                       [--model-dir DIR] [--server-flags "..."]
                                       [--out bench/results/fairness_cpu.json]

webui.py serves a random tiny mT5 (tests.tiny_model; or --model-dir) on a free loopback port. One
interactive client sends POST /augment (1 text, max_length 32, other parameters default) back to back
for ARM_SECONDS in each arm:

- idle: alone;
- under_batch_N (N from --heavy-clients, default 1 and 4): while N heavy clients each send POST
  /augment_batch back to back, 50 texts x 5 variants x max_length 256 with top_k 0 (64,000 tokens of
  work, inside the 65,536 budget a server may enforce with 422 work_too_large). The heavy clients
  start half a second first; when the arm ends they stop sending and their batches in flight finish.

Each round first times one heavy batch alone (heavy_alone_s), then runs the arms; odd rounds run the
arms in reverse order. Reported per arm, pooled over rounds and per round: the interactive latency
p50/p95/max and status counts; the heavy batches completed and their statuses; the ratios
under_batch/idle of p50 and p95. A heavy client refused with a 4xx stops (its arm then says so); one
answered 5xx or cut off waits 1 s and tries again. Every request has a timeout.

Targets: interactive_p95_below_one_batch_time (in every under_batch arm, the interactive p95 is below
the median heavy_alone_s); interactive_all_answered (every interactive request got 200);
heavy_batches_all_served (every heavy batch got 200, so the arms loaded the server as meant).
Measured side by side in one run: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import collections
import logging
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.live import latency_summary, served, tiny_model
from bench.machine import describe, emit
from bench.texts import TEXTS

log = logging.getLogger("bench.fairness")

HEAVY_TEXTS = 50
HEAVY_PARAMS = {"num_return_sequences": 5, "max_length": 256, "top_k": 0, "temperature": 1.0}
INTERACTIVE_PARAMS = {"max_length": 32}
INTERACTIVE_TIMEOUT_S = 120.0
HEAVY_TIMEOUT_S = 900.0
HEAVY_HEAD_START_S = 0.5
MAX_BACKOFF_S = 1.0


def _heavy_body(number: int) -> dict:
    texts = [f"{TEXTS[i % len(TEXTS)]}（批{number}-{i}）" for i in range(HEAVY_TEXTS)]
    return {"texts": texts, **HEAVY_PARAMS}


def _post(client: httpx.Client, path: str, body: dict,
          timeout: float) -> tuple[int | str, float, httpx.Response | None]:
    """Status (or the transport error's name), seconds taken, and the response."""
    started = time.monotonic()
    try:
        response = client.post(path, json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.monotonic() - started, None
    return response.status_code, time.monotonic() - started, response


def _heavy_alone(url: str) -> float:
    with httpx.Client(base_url=url) as client:
        status, seconds, response = _post(client, "/augment_batch", _heavy_body(0), HEAVY_TIMEOUT_S)
    if status != 200:
        detail = response.text[:300] if response is not None else ""
        raise RuntimeError(f"a heavy batch alone was answered {status}: {detail}")
    return seconds


def _heavy_client(url: str, number: int, stop: threading.Event, outcomes: list) -> None:
    """Send heavy batches back to back until `stop`; a 4xx ends the client (retrying cannot help)."""
    body = _heavy_body(number)
    with httpx.Client(base_url=url) as client:
        while not stop.is_set():
            status, seconds, response = _post(client, "/augment_batch", body, HEAVY_TIMEOUT_S)
            code = None
            if response is not None and status != 200:
                try:
                    code = response.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "unreadable"
            outcomes.append((status, seconds, code))
            if isinstance(status, int) and 400 <= status < 500:
                return
            if status != 200:  # overloaded, or a broken connection: wait a little, as a polite client does
                stop.wait(MAX_BACKOFF_S)


def _arm(url: str, heavy_clients: int, seconds: float) -> dict:
    """The interactive client's latencies for `seconds`, beside `heavy_clients` heavy ones."""
    stop, outcomes = threading.Event(), []
    workers = [threading.Thread(target=_heavy_client, args=(url, number + 1, stop, outcomes), daemon=True)
               for number in range(heavy_clients)]
    for worker in workers:
        worker.start()
    if workers:
        time.sleep(HEAVY_HEAD_START_S)
    latencies, statuses = [], collections.Counter()
    with httpx.Client(base_url=url) as client:
        deadline, index = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            body = {"text": f"{TEXTS[index % len(TEXTS)]}（{index}）", **INTERACTIVE_PARAMS}
            status, taken, _ = _post(client, "/augment", body, INTERACTIVE_TIMEOUT_S)
            statuses[str(status)] += 1
            latencies.append(taken * 1000)
            index += 1
    stop.set()
    for worker in workers:
        worker.join(HEAVY_TIMEOUT_S)
    heavy_status = collections.Counter(str(status) if code is None else f"{status} {code}"
                                       for status, _, code in outcomes)
    completed = [taken for status, taken, _ in outcomes if status == 200]
    return {"latencies_ms": latencies, "status": statuses, "heavy_status": heavy_status,
            "heavy_completed": len(completed), "heavy_s": completed}


def _figures(summary: dict) -> dict:
    return {key: summary[key] for key in ("count", "p50_ms", "p95_ms", "max_ms")}


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 2) if top is not None and bottom else None


def run(*, rounds: int = 2, arm_seconds: float = 20, heavy_variants: tuple[int, ...] = (1, 4),
        model_dir: Path | None = None, server_flags: list[str] | None = None) -> dict:
    server_flags = server_flags or []
    arms = {"idle": 0, **{f"under_batch_{n}": n for n in heavy_variants}}
    measured: dict[str, list[dict]] = {name: [] for name in arms}
    alone: list[float] = []
    with tempfile.TemporaryDirectory(prefix="dpp-fairness-") as scratch:
        work = Path(scratch)
        model = model_dir or tiny_model(work)
        with served(work, model, server_flags) as server:
            with httpx.Client(base_url=server.url) as client:  # untimed: the first calls set up buffers
                _post(client, "/augment", {"text": TEXTS[0], **INTERACTIVE_PARAMS}, INTERACTIVE_TIMEOUT_S)
            for round_number in range(rounds):
                alone.append(_heavy_alone(server.url))
                log.info("round %d: one heavy batch alone took %.1f s", round_number, alone[-1])
                order = list(arms) if round_number % 2 == 0 else list(arms)[::-1]
                for name in order:
                    measured[name].append(_arm(server.url, arms[name], arm_seconds))
                    log.info("round %d arm %s: %d interactive, %d heavy completed", round_number, name,
                             len(measured[name][-1]["latencies_ms"]), measured[name][-1]["heavy_completed"])

    one_batch_s = statistics.median(alone)
    report_arms, pooled = {}, {}
    for name, runs in measured.items():
        pooled[name] = latency_summary([ms for one in runs for ms in one["latencies_ms"]])
        heavy_s = [s for one in runs for s in one["heavy_s"]]
        report_arms[name] = {
            "heavy_clients": arms[name],
            "interactive": _figures(pooled[name]),
            "interactive_status": dict(sum((one["status"] for one in runs), collections.Counter())),
            "per_round": [_figures(latency_summary(one["latencies_ms"])) for one in runs],
            **({"heavy_completed": sum(one["heavy_completed"] for one in runs),
                "heavy_status": dict(sum((one["heavy_status"] for one in runs), collections.Counter())),
                "heavy_batch_s_median": round(statistics.median(heavy_s), 2) if heavy_s else None}
               if arms[name] else {}),
        }
    under = [name for name in arms if arms[name]]
    idle = pooled["idle"]
    return {
        "benchmark": "fairness: an interactive /augment client beside heavy /augment_batch clients",
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "model": str(model_dir) if model_dir else "tests.tiny_model (random tiny mT5, Hugging Face layout)",
        "settings": {"rounds": rounds, "arm_seconds": arm_seconds, "heavy_variants": list(heavy_variants),
                     "heavy_request": f"{HEAVY_TEXTS} texts, " + ", ".join(f"{k} {v}" for k, v in HEAVY_PARAMS.items()),
                     "heavy_work_tokens": HEAVY_TEXTS * HEAVY_PARAMS["num_return_sequences"]
                     * HEAVY_PARAMS["max_length"],
                     "interactive_request": "1 text, " + ", ".join(f"{k} {v}" for k, v in INTERACTIVE_PARAMS.items()),
                     "server_flags": server_flags},
        "heavy_alone_s": {"per_round": [round(s, 2) for s in alone], "median": round(one_batch_s, 2)},
        "arms": report_arms,
        "ratios_under_batch_over_idle": {name: {"p50": _ratio(pooled[name]["p50_ms"], idle["p50_ms"]),
                                                "p95": _ratio(pooled[name]["p95_ms"], idle["p95_ms"])}
                                         for name in under},
        "targets": {
            "interactive_p95_below_one_batch_time": all(
                pooled[name]["p95_ms"] is not None and pooled[name]["p95_ms"] < one_batch_s * 1000 for name in under),
            "interactive_all_answered": all(set(arm["interactive_status"]) == {"200"} for arm in report_arms.values()),
            "heavy_batches_all_served": all(set(report_arms[name]["heavy_status"]) == {"200"} for name in under),
        },
        "note": "Arms alternate within one run; read the ratios and heavy_alone_s beside them.",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--arm-seconds", type=float, default=20, help="how long the interactive client runs per arm")
    parser.add_argument("--heavy-clients", default="1,4", help="heavy client counts, one under_batch arm each")
    parser.add_argument("--model-dir", type=Path, help="serve this model instead of a tiny random one")
    parser.add_argument("--server-flags", default="", help="more webui.py flags")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    variants = tuple(int(n) for n in args.heavy_clients.split(",") if n.strip())
    report = run(rounds=args.rounds, arm_seconds=args.arm_seconds, heavy_variants=variants,
                 model_dir=args.model_dir, server_flags=shlex.split(args.server_flags))
    return emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
