"""API keys: every surface refuses without a key and serves with one; the probes stay open; keys are never logged."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys

import pytest
import requests
from gradio_client import Client

from app import auth
from app.auth import KeysError, load_keys
from tests.conftest import ROOT, server_env, start_server

KEYS = ["team-alpha-7Hq2x9", "team-beta-Lm40pZ"]
ENV_KEY = "ops-env-key-55Ab"
WRONG = "team-alpha-7Hq2x0"  # all but the last character right
TEXT = "快递员把包裹放在门口就走了，也没有打电话通知。"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keyed")
    keys_file = tmp / "keys.txt"
    keys_file.write_text(f"# dpp keys\n{KEYS[0]}   # data team\n\n{KEYS[1]}\n", encoding="utf-8")
    server = start_server(tmp, "--engine", "lexical", "--api-keys-file", str(keys_file), DPP_API_KEY=ENV_KEY)
    yield server
    server.stop()


def _headers(key: str, how: str = "bearer") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if how == "bearer" else {"X-API-Key": key}


def test_keys_file_takes_one_key_per_line_with_comments_and_the_variable_besides(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\n\n  k1  # first\nk2\nk1\n", encoding="utf-8")
    keys = load_keys(keys_file, "k3")
    assert len(keys.digests) == 3  # k3, k1, k2; the repeat once
    assert all(keys.accepts(key) for key in ("k1", "k2", "k3"))
    assert not keys.accepts("k4") and not keys.accepts("") and not keys.accepts("k1 ")
    assert load_keys(None, "") is None  # open
    assert load_keys(None, "only").accepts("only")


@pytest.mark.parametrize("content, problem", [
    ("# no keys here\n\n", "holds no key"),
    ("two words\n", ":1: a key is one word"),
    ("ok-key\n密钥words\n", ":2: a key is one word of printable ASCII"),
])
def test_an_unusable_keys_file_is_an_error_that_never_shows_a_key(tmp_path, content, problem):
    keys_file = tmp_path / "keys"
    keys_file.write_text(content, encoding="utf-8")
    with pytest.raises(KeysError, match=problem) as raised:
        load_keys(keys_file, "")
    assert "words" not in str(raised.value).replace("one word", "")


def test_a_missing_keys_file_stops_the_server_at_start_with_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "webui.py"), "--port", "1", "--engine", "lexical",
                           "--api-keys-file", str(tmp_path / "absent")], env=server_env(), capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "cannot read API keys file" in done.stderr, done.stderr


def test_the_single_key_is_read_from_the_environment_only():
    done = subprocess.run([sys.executable, str(ROOT / "webui.py"), "--help"], env=server_env(), capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert "--api-keys-file" in done.stdout and "--api-key " not in done.stdout and "--api-key\n" not in done.stdout


@pytest.mark.parametrize("presented", [KEYS[0], KEYS[1], WRONG, "x", "x" * 500])
def test_checking_a_key_compares_fixed_size_digests_against_every_key(monkeypatch, presented):
    """Timing cannot tell how much of a key matched: every check makes the same comparisons, of SHA-256 digests
    (32 bytes whatever was sent), against every key, with the constant-time comparison."""
    keys = auth.ApiKeys.of([*KEYS, ENV_KEY])
    calls = []
    real = auth.hmac.compare_digest

    def counted(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counted)
    assert keys.accepts(presented) == (presented in KEYS)
    assert calls == [(32, 32)] * 3


def test_rest_refuses_without_a_key_and_serves_with_either_header(keyed):
    body = {"text": TEXT, "num_return_sequences": 3, "seed": 1}
    for route, method, payload in (("/augment", "post", body), ("/tasks", "get", None), ("/jobs", "get", None),
                                   ("/openapi.json", "get", None)):
        refused = requests.request(method, keyed.url + route, json=payload, timeout=30)
        assert refused.status_code == 401, route
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        error = refused.json()
        assert error["error"]["code"] == "unauthorized" and error["request_id"] == refused.headers["X-Request-ID"]
        for key, how in ((KEYS[0], "bearer"), (KEYS[1], "header"), (ENV_KEY, "bearer")):
            served = requests.request(method, keyed.url + route, json=payload, headers=_headers(key, how), timeout=60)
            assert served.status_code == 200, (route, how, served.text)
    answer = requests.post(keyed.url + "/augment", json=body, headers=_headers(KEYS[0]), timeout=60).json()
    assert answer["augmented_texts"] and all(text != TEXT for text in answer["augmented_texts"])


def test_probes_stay_open_and_metrics_need_a_key_unless_opened(keyed):
    assert requests.get(keyed.url + "/healthz", timeout=10).status_code == 200
    assert requests.get(keyed.url + "/readyz", timeout=10).json()["status"] == "ready"
    assert requests.get(keyed.url + "/metrics", timeout=10).status_code == 401  # --metrics-open: tests/test_limits.py
    assert requests.get(keyed.url + "/metrics", headers=_headers(KEYS[0]), timeout=10).status_code == 200


def test_a_wrong_key_is_refused_and_logged_with_the_address_never_the_key(keyed):
    refused = requests.post(keyed.url + "/augment", json={"text": TEXT}, headers=_headers(WRONG, "header"), timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["message"] == "API 密钥不正确"
    assert WRONG not in refused.text
    log = keyed.log_text()
    line = next(line for line in log.splitlines() if "wrong API key" in line and refused.headers["X-Request-ID"] in line)
    assert "127.0.0.1" in line
    assert not any(secret in log for secret in (WRONG, *KEYS, ENV_KEY))


def test_the_schema_says_how_to_send_a_key(keyed):
    schema = requests.get(keyed.url + "/openapi.json", headers=_headers(KEYS[1], "header"), timeout=30).json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert "401" in schema["paths"]["/augment"]["post"]["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_gradio_client_needs_the_key_in_its_headers(keyed):
    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(AuthenticationError):
        Client(keyed.url, verbose=False)
    with pytest.raises(AuthenticationError):
        Client(keyed.url, headers={"X-API-Key": WRONG}, verbose=False)
    client = Client(keyed.url, headers={"X-API-Key": KEYS[1]}, verbose=False)
    variants = client.predict(TEXT, api_name="/augment")
    assert variants and all(isinstance(v, str) and v != TEXT for v in variants)


def test_the_login_form_sets_a_session_that_is_not_the_key_and_only_goes_to_this_server(keyed):
    page = requests.get(keyed.url + "/", headers={"Accept": "text/html"}, allow_redirects=False, timeout=30)
    assert page.status_code == 303 and page.headers["Location"] == "/login?next=/"
    form = requests.get(keyed.url + "/login", timeout=30)
    assert form.status_code == 200 and "API 密钥" in form.text
    wrong = requests.post(keyed.url + "/login", data={"key": WRONG, "next": "/"}, allow_redirects=False, timeout=30)
    assert wrong.status_code == 401 and "不正确" in wrong.text and "Set-Cookie" not in wrong.headers
    for target, expected in (("/", "/"), ("//evil.example/x", "/"), ("https://evil.example/", "/"), ("/?a=1", "/?a=1")):
        login = requests.post(keyed.url + "/login", data={"key": KEYS[0], "next": target}, allow_redirects=False,
                              timeout=30)
        assert login.status_code == 303 and login.headers["Location"] == expected, target
    cookie = login.cookies["dpp_session"]
    assert cookie and all(key not in cookie for key in KEYS)
    assert "HttpOnly" in login.headers["Set-Cookie"] and "SameSite=Lax" in login.headers["Set-Cookie"]
    session = requests.Session()
    session.cookies.set("dpp_session", cookie)
    assert session.get(keyed.url + "/tasks", timeout=30).status_code == 200
    out = session.get(keyed.url + "/logout", allow_redirects=False, timeout=30)
    assert out.status_code == 303 and "Max-Age=0" in out.headers["Set-Cookie"]


CHROMIUM = shutil.which("chromium")


@contextlib.contextmanager
def browser_page():
    """A new Chromium page (Debian's chromium), closed after the block."""
    from playwright.sync_api import sync_playwright

    from tests.test_ui_browser import LAUNCH_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(90_000)
            yield page
        finally:
            browser.close()


def log_in(page, key: str) -> None:
    """Type `key` into the login form the page shows, and send it."""
    page.get_by_label("API 密钥").fill(key)
    page.get_by_role("button", name="登录").click()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian package 'chromium')")
def test_the_page_asks_for_the_key_then_works(keyed):
    from playwright.sync_api import expect

    from tests.test_ui_browser import run_single

    with browser_page() as page:
        page.goto(keyed.url)
        expect(page.get_by_role("heading")).to_contain_text("dpp")
        log_in(page, WRONG)
        expect(page.locator(".error")).to_contain_text("API 密钥不正确")
        log_in(page, KEYS[1])
        expect(page.locator(".dpp-banner").first).to_contain_text("当前引擎")
        variants = run_single(page, TEXT)  # the page's own calls carry the session
        assert any(variant and variant != TEXT for variant in variants)


def test_the_readme_key_examples_run_as_written(keyed, tmp_path):
    """The README's examples, pointed at the keyed server."""
    from tests.test_readme import KEYED

    assert [lang for lang, _ in KEYED] == ["bash", "python"]
    for lang, code in KEYED:
        code = code.replace("http://127.0.0.1:7860", keyed.url)
        command = ["bash", "-c", "set -e\n" + code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env={**server_env(), "API_KEY": KEYS[0]}, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "augmented_texts" in done.stdout if lang == "bash" else done.stdout.count("[") == 2
