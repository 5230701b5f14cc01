"""start_dpp.sh and webui.py as a user runs them: help, busy port, bad settings, clean shutdown."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, start_server

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "start_dpp.sh"
QUICK_EXIT_S = 30


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPP_")}
    env.update(extra)
    return env


def run(command: list[str], timeout: float = QUICK_EXIT_S, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=clean_env(**env), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def busy_port():
    """A port on 127.0.0.1 that another process is listening on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_help_lists_flags_and_environment_variables():
    result = run(["./start_dpp.sh", "--help"])
    assert result.returncode == 0, result.stderr
    for flag in ("--host", "--port", "--model-dir", "--cpu-only", "--device", "--dtype"):
        assert flag in result.stdout, flag
    assert "DPP_" in result.stdout
    assert "DPP_PORT" in result.stdout
    assert "--setup-only" in result.stdout


def test_busy_port_exits_1_with_one_line(busy_port):
    started = time.monotonic()
    result = run(["./start_dpp.sh", "--host", "127.0.0.1", "--port", str(busy_port)])
    elapsed = time.monotonic() - started
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(busy_port) in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert elapsed < QUICK_EXIT_S


def test_launcher_reports_device_before_starting(busy_port):
    result = run(["./start_dpp.sh", "--host", "127.0.0.1", "--port", str(busy_port)])
    assert result.returncode == 1
    # This machine has no NVIDIA driver; the line comes before webui.py runs.
    assert "No CUDA device found: running on CPU" in result.stdout.splitlines()


@pytest.mark.parametrize(("args", "env", "setting"), [
    (["--port", "70000"], {}, "port"),
    ([], {"DPP_DTYPE": "float8"}, "dtype"),
    (["--device", "tpu"], {}, "device"),
    (["--max-batch-texts", "many"], {}, "max_batch_texts"),
])
def test_invalid_setting_exits_2_naming_it(args, env, setting):
    port_args = [] if "--port" in args else ["--port", str(free_port())]
    result = run([sys.executable, "webui.py", "--host", "127.0.0.1", *port_args, *args], **env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert setting in lines[0]
    assert "Traceback" not in result.stderr


def test_a_broken_template_file_exits_2_naming_file_and_task(tmp_path):
    shipped = json.loads((ROOT / "app" / "templates.json").read_text("utf-8"))
    broken = tmp_path / "templates.json"
    broken.write_text(json.dumps({**shipped, "sentiment": {"template": "情感分析：{text}", "labels": ["积极"]}},
                                 ensure_ascii=False), "utf-8")
    result = run([sys.executable, "webui.py", "--host", "127.0.0.1", "--port", str(free_port()),
                  "--log-dir", str(tmp_path / "logs")], DPP_TEMPLATES_FILE=str(broken))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and str(broken) in lines[0] and "'sentiment'" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_setting_through_launcher_exits_2(busy_port):
    result = run(["./start_dpp.sh", "--host", "127.0.0.1", "--port", str(busy_port)], DPP_DTYPE="float8")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().count("\n") == 0
    assert "dtype" in result.stderr and "float8" in result.stderr


def test_server_stops_cleanly_on_sigterm(tiny_models, tmp_path):
    server = start_server(tmp_path, "--model-dir", str(tiny_models["huggingface"]))
    server.process.terminate()
    try:
        code = server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        pytest.fail("server did not exit within 20 s of SIGTERM")
    assert "Application shutdown complete" in server.log_text()
    # A clean stop is exit status 0, not death by the signal (-15) after the graceful shutdown.
    assert code == 0, f"exit status {code} after SIGTERM"
    with socket.socket() as probe:
        # SO_REUSEADDR tolerates closed connections in TIME_WAIT, not a socket still listening.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", server.port))
