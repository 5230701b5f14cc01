"""The Gradio API through the real gradio_client against a real server."""

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError


@pytest.fixture(scope="module")
def client(live_server):
    return Client(live_server.url + "/", verbose=False, download_files=False)


def test_only_the_public_endpoints_are_listed(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/augment", "/augment_report", "/augment_batch", "/classify", "/job_submit",
                              "/job_status", "/job_result"}
    names = [p["parameter_name"] for p in endpoints["/augment"]["parameters"]]
    assert names == ["text", "num_return_sequences", "max_length", "temperature", "top_k", "top_p",
                     "seed", "engine", "quality", "min_similarity", "max_similarity", "min_length_ratio",
                     "max_length_ratio", "labels", "label", "min_label_prob", "number_forms"]
    defaults = {p["parameter_name"]: p.get("parameter_default") for p in endpoints["/augment"]["parameters"]}
    assert defaults["num_return_sequences"] == 3 and defaults["temperature"] == 0.8
    assert defaults["top_k"] == 50 and defaults["top_p"] == 0.95 and defaults["max_length"] == 128


def test_augment_returns_the_list_of_variants(client):
    text = "物流速度很快，包装完好无损。"
    variants = client.predict(text, max_length=8, api_name="/augment")
    assert isinstance(variants, list) and 1 <= len(variants) <= 3
    assert all(isinstance(v, str) and v and v != text for v in variants)
    assert len(set(variants)) == len(variants)


def test_augment_with_a_seed_reproduces(client):
    first = client.predict("客服态度非常耐心", 2, 8, 0.9, 40, 0.9, 77, api_name="/augment")
    assert client.predict("客服态度非常耐心", 2, 8, 0.9, 40, 0.9, 77, api_name="/augment") == first


def test_augment_batch_returns_one_list_per_text_in_order(client):
    texts = ["第一条：屏幕清晰", "第二条：价格便宜", "第三条：电池耐用"]
    result = client.predict(texts, num_return_sequences=2, max_length=8, api_name="/augment_batch")
    assert isinstance(result, list) and len(result) == 3
    assert all(isinstance(v, list) and 1 <= len(v) <= 2 for v in result)


@pytest.mark.parametrize("args, kwargs, expected", [
    (("",), {}, "为空"),
    (("好",), {"temperature": 9.0}, "temperature"),
    (("好",), {"engine": "gpt"}, "gpt"),
])
def test_errors_reach_the_client_as_readable_messages(client, args, kwargs, expected):
    with pytest.raises(AppError, match=expected):
        client.predict(*args, api_name="/augment", **kwargs)


def test_a_batch_that_is_not_a_list_of_strings_is_refused(client):
    with pytest.raises(AppError, match="texts"):
        client.predict("不是列表", api_name="/augment_batch")


def test_classify_endpoint_has_the_rest_parameters_and_defaults(client):
    parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/classify"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == ["text", "labels", "mode", "multi_label", "threshold",
                                                         "engine"]
    defaults = {p["parameter_name"]: p.get("parameter_default") for p in parameters}
    assert defaults["mode"] == "constrained" and defaults["multi_label"] is False


def test_classify_returns_a_label_and_a_probability_per_label(client):
    labels = ["物流", "价格", "客服"]
    result = client.predict("物流速度很快，包装也完好。", labels, api_name="/classify")
    assert result["label"] in labels and result["in_labels"] is True and result["engine"] == "mt5"
    assert list(result["scores"]) == labels and abs(sum(result["scores"].values()) - 1) < 1e-6
    as_string = client.predict("物流速度很快，包装也完好。", "物流、价格,客服", api_name="/classify")
    assert as_string["scores"] == result["scores"]


def test_classify_modes_through_the_client(client):
    labels = ["物流", "价格"]
    free = client.predict("太贵了", labels, mode="generate", api_name="/classify")
    assert isinstance(free["raw_output"], str) and free["scores"] is None
    multi = client.predict("太贵了", labels, multi_label=True, threshold=0.0, api_name="/classify")
    assert sorted(multi["labels"]) == sorted(labels)


@pytest.mark.parametrize("labels, expected", [(["物流"], "2 到 50"), ("物流,,价格", "为空"), (7, "标签列表")])
def test_classify_label_errors_reach_the_client(client, labels, expected):
    with pytest.raises(AppError, match=expected):
        client.predict("太贵了", labels, api_name="/classify")
