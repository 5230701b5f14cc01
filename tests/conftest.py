"""Shared fixtures: tiny real models built once, and real servers on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.tiny_model import build_tiny_models

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 90


def run(awaitable):
    """Await one of the service's coroutines from a plain test, on a loop of its own."""
    return asyncio.run(awaitable)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One random tiny mT5 in the ModelScope, Hugging Face and Hugging Face FP16 layouts."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny-mt5"))


# The only programs the bundle's launcher may need on a target, besides what the bundle carries.
LAUNCHER_TOOLS = ("bash", "sh", "env", "uname", "getconf", "sha256sum", "sed", "head", "cat", "mkdir", "sort",
                  "dirname", "wc")


def launcher_tools(directory: Path) -> Path:
    """Fill `directory` with links to LAUNCHER_TOOLS: a PATH for an empty environment with no Python on it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in LAUNCHER_TOOLS:
        source = next(Path(d) / name for d in ("/usr/bin", "/bin") if (Path(d) / name).exists())
        (directory / name).symlink_to(source)
    return directory


def require_unshare(*flags: str) -> None:
    """Skip the calling test, saying why, where `unshare FLAGS` is missing or not permitted."""
    try:
        result = subprocess.run(["unshare", *flags, "true"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("unshare (util-linux) is not installed")
    if result.returncode != 0:
        pytest.skip(f"unshare {' '.join(flags)} is not permitted here: {result.stderr.strip()}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    port: int
    log_dir: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        path = self.log_dir / "webui.log"
        return path.read_text("utf-8") if path.exists() else ""

    def settled_readiness(self, timeout_s: float = 60) -> requests.Response:
        """/readyz once engine loading has finished, whatever its outcome."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            response = requests.get(self.url + "/readyz", timeout=5)
            if response.json().get("status") != "loading":
                return response
            time.sleep(0.2)
        raise AssertionError("readiness never settled")

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPP_")}
    # The tiny models answer noise, which the quality gate rightly drops: servers in tests run with the gate
    # off unless a test asks for it (quality: "on" in a request, or DPP_QUALITY="on"); tests/test_gate*.py do.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1", DPP_QUALITY="off")
    env.update(extra)
    return env


def start_server(tmp_path: Path, *flags: str, wait_ready: bool = True, program: tuple[str, ...] | None = None,
                 **env: str) -> LiveServer:
    """Run webui.py as users do (or `program`, python arguments that end in webui.main), on a free loopback
    port; wait for /readyz (or just /healthz)."""
    port = free_port()
    log_dir = tmp_path / f"logs-{port}"
    # File jobs live in their own directory per server unless a test names one (to restart on the same jobs).
    own_data = () if "--data-dir" in flags else ("--data-dir", str(tmp_path / f"data-{port}"))
    command = [sys.executable, *(program or (str(ROOT / "webui.py"),)), "--host", "127.0.0.1", "--port", str(port),
               "--log-dir", str(log_dir), *own_data, *flags]
    output = open(tmp_path / f"server-{port}.out", "wb")
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=server_env(**env), cwd=ROOT)
    server = LiveServer(f"http://127.0.0.1:{port}", port, log_dir, process)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    probe = "/readyz" if wait_ready else "/healthz"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: "
                               f"{(tmp_path / f'server-{port}.out').read_text(errors='replace')}")
        try:
            if requests.get(server.url + probe, timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"server not ready within {STARTUP_TIMEOUT_S}s")


@pytest.fixture(scope="module")
def live_server(tiny_models, tmp_path_factory):
    """A real server on the tiny Hugging Face layout model, shared by one test module."""
    server = start_server(tmp_path_factory.mktemp("server"), "--model-dir", str(tiny_models["huggingface"]))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server_without_model(tmp_path_factory):
    """A real mT5-only server pointed at a model directory that does not exist."""
    tmp = tmp_path_factory.mktemp("no-model")
    server = start_server(tmp, "--engine", "mt5", "--model-dir", str(tmp / "missing-model"), wait_ready=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server_without_weights(tmp_path_factory):
    """A real server as on a fresh machine: no mT5 weights, so the lexical engine serves."""
    tmp = tmp_path_factory.mktemp("fresh")
    server = start_server(tmp, "--model-dir", str(tmp / "missing-model"))
    yield server
    server.stop()
