"""Which engine serves: mT5 when its weights load, else the lexical engine, and what clients see."""

import pytest
import requests
from gradio_client import Client
from gradio_client.exceptions import AppError

TEXT = "医生建议患者每天按时服用药物，如果症状没有缓解，请立即到医院就诊。"


def test_without_weights_the_lexical_engine_serves_and_readyz_says_why(server_without_weights):
    response = requests.get(server_without_weights.url + "/readyz", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready" and body["engine"] == "lexical"
    assert body["engines"] == ["lexical"]
    assert "missing-model" in body["unavailable"]["mt5"]
    assert "ModelScope" in body["unavailable"]["mt5"]


def test_without_weights_augment_answers_with_lexical_variants(server_without_weights):
    response = requests.post(server_without_weights.url + "/augment", json={"text": TEXT, "seed": 4}, timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["engine"] == "lexical"
    assert 1 <= len(body["augmented_texts"]) <= 3
    assert all(v != TEXT for v in body["augmented_texts"])


def test_without_weights_asking_for_mt5_is_a_clear_422(server_without_weights):
    response = requests.post(server_without_weights.url + "/augment", json={"text": TEXT, "engine": "mt5"},
                             timeout=30)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "engine_unavailable" and error["field"] == "engine"
    assert "missing-model" in error["message"]


def test_without_weights_gradio_client_gets_lexical_variants(server_without_weights):
    client = Client(server_without_weights.url + "/", verbose=False, download_files=False)
    variants = client.predict(TEXT, num_return_sequences=2, seed=1, api_name="/augment")
    assert 1 <= len(variants) <= 2 and TEXT not in variants
    batch = client.predict([TEXT, "价格有点贵，但是质量确实不错。"], seed=1, api_name="/augment_batch")
    assert len(batch) == 2
    with pytest.raises(AppError, match="mt5"):
        client.predict(TEXT, engine="mt5", api_name="/augment")


def test_with_weights_mt5_is_the_default_and_lexical_can_be_asked_for(live_server):
    body = requests.get(live_server.url + "/readyz", timeout=10).json()
    assert body["engine"] == "mt5" and body["engines"] == ["mt5", "lexical"]
    answer = requests.post(live_server.url + "/augment", json={"text": TEXT, "engine": "lexical", "seed": 2},
                           timeout=30).json()
    assert answer["engine"] == "lexical"
    default = requests.post(live_server.url + "/augment", json={"text": TEXT, "max_length": 8}, timeout=30).json()
    assert default["engine"] == "mt5"


def test_an_engine_left_out_by_settings_is_refused_with_the_reason(server_without_model):
    server_without_model.settled_readiness()
    response = requests.post(server_without_model.url + "/augment", json={"text": TEXT, "engine": "lexical"},
                             timeout=30)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "engine_unavailable" and "--engine" in error["message"]
