"""Without usable weights the server still starts and says, everywhere, what is wrong."""

import requests

from tests.conftest import start_server


def test_missing_model_serves_health_and_answers_503_with_the_reason(server_without_model):
    assert requests.get(server_without_model.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = server_without_model.settled_readiness()
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert "missing-model" in body["reason"] and "ModelScope" in body["reason"]


def test_generation_routes_answer_503_with_a_clear_message(server_without_model):
    server_without_model.settled_readiness()
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
    server = start_server(tmp_path, "--engine", "mt5", "--model-dir", str(broken), wait_ready=False)
    try:
        body = server.settled_readiness().json()
        assert body["status"] == "unavailable"
        assert "模型目录 broken " in body["reason"] and str(broken) not in body["reason"] and "\n" not in body["reason"]
    finally:
        server.stop()
