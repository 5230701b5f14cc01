"""Dynamic batching: concurrent requests share engine calls, and each gets exactly its own answer."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.errors import InvalidParameter, Overloaded, RequestCancelled
from app.params import GenerationParams
from tests.conftest import start_server
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
    """Run service.augment for each (text, params) at once; return results (or errors) in order."""
    def one(job):
        text, params = job
        try:
            return service.augment([text], params).variants[0]
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            return exc

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(one, jobs))


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


def _hold_engine(service):
    """Occupy the engine with a slow request; returns once it runs."""
    threading.Thread(target=service.augment, args=(["占用"], ONE), daemon=True).start()
    time.sleep(0.1)


def test_a_full_queue_answers_overloaded_with_a_retry_time():
    service = make_service(SlowEcho(pause_s=1.0), max_queue=1)
    _hold_engine(service)
    waiting = threading.Thread(target=service.augment, args=(["排队"], ONE), daemon=True)
    waiting.start()
    time.sleep(0.1)
    with pytest.raises(Overloaded) as caught:
        service.augment(["再来"], ONE)
    assert caught.value.status == 503 and caught.value.retry_after >= 1


def test_an_accepted_request_is_finished_even_when_the_queue_fills_behind_it():
    service = make_service(SlowEcho(pause_s=0.2), max_queue=1, max_batch_size=1)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("a", service.augment(["甲", "乙", "丙"], ONE)))
    first.start()
    time.sleep(0.05)
    second = threading.Thread(target=lambda: results.setdefault("b", service.augment(["丁"], ONE)))
    second.start()  # queued behind the first one's first chunk: the queue is full from now on
    first.join(timeout=5)
    second.join(timeout=5)
    assert results["a"].variants == [["甲·0.8"], ["乙·0.8"], ["丙·0.8"]]
    assert results["b"].variants == [["丁·0.8"]]


def test_a_cancelled_request_leaves_the_queue_at_once():
    engine = SlowEcho(pause_s=1.0)
    service = make_service(engine, max_queue=1)
    _hold_engine(service)
    cancelled = threading.Event()
    outcome = {}

    def queued():
        try:
            service.augment(["要取消"], ONE, cancelled=cancelled)
        except RequestCancelled as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=queued)
    thread.start()
    time.sleep(0.1)
    cancelled.set()
    thread.join(timeout=1)
    assert isinstance(outcome.get("error"), RequestCancelled)
    # Its place is free: another request is queued instead of refused, and the cancelled one never ran.
    assert service.augment(["接着来"], ONE).variants == [["接着来·0.8"]]
    assert all("要取消" not in prompts for prompts, _ in engine.calls)


# Sixteen texts, ten long samples each, on the tiny model: one engine call of several seconds.
SLOW_BATCH = {"texts": [f"第{i}条文本" for i in range(16)], "num_return_sequences": 10, "max_length": 512,
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


def test_a_client_that_hangs_up_frees_its_place(one_place_server):
    server = one_place_server
    with ThreadPoolExecutor(1) as pool:
        running = _occupy_server(server, pool)
        body = json.dumps({"text": "会挂断的", **QUICK}).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"POST /augment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(0.3)
        time.sleep(1.0)  # the server notices within its poll interval
        assert not running.done(), "the first request ended too soon to test anything"
        third = requests.post(server.url + "/augment", json={"text": "后到的", **QUICK}, timeout=300)
        assert third.status_code == 200, third.text
        assert running.result().status_code == 200
    assert "the client hung up" in server.log_text()
