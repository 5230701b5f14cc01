"""Under load: health never waits, every request is counted at the door, nothing hangs; and SIGTERM drains.

Issue 15's finding, reproduced through a real server whose engine call takes 2 s (tests/slow_engine.py):
100 concurrent requests, with the default --max-queue and with --max-queue 16.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import time

import httpx
import pytest
import requests
from gradio_client import Client

from bench.watch import probe
from tests.conftest import start_server
from tests.slow_engine import echoed

CLIENTS = 100
HANG_UPS = 10  # clients among them that hang up before their answer
PROBE_EVERY_S = 0.05
HEALTHZ_LIMIT_MS = 100


def slow_server(tmp_path, *flags, pause_s: float = 2.0):
    return start_server(tmp_path, "--engine", "mt5", "--no-ui", *flags, program=("-m", "tests.slow_engine"),
                        DPP_TEST_ENGINE_PAUSE_S=str(pause_s))


async def _one(client: httpx.AsyncClient, number: int) -> tuple[str, object, httpx.Response | None]:
    """One client: a text or a batch of two; a few hang up after half a second."""
    texts = [f"第{number}条"] if number % 2 else [f"第{number}条甲", f"第{number}条乙"]
    request = (client.post("/augment", json={"text": texts[0], "num_return_sequences": 2}) if number % 2 else
               client.post("/augment_batch", json={"texts": texts, "num_return_sequences": 2}))
    if number < HANG_UPS:
        try:
            return "answered", texts, await asyncio.wait_for(request, 0.5)  # refused at once, or quick
        except TimeoutError:
            return "hung up", texts, None
    return "answered", texts, await request


async def _burst(url: str) -> list[tuple[str, object, httpx.Response | None]]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(_one(client, number) for number in range(CLIENTS)))


def _under_probe(server, work):
    """Run `work()` while another process probes /healthz every 50 ms on its own connection."""
    context = multiprocessing.get_context("spawn")
    stop, ready, sink = context.Event(), context.Event(), context.Queue()
    prober = context.Process(target=probe, args=("127.0.0.1", server.port, PROBE_EVERY_S, stop, ready, sink))
    prober.start()
    try:
        assert ready.wait(30)
        outcome = work()
    finally:
        stop.set()
    samples = sink.get(timeout=30)
    prober.join(10)
    return outcome, samples


@pytest.mark.parametrize("flags, max_queue", [((), 64), (("--max-queue", "16"), 16)])
def test_a_hundred_clients_health_answers_at_once_the_queue_refuses_politely_and_empties(tmp_path, flags,
                                                                                          max_queue):
    server = slow_server(tmp_path, *flags)
    try:
        outcomes, samples = _under_probe(server, lambda: asyncio.run(_burst(server.url)))
        queue = requests.get(server.url + "/readyz", timeout=5).json()["queue"]
    finally:
        server.stop()
    answered = [(texts, response) for kind, texts, response in outcomes if kind == "answered"]
    served = [(texts, response) for texts, response in answered if response.status_code == 200]
    refused = [response for _, response in answered if response.status_code != 200]
    # Every admitted request got exactly its own answer; the others a 503 that says when to come back.
    for texts, response in served:
        assert [item["augmented_texts"] for item in response.json().get("results", [response.json()])] == \
            [echoed(text, 2) for text in texts]
    for response in refused:
        assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded", response.text
        assert int(response.headers["retry-after"]) >= 1
    assert refused, "a hundred clients should overflow the queue"
    assert max_queue <= len(served) <= max_queue + 2 * 16 + HANG_UPS  # the queue, plus what was in the engine
    # /healthz never waited behind the work: every probe answered 200 within the limit.
    latencies = [ms for _, ms, outcome in samples if outcome == 200]
    assert len(latencies) == len(samples) > 20
    assert max(latencies) < HEALTHZ_LIMIT_MS, sorted(latencies)[-5:]
    assert queue == {"running": 0, "waiting": 0, "max_queue": max_queue}


def test_sigterm_drains_accepted_work_refuses_new_work_and_exits_0(tmp_path):
    server = slow_server(tmp_path, "--drain-seconds", "20")
    in_flight = asyncio.run(_send_then_signal(server))
    assert in_flight.status_code == 200 and in_flight.json()["augmented_texts"] == echoed("在途", 3)
    assert server.process.wait(timeout=20) == 0
    log = server.log_text()
    assert "SIGTERM: draining" in log and "drained: every accepted request was answered" in log


async def _sigterm_while_running(server, client: httpx.AsyncClient, text: str) -> asyncio.Future:
    """Send one request and, once the engine runs it, SIGTERM the server; returns the request's answer to come."""
    in_flight = asyncio.ensure_future(client.post("/augment", json={"text": text}))
    while (await client.get("/readyz")).json()["queue"]["running"] == 0:
        await asyncio.sleep(0.05)
    server.process.send_signal(signal.SIGTERM)
    return in_flight


async def _send_then_signal(server) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        in_flight = await _sigterm_while_running(server, client, "在途")
        await asyncio.sleep(0.3)
        readiness = await client.get("/readyz")
        assert readiness.status_code == 503 and readiness.json()["status"] == "draining"
        late = await client.post("/augment", json={"text": "迟到"})
        assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
        assert int(late.headers["retry-after"]) >= 1
        assert (await client.get("/healthz")).status_code == 200  # alive, only not ready
        return await in_flight


def test_a_drain_that_runs_out_of_time_answers_what_is_left_with_503_and_exits_0(tmp_path):
    server = slow_server(tmp_path, "--drain-seconds", "1", pause_s=10)
    started = time.monotonic()
    cut_short = asyncio.run(_start_then_signal(server))
    assert server.process.wait(timeout=20) == 0
    assert time.monotonic() - started < 8  # a second of drain, not the 10 s engine call
    assert cut_short.status_code == 503 and cut_short.json()["error"]["code"] == "draining"
    assert "未能在停止前完成" in cut_short.json()["error"]["message"] and cut_short.headers["retry-after"]
    assert "drain time over with 1 requests unanswered" in server.log_text()


async def _start_then_signal(server) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        return await (await _sigterm_while_running(server, client, "很慢"))


def test_the_gradio_api_is_admitted_by_the_same_queue_and_refused_in_the_same_words(tmp_path):
    server = start_server(tmp_path, "--engine", "mt5", "--max-queue", "2", program=("-m", "tests.slow_engine"),
                          DPP_TEST_ENGINE_PAUSE_S="1.5")
    try:
        client = Client(server.url, verbose=False)
        jobs = [client.submit(f"第{i}条", 1, api_name="/augment") for i in range(8)]
        outcomes = []
        for number, job in enumerate(jobs):
            try:
                outcomes.append(("ok", job.result(timeout=120) == echoed(f"第{number}条", 1)))
            except Exception as exc:  # noqa: BLE001 - the refusal is what the test reads
                outcomes.append(("refused", str(exc)))
        queue = requests.get(server.url + "/readyz", timeout=5).json()["queue"]
    finally:
        server.stop()
    served = [ok for kind, ok in outcomes if kind == "ok"]
    refusals = [message for kind, message in outcomes if kind == "refused"]
    assert served and all(served), outcomes
    assert refusals and all("服务繁忙：排队的请求已满（2 个）" in message for message in refusals), refusals
    assert queue["running"] == queue["waiting"] == 0
