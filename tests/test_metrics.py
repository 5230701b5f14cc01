"""/metrics after known traffic: each counter moved by exactly what was sent."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import start_server
from tests.test_jobs_api import submit, wait_done

TEXTS = ["快递员把包裹放在门口就走了，也没有打电话通知。", "物流很快，包装也很结实。", "客服回复很及时，问题都解决了。"]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("metrics"), "--model-dir", str(tiny_models["huggingface"]))
    yield live
    live.stop()


def scrape(url: str, **headers: str) -> dict[tuple[str, tuple], float]:
    answer = requests.get(url + "/metrics", headers=headers, timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_by_exactly_the_traffic_sent(server, tmp_path):
    before = scrape(server.url)
    lexical = requests.post(server.url + "/augment_batch", json={"texts": TEXTS, "engine": "lexical",
                                                                 "num_return_sequences": 2, "seed": 1}, timeout=60)
    assert lexical.status_code == 200
    model = [requests.post(server.url + "/augment", json={"text": text, "num_return_sequences": 2, "max_length": 8,
                                                          "seed": 1, "quality": "on"}, timeout=120) for text in TEXTS[:2]]
    assert all(answer.status_code == 200 for answer in model)
    empty = requests.post(server.url + "/augment", json={"text": ""}, timeout=30)
    assert empty.status_code == 422
    unknown = requests.get(server.url + "/jobs/no-such-job", timeout=30)
    assert unknown.status_code == 404
    after = scrape(server.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("dpp_requests_total", route="/augment_batch", method="POST", status="200") == 1
    assert moved("dpp_requests_total", route="/augment", method="POST", status="200") == 2
    assert moved("dpp_requests_total", route="/augment", method="POST", status="422") == 1
    assert moved("dpp_requests_total", route="/jobs/{job_id}", method="GET", status="404") == 1  # never the id
    assert not any(name == "dpp_requests_total" and "no-such-job" in str(labels) for name, labels in after)
    assert moved("dpp_request_seconds_count", route="/augment") == 3
    # The lexical engine: one call for the three texts (no gate, so no second round).
    assert moved("dpp_engine_call_seconds_count", engine="lexical") == 1
    assert moved("dpp_engine_call_prompts_sum", engine="lexical") == len(TEXTS)
    # The gate's drops are the ones the answers reported, reason by reason.
    reported: dict[str, int] = {}
    for answer in model:
        for reason, count in answer.json()["dropped"].items():
            reported[reason] = reported.get(reason, 0) + count
    assert sum(reported.values()) > 0  # the tiny model's noise is dropped
    for reason, count in reported.items():
        assert moved("dpp_gate_dropped_total", reason=reason) == count, reason
    # The model's calls and tokens: at least one call per request, at most max_length + 1 tokens per output row.
    calls = moved("dpp_engine_call_seconds_count", engine="mt5")
    assert calls >= 2
    rows = moved("dpp_engine_call_prompts_sum", engine="mt5") * 2
    assert 0 < moved("dpp_generated_tokens_total", engine="mt5") <= rows * (8 + 1)
    assert value(after, "dpp_model_load_seconds", engine="mt5") > 0
    assert value(after, "dpp_queue_requests", state="waiting") == 0 and value(after, "dpp_queue_limit") == 64


def test_jobs_are_counted_by_state(server, tmp_path):
    before = scrape(server.url)
    path = tmp_path / "rows.csv"
    path.write_text("text\n" + "\n".join(TEXTS) + "\n", encoding="utf-8")
    job = submit(server.url, path, text_col="text", engine="lexical", num_return_sequences=1)
    assert job.status_code == 202, job.text
    assert wait_done(server.url, job.json()["id"])["state"] == "done"
    after = scrape(server.url)
    assert value(after, "dpp_jobs", state="done") - value(before, "dpp_jobs", state="done") == 1
    assert all(("dpp_jobs", (("state", state),)) in after for state in ("queued", "running", "failed", "cancelled"))
