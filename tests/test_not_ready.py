"""Without usable weights the server still starts and says, everywhere, what is wrong."""

import time

import requests

from tests.conftest import start_server


def settled_readiness(server, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = requests.get(server.url + "/readyz", timeout=5)
        if response.json().get("status") != "loading":
            return response
        time.sleep(0.2)
    raise AssertionError("readiness never settled")


def test_missing_model_serves_health_and_answers_503_with_the_reason(server_without_model):
    assert requests.get(server_without_model.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = settled_readiness(server_without_model)
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert "missing-model" in body["reason"] and "ModelScope" in body["reason"]


def test_generation_routes_answer_503_with_a_clear_message(server_without_model):
    settled_readiness(server_without_model)
    for path, body in (("/augment", {"text": "你好"}), ("/augment_batch", {"texts": ["你好"]})):
        response = requests.post(server_without_model.url + path, json=body, timeout=10)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "not_ready"
        assert "missing-model" in error["message"]


def test_validation_still_comes_first_without_a_model(server_without_model):
    response = requests.post(server_without_model.url + "/augment", json={"text": " "}, timeout=10)
    assert response.status_code == 422 and response.json()["error"]["code"] == "text_empty"


def test_a_corrupt_checkpoint_is_reported_with_its_cause_in_one_line(tiny_models, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["modelscope"], broken)
    weights = broken / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:4096])
    server = start_server(tmp_path, "--model-dir", str(broken), wait_ready=False)
    try:
        body = settled_readiness(server).json()
        assert body["status"] == "unavailable"
        assert str(broken) in body["reason"] and "\n" not in body["reason"]
    finally:
        server.stop()
