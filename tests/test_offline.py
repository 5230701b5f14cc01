"""Offline behaviour outside the bundle: the server never phones home, and bundle.fetch fails fast without a network."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.conftest import ROOT, require_unshare, start_server


class ConnectionRecorder:
    """A loopback listener standing in for every proxy: whoever tries to go out through one is recorded."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen()
        self.port = self.socket.getsockname()[1]
        self.seen: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    self.seen.append(connection.recv(512))
                except OSError:
                    self.seen.append(b"")

    def close(self) -> None:
        self.socket.close()


def test_the_server_never_phones_home_even_when_the_environment_asks_it_to(tiny_models, tmp_path):
    recorder = ConnectionRecorder()
    proxy = f"http://127.0.0.1:{recorder.port}"
    # Analytics switched on and every proxy pointed at the recorder: a single outgoing HTTP request
    # from gradio, huggingface_hub or transformers would land there.
    server = start_server(tmp_path, "--model-dir", str(tiny_models["huggingface"]),
                          GRADIO_ANALYTICS_ENABLED="True", HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0",
                          HTTP_PROXY=proxy, HTTPS_PROXY=proxy, ALL_PROXY=proxy, http_proxy=proxy, https_proxy=proxy,
                          NO_PROXY="", no_proxy="")
    try:
        assert requests.get(server.url + "/", timeout=30).status_code == 200
        assert requests.get(server.url + "/config", timeout=30).status_code == 200
        response = requests.post(server.url + "/augment", timeout=60,
                                 json={"text": "今天天气很好。", "num_return_sequences": 1})
        assert response.status_code == 200
        from gradio_client import Client

        Client(server.url, verbose=False).predict("今天的天气非常好。", max_length=8, api_name="/augment")
        time.sleep(2)  # analytics are sent from background threads
    finally:
        assert server.stop() == 0
        recorder.close()
    assert recorder.seen == []


@pytest.mark.parametrize("flags, host", [
    ([], "www.modelscope.cn"),
    (["--source", "huggingface", "--model-id", "someone/mt5-copy"], "huggingface.co"),
    (["--source", "huggingface", "--model-id", "someone/mt5-copy", "--endpoint", "https://hf-mirror.com"],
     "hf-mirror.com"),
])
def test_fetch_without_network_fails_within_seconds_and_says_what_to_do(tmp_path, flags, host):
    require_unshare("-n")
    started = time.monotonic()
    result = subprocess.run(["unshare", "-n", sys.executable, "-m", "bundle.fetch", "--out", str(tmp_path / "m"),
                             *flags], cwd=ROOT, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 3
    assert elapsed < 20, elapsed
    assert f"cannot reach {host}:443" in result.stderr
    assert "air-gapped" in result.stderr and "--model-dir" in result.stderr
    assert not (tmp_path / "m").exists()


def test_fetch_needs_a_model_id_for_hugging_face():
    result = subprocess.run([sys.executable, "-m", "bundle.fetch", "--source", "huggingface"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--model-id" in result.stderr


def test_fetch_help_documents_the_options():
    result = subprocess.run([sys.executable, "-m", "bundle.fetch", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--source", "--model-id", "--revision", "--endpoint", "--out"):
        assert option in result.stdout
