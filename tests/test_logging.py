"""Operator logs: logs/webui.log written by a real server, one format, a request id on every line."""

from __future__ import annotations

import logging
import sys
import logging.handlers
import re
import time

import pytest
import requests

from app.logs import configure_logging

LINE = re.compile(
    r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.\-]+ rid=\S+ .*$"
)
TEXT = "独角兽在图书馆里安静地读一本关于量子力学的旧书"
LOG_WAIT_S = 20


def wait_for_log(server, predicate, what: str) -> str:
    """Poll the log file until `predicate(text)` holds; fail with the log if it never does."""
    deadline = time.monotonic() + LOG_WAIT_S
    text = server.log_text()
    while not predicate(text):
        if time.monotonic() > deadline:
            pytest.fail(f"log never showed {what}:\n{text}")
        time.sleep(0.1)
        text = server.log_text()
    return text


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


@pytest.fixture(scope="module")
def augmented(live_server):
    """One successful POST /augment with a distinctive text, and the log after it."""
    response = requests.post(live_server.url + "/augment", json={"text": TEXT, "max_length": 24}, timeout=120)
    assert response.status_code == 200, response.text
    rid = response.headers["x-request-id"]
    log = wait_for_log(live_server, lambda text: f"rid={rid} " in text, f"a line with rid={rid}")
    return response, rid, log


def test_log_records_model_load_and_request_with_its_id(augmented):
    response, rid, log = augmented
    assert response.json()["request_id"] == rid
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid)
    assert "Model loaded successfully on cpu" in log
    request_lines = lines_with(log, f"rid={rid} ")
    assert any(" INFO app.service " in line and "augment" in line for line in request_lines), request_lines


def test_every_log_line_has_the_documented_format(augmented, live_server):
    log = live_server.log_text()
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines
    bad = [line for line in lines if not LINE.match(line)]
    assert not bad, bad


def test_request_text_is_not_logged_at_info(augmented, live_server):
    log = live_server.log_text()
    assert TEXT not in log
    assert TEXT[:6] not in log
    variants = [v for v in augmented[0].json()["augmented_texts"] if len(v) >= 4]
    assert not [v for v in variants if v in log]
    assert " DEBUG " not in log


def test_client_request_id_is_echoed_and_logged(live_server):
    rid = "test-rid-123"
    response = requests.post(live_server.url + "/augment", json={"text": "今天下午我们去公园散步吧", "max_length": 24},
                             headers={"X-Request-ID": rid}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == rid
    assert response.json()["request_id"] == rid
    log = wait_for_log(live_server, lambda text: f"rid={rid} " in text, f"a line with rid={rid}")
    assert any("augment" in line for line in lines_with(log, f"rid={rid} "))


def test_unusable_client_request_id_is_replaced(live_server):
    response = requests.post(live_server.url + "/augment", json={"text": ""},
                             headers={"X-Request-ID": "bad id with spaces"}, timeout=30)
    rid = response.headers["x-request-id"]
    assert rid != "bad id with spaces"
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid)
    assert response.json()["request_id"] == rid


def test_error_answer_carries_the_request_id(live_server):
    response = requests.post(live_server.url + "/augment", json={"text": "   "}, timeout=30)
    assert response.status_code == 422
    body = response.json()
    assert body["error"]["code"] == "text_empty"
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["request_id"]

    sent = requests.post(live_server.url + "/augment", json={"text": ""}, headers={"X-Request-ID": "err-rid-7"},
                         timeout=30)
    assert sent.status_code == 422
    assert sent.headers["x-request-id"] == "err-rid-7"
    assert sent.json()["request_id"] == "err-rid-7"


def test_missing_model_is_logged_as_error_with_its_type(server_without_model):
    log = wait_for_log(server_without_model, lambda text: " ERROR " in text, "an ERROR line")
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert any("ModelUnavailable" in line for line in errors), errors
    missing = str((server_without_model.log_dir.parent / "missing-model").resolve())
    assert any(missing in line for line in errors), errors
    assert all(LINE.match(line) for line in log.splitlines() if line.strip())
    assert "Traceback" not in log


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    access = logging.getLogger("uvicorn.access")
    before, level, access_level = list(root.handlers), root.level, access.level
    yield
    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    access.setLevel(access_level)


def test_file_handler_rotates_daily_keeping_seven(tmp_path, restore_root_logging):
    path = configure_logging(tmp_path, "INFO")
    assert path == tmp_path / "webui.log"
    root = logging.getLogger()
    rotating = [h for h in root.handlers if isinstance(h, logging.handlers.TimedRotatingFileHandler)]
    assert len(rotating) == 1
    handler = rotating[0]
    assert handler.when == "MIDNIGHT"
    assert handler.backupCount == 7
    assert handler.baseFilename == str(tmp_path / "webui.log")
    assert root.level == logging.INFO

    logging.getLogger("dpp.test").info("rotation check")
    handler.flush()
    line = (tmp_path / "webui.log").read_text("utf-8").strip().splitlines()[-1]
    assert LINE.match(line), line
    assert line.endswith(" INFO dpp.test rid=- rotation check")

    # Calling it again replaces its handlers instead of doubling every line.
    configure_logging(tmp_path, "INFO")
    assert len([h for h in root.handlers if isinstance(h, logging.handlers.TimedRotatingFileHandler)]) == 1


def test_in_a_container_the_logs_go_to_standard_output_only(tmp_path, restore_root_logging, capsys):
    assert configure_logging(None, "INFO") is None
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_dpp", False)]
    assert len(ours) == 1 and not isinstance(ours[0], logging.FileHandler) and ours[0].stream is sys.stdout
    logging.getLogger("dpp.test").info("to stdout")
    assert LINE.match(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(tmp_path.iterdir()) == []
