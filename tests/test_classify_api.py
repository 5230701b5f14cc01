"""/classify, /classify_batch, /generate and /tasks against a real server: contract fields and errors."""

import json
import math

import pytest
import requests
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from tests.test_api import assert_error, post

TEXT = "物流速度很快，包装也完好，但是客服回复有点慢。"
LABELS = ["物流", "价格", "客服"]


def test_classify_answers_the_contract_fields(live_server):
    response = post(live_server, "/classify", {"text": TEXT, "labels": LABELS})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert set(body) == {"label", "scores", "raw_output", "in_labels", "engine", "request_id", "elapsed_ms"}
    assert body["label"] in LABELS and body["in_labels"] is True and body["raw_output"] is None
    assert list(body["scores"]) == LABELS
    assert math.fsum(body["scores"].values()) == pytest.approx(1, abs=1e-6)
    assert body["engine"] == "mt5" and body["request_id"] == response.headers["x-request-id"]
    assert "物流" in response.content.decode("utf-8")


def test_labels_may_be_one_string_split_on_commas_and_enumeration_commas(live_server):
    as_list = post(live_server, "/classify", {"text": TEXT, "labels": LABELS}).json()
    as_string = post(live_server, "/classify", {"text": TEXT, "labels": "物流，价格、 客服"}).json()
    assert as_string["scores"] == as_list["scores"] and as_string["label"] == as_list["label"]


def test_generate_mode_returns_the_raw_output(live_server):
    body = post(live_server, "/classify", {"text": TEXT, "labels": LABELS, "mode": "generate"}).json()
    assert isinstance(body["raw_output"], str) and body["scores"] is None
    assert body["in_labels"] == (body["label"] is not None)
    assert body["label"] is None or body["label"] in LABELS


def test_multi_label_returns_the_labels_over_the_threshold(live_server):
    body = post(live_server, "/classify", {"text": TEXT, "labels": LABELS, "multi_label": True,
                                           "threshold": 0.2}).json()
    assert set(body["labels"]) == {label for label, p in body["scores"].items() if p >= 0.2}
    assert all(0 <= p <= 1 for p in body["scores"].values())


def test_classify_batch_keeps_input_order(live_server):
    texts = [TEXT, "太贵了，不值这个价。", TEXT]
    body = post(live_server, "/classify_batch", {"texts": texts, "labels": "物流,价格,客服"}).json()
    assert set(body) == {"results", "labels", "engine", "request_id", "elapsed_ms"}
    assert body["labels"] == LABELS
    assert [item["text"] for item in body["results"]] == texts
    assert body["results"][0]["label"] == body["results"][2]["label"]
    assert body["results"][0]["scores"] == pytest.approx(body["results"][2]["scores"], abs=1e-9)
    single = post(live_server, "/classify", {"text": texts[1], "labels": LABELS}).json()
    # The batch's texts share engine calls, padded: the same arithmetic to float32 rounding.
    assert body["results"][1]["scores"] == pytest.approx(single["scores"], abs=1e-5)


@pytest.mark.parametrize("body, code, field", [
    ({"text": TEXT, "labels": ["物流"]}, "labels_invalid", "labels"),
    ({"text": TEXT, "labels": "物流,,价格"}, "labels_invalid", "labels"),
    ({"text": TEXT, "labels": ["物流", ""]}, "labels_invalid", "labels[1]"),
    ({"text": TEXT, "labels": ["物流", "价格,客服"]}, "labels_invalid", "labels[1]"),
    ({"text": TEXT, "labels": [f"标签{i}" for i in range(51)]}, "labels_invalid", "labels"),
    ({"text": TEXT, "labels": {"a": 1}}, "labels_invalid", "labels"),
    ({"text": TEXT}, "invalid_parameter", "labels"),
    ({"labels": LABELS}, "invalid_parameter", "text"),
    ({"text": "  ", "labels": LABELS}, "text_empty", "text"),
    ({"text": TEXT, "labels": LABELS, "mode": "free"}, "invalid_parameter", "mode"),
    ({"text": TEXT, "labels": LABELS, "multi_label": "yes"}, "invalid_parameter", "multi_label"),
    ({"text": TEXT, "labels": LABELS, "threshold": 2}, "invalid_parameter", "threshold"),
    ({"text": TEXT, "labels": LABELS, "temperature": 0.5}, "invalid_parameter", "temperature"),
    ({"text": TEXT, "labels": LABELS, "engine": "gpt"}, "engine_unavailable", "engine"),
])
def test_classify_errors_are_422_naming_the_field(live_server, body, code, field):
    assert_error(post(live_server, "/classify", body), 422, code, field)


def test_classify_batch_errors_name_the_item(live_server):
    assert_error(post(live_server, "/classify_batch", {"texts": [TEXT, ""], "labels": LABELS}),
                 422, "text_empty", "texts[1]")
    assert_error(post(live_server, "/classify_batch", {"texts": [TEXT] * 51, "labels": LABELS}),
                 422, "batch_too_large", "texts")


def test_tasks_lists_every_task_with_its_fields(live_server):
    tasks = {task["name"]: task for task in requests.get(live_server.url + "/tasks", timeout=10).json()["tasks"]}
    assert set(tasks) == {"sentiment", "keywords", "title", "summary", "aspect", "translation",
                          "question_generation"}
    assert tasks["question_generation"]["fields"] == ["passage", "answer"]
    assert tasks["sentiment"]["scored"] and tasks["sentiment"]["labels"] == ["积极", "消极"]
    assert tasks["title"]["title"] == "标题生成" and tasks["title"]["template"] == "为以下的文本生成标题：\n{text}"


def test_generate_runs_a_task_and_echoes_its_prompt(live_server):
    body = post(live_server, "/generate", {"task": "question_generation", "passage": "北京是中国的首都。",
                                           "answer": "北京", "max_length": 8}).json()
    assert set(body) == {"task", "prompt", "outputs", "scores", "engine", "request_id", "elapsed_ms"}
    assert body["prompt"] == "根据给定的段落和答案生成对应的问题。\n段落：北京是中国的首都。\n答案：北京"
    assert len(body["outputs"]) <= 1 and body["scores"] is None


def test_generate_samples_distinct_outputs_when_asked(live_server):
    request = {"task": "title", "text": TEXT, "num_return_sequences": 3, "max_length": 8, "seed": 3}
    body = post(live_server, "/generate", request).json()
    assert 1 <= len(body["outputs"]) <= 3 and len(set(body["outputs"])) == len(body["outputs"])
    assert post(live_server, "/generate", request).json()["outputs"] == body["outputs"]


def test_sentiment_answers_one_of_its_labels(live_server):
    body = post(live_server, "/generate", {"task": "sentiment", "text": "质量很好，下次还来买。"}).json()
    assert body["outputs"][0] in ("积极", "消极") and set(body["scores"]) == {"积极", "消极"}


@pytest.mark.parametrize("body, field", [
    ({"text": TEXT}, "task"),
    ({"task": "poem", "text": TEXT}, "task"),
    ({"task": 3, "text": TEXT}, "task"),
    ({"task": "translation"}, "text"),
    ({"task": "translation", "text": 5}, "text"),
    ({"task": "translation", "text": TEXT, "passage": TEXT}, "passage"),
    ({"task": "question_generation", "passage": TEXT}, "answer"),
    ({"task": "title", "text": TEXT, "max_length": 4}, "max_length"),
    ({"task": "title", "text": TEXT, "top_k": "many"}, "top_k"),
])
def test_generate_field_errors_are_422_naming_the_field(live_server, body, field):
    assert_error(post(live_server, "/generate", body), 422, "invalid_parameter", field)


@pytest.mark.parametrize("key", ["model_dump", "__class__", "", "params", "model_extra", "__dict__"])
def test_odd_extra_keys_in_generate_are_unknown_fields(live_server, key):
    body = {"task": "title", "text": TEXT, key: "x"}
    assert_error(post(live_server, "/generate", body), 422, "invalid_parameter", key)


@pytest.mark.parametrize("path", ["/classify", "/classify_batch", "/generate"])
def test_a_wrong_method_is_405(live_server, path):
    assert_error(requests.get(live_server.url + path, timeout=10), 405, "method_not_allowed")


def test_without_weights_classification_and_tasks_say_they_need_mt5(server_without_weights):
    for path, body in [("/classify", {"text": TEXT, "labels": LABELS}),
                       ("/classify", {"text": TEXT, "labels": LABELS, "mode": "generate"}),
                       ("/classify_batch", {"texts": [TEXT], "labels": LABELS}),
                       ("/generate", {"task": "sentiment", "text": TEXT})]:
        error = assert_error(post(server_without_weights, path, body), 503, "needs_mt5")
        assert "mT5" in error["message"]


_FIELDS = ["text", "texts", "labels", "mode", "multi_label", "threshold", "task", "passage", "answer",
           "num_return_sequences", "seed", "engine"]
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/classify", "/classify_batch", "/generate"]),
       body=st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=6))
def test_no_client_input_ever_gets_a_500(live_server, path, body):
    if path == "/generate":
        body = {**body, "max_length": 8}
    response = requests.post(live_server.url + path, data=json.dumps(body), timeout=60,
                             headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 413, 422), response.text
