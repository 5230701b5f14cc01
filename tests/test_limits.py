"""Rate limits: a burst over the limit gets 429 with Retry-After; other keys and other clients are unaffected;
X-Forwarded-For counts only from a trusted proxy."""

from __future__ import annotations

import pytest
import requests

from app.limits import MAX_CLIENTS, RateLimit
from app.settings import Settings, SettingsError
from tests.conftest import start_server

KEYS = ["limit-key-one-9f8", "limit-key-two-3c1"]
RATE, BURST = 0.2, 3  # one request back every 5 s: nothing refills while a test sends its burst


def test_a_bucket_holds_the_burst_and_refills_at_the_rate():
    limit = RateLimit(None, rate=2.0, burst=3, keys=None)
    assert [limit.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.take("a", 0.0) == pytest.approx(0.5)  # one token back after half a second
    assert limit.take("b", 0.0) == 0.0  # another client has its own bucket
    assert limit.take("a", 0.5) == 0.0 and limit.take("a", 0.5) == pytest.approx(0.5)
    assert [limit.take("a", 100.0) for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # never more than the burst


def test_idle_clients_are_forgotten_when_there_are_many():
    limit = RateLimit(None, rate=1.0, burst=2, keys=None)
    for number in range(MAX_CLIENTS):
        limit.take(f"client {number}", 0.0)
    limit.take("one more", 10.0)  # the others are full again by now: forgotten
    assert len(limit.buckets) == 1


@pytest.mark.parametrize("settings, problem", [
    ({"rate_limit": -1}, "rate_limit must be"), ({"rate_burst": 0}, "rate_burst must be"),
    ({"trusted_proxies": "10.0.0.1, nginx"}, "'nginx' is not an address"),
])
def test_limits_that_cannot_work_are_refused_at_start(settings, problem):
    with pytest.raises(SettingsError, match=problem):
        Settings(**settings)


def _burst(url: str, count: int, **headers: str) -> list[requests.Response]:
    return [requests.get(url + "/tasks", headers=headers, timeout=30) for _ in range(count)]


@pytest.fixture(scope="module")
def keyed_and_limited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limited")
    (tmp / "keys").write_text("\n".join(KEYS) + "\n", encoding="utf-8")
    server = start_server(tmp, "--engine", "lexical", "--no-ui", "--api-keys-file", str(tmp / "keys"),
                          "--rate-limit", str(RATE), "--rate-burst", str(BURST), "--metrics-open")
    yield server
    server.stop()


def test_a_key_over_its_burst_gets_429_with_retry_after_and_other_keys_do_not(keyed_and_limited):
    url = keyed_and_limited.url
    answers = _burst(url, BURST + 1, **{"X-API-Key": KEYS[0]})
    assert [a.status_code for a in answers] == [200] * BURST + [429]
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limited" and "每秒最多 0.2 个请求" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 5
    assert refused.headers["X-Request-ID"] == refused.json()["request_id"]
    assert [a.status_code for a in _burst(url, BURST, **{"Authorization": f"Bearer {KEYS[1]}"})] == [200] * BURST
    assert all(requests.get(url + "/healthz", timeout=10).status_code == 200 for _ in range(2 * BURST))
    schema = requests.get(url + "/openapi.json", headers={"X-API-Key": KEYS[1]}, timeout=30)
    assert schema.status_code == 429  # the second key's burst is spent too


def test_open_metrics_need_no_key_and_are_never_limited(keyed_and_limited):
    scrapes = [requests.get(keyed_and_limited.url + "/metrics", timeout=10) for _ in range(2 * BURST)]
    assert [s.status_code for s in scrapes] == [200] * 2 * BURST and "dpp_requests_total" in scrapes[-1].text


def test_guessing_keys_is_limited_by_address(keyed_and_limited):
    codes = [a.status_code for a in _burst(keyed_and_limited.url, BURST + 1, **{"X-API-Key": "guess"})]
    assert codes == [401] * BURST + [429]


@pytest.mark.parametrize("trusted", [False, True])
def test_forwarded_addresses_count_only_from_a_trusted_proxy(tmp_path, trusted):
    flags = ("--trusted-proxies", "127.0.0.1") if trusted else ()
    server = start_server(tmp_path, "--engine", "lexical", "--no-ui", "--rate-limit", str(RATE), "--rate-burst", "2",
                          *flags)
    try:
        first = [a.status_code for a in _burst(server.url, 3, **{"X-Forwarded-For": "203.0.113.7"})]
        assert first == [200, 200, 429]
        other = requests.get(server.url + "/tasks", headers={"X-Forwarded-For": "203.0.113.8"}, timeout=30)
        # From a trusted proxy, another forwarded client has its own bucket; from anyone else the header is
        # ignored, so a client cannot get a fresh bucket by writing one.
        assert other.status_code == (200 if trusted else 429)
    finally:
        server.stop()
