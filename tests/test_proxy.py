"""Behind a real nginx under a sub-path (deploy/nginx/dpp-location.conf, --root-path /dpp), with API keys: the page in
Chromium, the REST routes, /openapi.json and gradio_client all work through the proxy."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import requests

from tests.conftest import ROOT, free_port, start_server

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")  # Debian puts it in sbin
if NGINX is None:
    pytest.skip("no nginx binary (Debian package 'nginx-light'); the reverse proxy tests need it",
                allow_module_level=True)

KEY = "proxy-key-4Qw9zT"
TEXT = "快递员把包裹放在门口就走了，也没有打电话通知。"
LOCATION = ROOT / "deploy" / "nginx" / "dpp-location.conf"


def _nginx_conf(tmp_path, port: int, upstream: int) -> str:
    location = LOCATION.read_text("utf-8").replace("http://127.0.0.1:7860/", f"http://127.0.0.1:{upstream}/")
    temp = "".join(f"{kind}_temp_path {tmp_path / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                           "scgi"))
    return (f"worker_processes 1;\npid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\naccess_log {tmp_path / 'access.log'};\n{temp}"
            f"server {{\nlisten 127.0.0.1:{port};\n{location}\n}}\n}}\n")


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proxy")
    (tmp / "keys").write_text(KEY + "\n", encoding="utf-8")
    app = start_server(tmp, "--engine", "lexical", "--root-path", "/dpp", "--trusted-proxies", "127.0.0.1",
                       "--api-keys-file", str(tmp / "keys"))
    port = free_port()
    (tmp / "nginx.conf").write_text(_nginx_conf(tmp, port, app.port), encoding="utf-8")
    nginx = subprocess.Popen([NGINX, "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/dpp"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        raise RuntimeError((tmp / "error.log").read_text())
    yield url, app
    nginx.terminate()
    nginx.wait(timeout=10)
    app.stop()


def test_rest_and_the_schema_work_under_the_sub_path(proxied):
    url, app = proxied
    assert requests.get(url + "/readyz", timeout=10).json()["status"] == "ready"
    answer = requests.post(url + "/augment", json={"text": TEXT, "seed": 1}, headers={"X-API-Key": KEY}, timeout=60)
    assert answer.status_code == 200 and answer.json()["augmented_texts"]
    schema = requests.get(url + "/openapi.json", headers={"X-API-Key": KEY}, timeout=30).json()
    assert schema["servers"] == [{"url": "/dpp"}] and "/augment" in schema["paths"]
    # The server itself still answers its probes at its own root (kubelet probes the pod, not the proxy).
    assert requests.get(app.url + "/healthz", timeout=10).status_code == 200
    # The client's address is the one nginx saw, whatever the client wrote itself.
    refused = requests.get(url + "/tasks", headers={"X-Forwarded-For": "198.51.100.9"}, timeout=10)
    assert refused.status_code == 401
    line = next(line for line in app.log_text().splitlines() if refused.headers["X-Request-ID"] in line)
    assert "refused GET /tasks from 127.0.0.1: no API key" in line


def test_a_large_job_file_takes_the_upload_limit_under_the_sub_path(proxied, tmp_path):
    url, _ = proxied
    path = tmp_path / "big.csv"
    path.write_text("text\n" + (TEXT + "\n") * 40_000, encoding="utf-8")  # 2.6 MB: over the 1 MB JSON limit
    with open(path, "rb") as handle:
        job = requests.post(url + "/jobs", files={"file": ("big.csv", handle)}, headers={"X-API-Key": KEY},
                            data={"text_col": "text", "engine": "lexical", "num_return_sequences": "1"}, timeout=120)
    assert job.status_code == 202, job.text
    assert requests.delete(f"{url}/jobs/{job.json()['id']}", headers={"X-API-Key": KEY}, timeout=30).status_code == 200


def test_gradio_client_works_through_the_proxy(proxied):
    from gradio_client import Client

    url, _ = proxied
    variants = Client(url + "/", headers={"X-API-Key": KEY}, verbose=False).predict(TEXT, api_name="/augment")
    assert variants and all(v != TEXT for v in variants)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium binary on PATH (Debian package 'chromium')")
def test_the_page_logs_in_and_works_through_the_proxy(proxied):
    from playwright.sync_api import expect

    from tests.test_auth import browser_page, log_in
    from tests.test_ui_browser import run_single

    url, _ = proxied
    with browser_page() as page:
        failed = []
        page.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)
        page.goto(url)  # /dpp: nginx adds the slash, dpp sends the browser to its login form under /dpp
        expect(page).to_have_url(f"{url}/login?next=/")
        log_in(page, KEY)
        expect(page.locator(".dpp-banner").first).to_contain_text("当前引擎")
        assert page.url == url + "/"
        variants = run_single(page, TEXT)
        assert any(variant and variant != TEXT for variant in variants)
        assert failed == []
