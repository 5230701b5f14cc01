"""Dynamic batching: concurrent requests share engine calls, and each gets exactly its own answer."""

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.errors import InvalidParameter, Overloaded
from app.params import GenerationParams
from tests.conftest import run, start_server
from tests.test_service import ScriptedEngine, make_service


class SlowEcho(ScriptedEngine):
    """Answers each prompt with its own marked copy, after a pause that lets requests pile up."""

    def __init__(self, pause_s=0.05, fail_on=None):
        super().__init__(self._answer)
        self.pause_s, self.fail_on = pause_s, fail_on

    def _answer(self, prompts, params):
        time.sleep(self.pause_s)
        if self.fail_on and any(self.fail_on in prompt for prompt in prompts):
            raise InvalidParameter(f"引擎拒绝了 {self.fail_on}", field="text")
        return [[f"{prompt}·{params.temperature}"] for prompt in prompts]


def run_together(service, jobs):
    """service.augment for each (text, params) at once, on one loop; results (or errors) in order."""
    async def scenario():
        return await asyncio.gather(*(service.augment([text], params) for text, params in jobs),
                                    return_exceptions=True)

    return [answer if isinstance(answer, Exception) else answer.variants[0] for answer in run(scenario())]


ONE = GenerationParams(num_return_sequences=1)


def test_concurrent_requests_share_calls_and_each_gets_its_own_answer():
    engine = SlowEcho()
    service = make_service(engine, batch_wait_ms=20)
    results = run_together(service, [(f"第{i}条", ONE) for i in range(12)])
    assert results == [[f"第{i}条·0.8"] for i in range(12)]
    assert len(engine.calls) < 12
    assert sorted(p for prompts, _ in engine.calls for p in prompts) == sorted(f"第{i}条" for i in range(12))


def test_calls_never_exceed_the_batch_size_nor_mix_parameters():
    engine = SlowEcho()
    service = make_service(engine, batch_wait_ms=20, max_batch_size=4)
    warm, cool = ONE, ONE.with_changes(temperature=0.5)
    jobs = [(f"第{i}条", warm if i % 2 else cool) for i in range(16)]
    results = run_together(service, jobs)
    assert results == [[f"第{i}条·{(warm if i % 2 else cool).temperature}"] for i in range(16)]
    assert all(len(prompts) <= 4 for prompts, _ in engine.calls)
    for prompts, params in engine.calls:
        assert {int(p[1:-1]) % 2 for p in prompts} == {1 if params == warm else 0}


def test_a_long_or_wide_request_runs_in_calls_no_bigger_than_a_batch_of_default_requests():
    engine = SlowEcho(pause_s=0)
    service = make_service(engine, max_batch_size=4, resample_rounds=0)  # a call: 4 x 3 variants x 128 tokens
    texts = [f"第{i}条" for i in range(8)]
    run(service.augment(texts, GenerationParams(num_return_sequences=10, max_length=64)))  # 640 a prompt
    assert [len(prompts) for prompts, _ in engine.calls] == [2, 2, 2, 2]
    engine.calls.clear()
    run(service.augment(texts, GenerationParams(num_return_sequences=1, max_length=16)))
    assert [len(prompts) for prompts, _ in engine.calls] == [4, 4]


def test_seeded_requests_always_run_alone():
    engine = SlowEcho()
    service = make_service(engine, batch_wait_ms=20)
    run_together(service, [(f"第{i}条", ONE.with_changes(seed=i)) for i in range(6)])
    assert sorted(len(prompts) for prompts, _ in engine.calls) == [1] * 6


def test_a_failing_request_does_not_fail_its_neighbours():
    engine = SlowEcho(fail_on="坏")
    service = make_service(engine, batch_wait_ms=30)
    results = run_together(service, [("好一", ONE), ("坏的", ONE), ("好二", ONE), ("好三", ONE)])
    assert results[0] == ["好一·0.8"] and results[2] == ["好二·0.8"] and results[3] == ["好三·0.8"]
    assert isinstance(results[1], InvalidParameter) and "坏" in results[1].message


def test_without_coalescing_every_request_has_its_own_call():
    engine = SlowEcho()
    service = make_service(engine, no_coalescing=True)
    run_together(service, [(f"第{i}条", ONE) for i in range(6)])
    assert sorted(len(prompts) for prompts, _ in engine.calls) == [1] * 6


async def _running(service, texts=("占用",), params=ONE) -> asyncio.Task:
    """A request that holds the engine, running once this returns."""
    task = asyncio.ensure_future(service.augment(list(texts), params))
    while not service.queue()["running"]:
        await asyncio.sleep(0.005)
    return task


async def _waiting(service, count: int, text="排队") -> list[asyncio.Task]:
    tasks = [asyncio.ensure_future(service.augment([f"{text}{i}"], ONE)) for i in range(count)]
    await asyncio.sleep(0.05)
    return tasks


def test_a_full_queue_answers_overloaded_with_a_retry_time_at_once():
    service = make_service(SlowEcho(pause_s=0.5), max_queue=2)

    async def scenario():
        running = await _running(service)
        waiting = await _waiting(service, 2)
        assert service.queue() == {"running": 1, "waiting": 2, "max_queue": 2}
        started = time.monotonic()
        with pytest.raises(Overloaded) as caught:
            await service.augment(["再来"], ONE)
        refused_after = time.monotonic() - started
        answers = await asyncio.gather(running, *waiting)
        return caught.value, refused_after, answers

    error, refused_after, answers = run(scenario())
    assert error.status == 503 and error.retry_after >= 1 and "排队的请求已满（2 个）" in error.message
    assert refused_after < 0.1  # decided at the door, not after a wait
    assert [answer.variants for answer in answers] == [[["占用·0.8"]], [["排队0·0.8"]], [["排队1·0.8"]]]
    assert service.queue() == {"running": 0, "waiting": 0, "max_queue": 2}


def test_an_accepted_request_is_finished_even_when_the_queue_fills_behind_it():
    service = make_service(SlowEcho(pause_s=0.1), max_queue=1, max_batch_size=1)

    async def scenario():
        first = await _running(service, ["甲", "乙", "丙"])
        second = asyncio.ensure_future(service.augment(["丁"], ONE))  # the queue is full from now on
        return await asyncio.gather(first, second)

    first, second = run(scenario())
    assert first.variants == [["甲·0.8"], ["乙·0.8"], ["丙·0.8"]]
    assert second.variants == [["丁·0.8"]]


def test_a_cancelled_request_leaves_the_queue_at_once_and_never_runs():
    engine = SlowEcho(pause_s=0.3)
    service = make_service(engine, max_queue=1)

    async def scenario():
        running = await _running(service)
        [queued] = await _waiting(service, 1, "要取消")
        queued.cancel()
        await asyncio.sleep(0)
        # Its place is free at once: another request is queued instead of refused.
        assert service.queue()["waiting"] == 0
        after = await service.augment(["接着来"], ONE)
        await running
        return after

    assert run(scenario()).variants == [["接着来·0.8"]]
    assert all("要取消" not in prompt for prompts, _ in engine.calls for prompt in prompts)


def test_a_request_cancelled_as_an_engine_call_ends_never_stalls_the_loop():
    """The worker chooses the next call in the same loop turn that the running call's answer arrives. A request
    cancelled just before that turn has its future cancelled at once but leaves the queue only when its own task
    next runs, which is after the worker's. The worker must pass over it: choosing it, it once found nothing to
    run and chose it again, for ever, and the whole server stopped answering (seen as a DELETE /jobs/{id} that
    never came back). The loop runs in a thread of its own here, so that such a stall fails the test."""
    release = threading.Event()

    def answer(prompts, params):
        if "占用" in prompts[0]:
            release.wait(10)
        return [[f"{prompt}·{params.seed}"] for prompt in prompts]

    engine = ScriptedEngine(answer)
    service = make_service(engine, batch_wait_ms=50)

    async def scenario():
        loop = asyncio.get_running_loop()
        running = await _running(service)
        cancelled = asyncio.ensure_future(service.augment(["取消"], ONE))
        await asyncio.sleep(0.01)
        seeded = asyncio.ensure_future(service.augment(["带种子"], ONE.with_changes(seed=7)))
        await asyncio.sleep(0.05)
        # The engine call ends while the loop is busy here; its answer is posted to the loop first, then the
        # cancellation: in the next turn the worker runs before the cancelled request's task.
        release.set()
        time.sleep(0.3)
        loop.call_soon(cancelled.cancel)
        await running
        return (await seeded).variants

    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(variants=asyncio.run(scenario())), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the event loop stalled"
    assert outcome["variants"] == [["带种子·7"]]
    assert all("取消" not in prompt for prompts, _ in engine.calls for prompt in prompts)


def test_a_short_request_is_not_starved_by_a_long_batch():
    """Turns go to the request that has had the least engine time: a single text sent while a 50-text
    batch runs waits for one call of it, not for the whole batch."""
    engine = SlowEcho(pause_s=0.05)
    service = make_service(engine, max_batch_size=5, batch_wait_ms=0)
    finished = []

    async def timed(coroutine, name):
        await coroutine
        finished.append((name, len(engine.calls)))

    async def scenario():
        batch = asyncio.ensure_future(timed(service.augment([f"批{i}" for i in range(50)], ONE), "batch"))
        while len(engine.calls) < 2:
            await asyncio.sleep(0.005)
        sent_at = len(engine.calls)
        await timed(service.augment(["单条"], ONE), "single")
        await batch
        return sent_at

    sent_at = run(scenario())
    single_done = dict(finished)["single"]
    assert single_done <= sent_at + 2  # the call running when it came, then its own
    assert dict(finished)["batch"] == 11 and [name for name, _ in finished] == ["single", "batch"]


# Twelve texts, ten long samples each (61,440 tokens, within the default work budget), on the tiny model:
# twelve engine calls, several seconds in all.
SLOW_BATCH = {"texts": [f"第{i}条文本" for i in range(12)], "num_return_sequences": 10, "max_length": 512,
              "temperature": 1.5, "top_k": 0}
QUICK = {"max_length": 8}


def _occupy_server(server, pool):
    """Start a long request on `server`; returns its future once it holds the engine."""
    running = pool.submit(requests.post, server.url + "/augment_batch", json=SLOW_BATCH, timeout=300)
    time.sleep(0.5)
    return running


@pytest.fixture(scope="module")
def one_place_server(tiny_models, tmp_path_factory):
    """A real server whose queue holds one request besides the one running."""
    server = start_server(tmp_path_factory.mktemp("one-place"), "--model-dir", str(tiny_models["huggingface"]),
                          "--max-queue", "1", "--no-coalescing")
    yield server
    server.stop()


def test_a_full_server_says_when_to_come_back(one_place_server):
    server = one_place_server
    with ThreadPoolExecutor(4) as pool:
        running = _occupy_server(server, pool)
        later = [pool.submit(requests.post, server.url + "/augment", json={"text": f"第{i}条", **QUICK}, timeout=300)
                 for i in range(3)]
        answers = [future.result() for future in later]
        assert running.result().status_code == 200
    assert sorted(answer.status_code for answer in answers) == [200, 503, 503]
    for answer in answers:
        if answer.status_code == 503:
            assert answer.json()["error"]["code"] == "overloaded" and int(answer.headers["retry-after"]) >= 1


def test_a_client_that_hangs_up_stops_costing_the_engine_and_frees_its_place(one_place_server):
    server = one_place_server
    logged_before = len(server.log_text())
    with ThreadPoolExecutor(1) as pool:
        running = _occupy_server(server, pool)
        body = json.dumps(SLOW_BATCH).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"POST /augment_batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(0.5)
        deadline = time.monotonic() + 10
        while "the client hung up" not in server.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running.done(), "the first request ended too soon to test anything"
        # Its place is free at once: only the first request is admitted now (running, or between two calls).
        queue = requests.get(server.url + "/readyz", timeout=5).json()["queue"]
        assert queue["running"] + queue["waiting"] == 1
        assert running.result().status_code == 200
    log = server.log_text()[logged_before:]
    assert "the client hung up" in log
    assert log.count("augment engine=mt5 items=12 ") == 1  # the first request's; the other stopped on hang-up
