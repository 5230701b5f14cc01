"""The REST contract against a real server: fields, defaults, order, encoding and every error code."""

import json
import socket

import pytest
import requests
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

TEXT = "这款耳机的音质很好，佩戴也很舒适。"
FAST = {"max_length": 8}


def post(server, path, body=None, **kwargs):
    return requests.post(server.url + path, json=body, timeout=60, **kwargs)


def assert_error(response, status, code, field=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code
    assert body["error"]["field"] == field
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body["error"]


def test_healthz(live_server):
    response = requests.get(live_server.url + "/healthz", timeout=10)
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_names_engine_model_device_dtype_and_queue_but_no_server_path(live_server):
    body = requests.get(live_server.url + "/readyz", timeout=10).json()
    assert body["status"] == "ready"
    assert body["engine"] == "mt5"
    assert body["device"] == "cpu" and body["dtype"] == "float32"
    assert body["model"] == "huggingface"  # the directory's name: anyone may read /readyz
    assert body["queue"] == {"running": 0, "waiting": 0, "max_queue": 64}
    assert body["decoder"] == "fast" and body["decoder_check"]["max_logprob_gap"] < body["decoder_check"]["tolerance"]


def test_augment_answers_the_contract_fields_with_default_count(live_server):
    response = post(live_server, "/augment", {"text": TEXT, **FAST})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"original", "augmented_texts", "augmented", "variants", "requested", "short_reason", "dropped",
                         "engine", "request_id", "elapsed_ms"}
    assert body["original"] == TEXT
    assert 1 <= len(body["augmented_texts"]) <= 3
    assert body["requested"] == 3 and (body["short_reason"] is None) == (len(body["augmented_texts"]) == 3)
    assert body["augmented"] == body["augmented_texts"]
    assert TEXT not in body["augmented_texts"]
    assert len(set(body["augmented_texts"])) == len(body["augmented_texts"])
    assert body["engine"] == "mt5"
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["elapsed_ms"] >= 0


def test_chinese_is_sent_as_utf8_not_escaped(live_server):
    response = post(live_server, "/augment", {"text": TEXT, **FAST})
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert TEXT.encode("utf-8") in response.content
    assert b"\\u" not in response.content


def test_every_parameter_is_accepted_and_a_seed_reproduces(live_server):
    body = {"text": TEXT, "num_return_sequences": 5, "max_length": 10, "temperature": 1.3,
            "top_k": 0, "top_p": 0.9, "seed": 1234, "engine": "mt5"}
    first = post(live_server, "/augment", body).json()
    assert 1 <= len(first["augmented_texts"]) <= 5
    assert post(live_server, "/augment", body).json()["augmented_texts"] == first["augmented_texts"]


def test_batch_keeps_input_order_and_flattens_in_the_same_order(live_server):
    texts = ["第一条：物流速度很快", "第二条：客服态度非常耐心", "第三条：价格有点贵", "第四条：屏幕清晰"]
    response = post(live_server, "/augment_batch", {"texts": texts, "num_return_sequences": 2, **FAST})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"results", "augmented_texts", "dropped", "engine", "request_id", "elapsed_ms"}
    assert [r["original"] for r in body["results"]] == texts
    assert all(set(r) == {"original", "augmented_texts", "variants", "requested", "short_reason", "dropped"}
               and r["requested"] == 2 for r in body["results"])
    assert all(1 <= len(r["augmented_texts"]) <= 2 for r in body["results"])
    assert body["augmented_texts"] == [t for r in body["results"] for t in r["augmented_texts"]]


def test_a_body_without_content_type_is_read_as_json(live_server):
    response = requests.post(live_server.url + "/augment", data=json.dumps({"text": TEXT, **FAST}).encode(),
                             headers={"content-type": ""}, timeout=60)
    assert response.status_code == 200


@pytest.mark.parametrize("raw, content_type", [
    (b'{"text": ', "application/json"),
    (b"", "application/json"),
    (b'{"text": "\xe5\xa5\xbd"}', "application/x-www-form-urlencoded"),
])
def test_malformed_bodies_are_400(live_server, raw, content_type):
    response = requests.post(live_server.url + "/augment", data=raw,
                             headers={"content-type": content_type}, timeout=10)
    assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize("body, field", [
    ([TEXT], None),
    ({}, "text"),
    ({"text": 123}, "text"),
    ({"text": TEXT, "num_return_sequences": "3"}, "num_return_sequences"),
    ({"text": TEXT, "num_return_sequences": True}, "num_return_sequences"),
    ({"text": TEXT, "temperature": "hot"}, "temperature"),
    ({"text": TEXT, "seed": 1.5}, "seed"),
    ({"text": TEXT, "num_return_sequence": 3}, "num_return_sequence"),
])
def test_wrong_shapes_and_types_are_422_naming_the_field(live_server, body, field):
    assert_error(post(live_server, "/augment", body), 422, "invalid_parameter", field)


@pytest.mark.parametrize("name, value", [
    ("num_return_sequences", 0), ("num_return_sequences", 11), ("max_length", 7), ("max_length", 513),
    ("temperature", 0.05), ("temperature", 2.5), ("top_k", -1), ("top_k", 1001),
    ("top_p", 0.01), ("top_p", 1.5), ("seed", -1),
])
def test_out_of_range_parameters_are_422_naming_the_field(live_server, name, value):
    error = assert_error(post(live_server, "/augment", {"text": TEXT, name: value}), 422,
                         "invalid_parameter", name)
    assert str(value) in error["message"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t　"])
def test_empty_and_whitespace_text_is_text_empty(live_server, text):
    assert_error(post(live_server, "/augment", {"text": text}), 422, "text_empty", "text")


def test_over_long_text_is_text_too_long(live_server):
    error = assert_error(post(live_server, "/augment", {"text": "长" * 1001}), 422, "text_too_long", "text")
    assert "1000" in error["message"]


def test_batch_errors_name_the_item(live_server):
    assert_error(post(live_server, "/augment_batch", {"texts": ["好", " "]}), 422, "text_empty", "texts[1]")
    assert_error(post(live_server, "/augment_batch", {"texts": ["好", 5]}), 422, "invalid_parameter", "texts[1]")
    assert_error(post(live_server, "/augment_batch", {"texts": []}), 422, "invalid_parameter", "texts")
    assert_error(post(live_server, "/augment_batch", {"text": "好"}), 422, "invalid_parameter", "texts")


LONE = "好\ud800评"  # JSON may escape half a surrogate pair ("\ud800"); no UTF-8 text holds one


@pytest.mark.parametrize("path, body, code, field", [
    ("/augment", {"text": LONE}, "invalid_parameter", "text"),
    ("/augment_batch", {"texts": ["好", LONE]}, "invalid_parameter", "texts[1]"),
    ("/classify", {"text": LONE, "labels": ["物流", "价格"]}, "invalid_parameter", "text"),
    ("/classify", {"text": TEXT, "labels": ["物流", LONE]}, "labels_invalid", "labels[1]"),
    ("/classify_batch", {"texts": [TEXT], "labels": f"物流、{LONE}"}, "labels_invalid", "labels"),
    ("/generate", {"task": "question_generation", "passage": TEXT, "answer": LONE}, "invalid_parameter", "answer"),
])
def test_a_lone_surrogate_is_422_naming_the_field_and_the_character(live_server, path, body, code, field):
    error = assert_error(post(live_server, path, {**body, **FAST} if "labels" not in body else body), 422,
                         code, field)
    assert "U+D800" in error["message"]


@pytest.mark.parametrize("path, body, code, field, shown", [
    ("/generate", {"task": "title", "te\udc00xt": TEXT}, "invalid_parameter", None, "代理码位"),
    ("/augment", {"text": TEXT, "x\ud800": 1}, "invalid_parameter", None, "代理码位"),
    ("/generate", {"task": "t\udfffitle", "text": TEXT}, "invalid_parameter", "task", "\\udfff"),
    ("/augment", {"text": TEXT, "engine": "\ud83d"}, "engine_unavailable", "engine", "\\ud83d"),
])
def test_lone_surrogates_in_names_are_422_and_shown_escaped(live_server, path, body, code, field, shown):
    response = post(live_server, path, body)
    response.content.decode("utf-8")  # the answer is UTF-8 throughout
    assert shown in assert_error(response, 422, code, field)["message"]


def test_an_answer_holding_a_lone_surrogate_writes_its_escape():
    from app.api_errors import UTF8JSONResponse

    body = UTF8JSONResponse({"名": "好\ud800"}).body
    assert body == '{"名":"好\\ud800"}'.encode("utf-8") and json.loads(body) == {"名": "好\ud800"}


def test_an_oversized_batch_is_batch_too_large(live_server):
    error = assert_error(post(live_server, "/augment_batch", {"texts": ["好"] * 51}), 422,
                         "batch_too_large", "texts")
    assert "50" in error["message"]


def test_an_unknown_engine_is_422(live_server):
    assert_error(post(live_server, "/augment", {"text": TEXT, "engine": "gpt-9"}), 422,
                 "engine_unavailable", "engine")


def test_an_oversized_body_is_413(live_server):
    big = {"texts": ["好" * 1000] * 400}
    assert_error(post(live_server, "/augment_batch", big), 413, "body_too_large")


def test_an_oversized_chunked_body_is_413(live_server):
    def chunks():
        yield b'{"texts": ['
        for _ in range(1200):
            yield b'"' + "好".encode() * 300 + b'",'
        yield b'"end"]}'

    response = requests.post(live_server.url + "/augment_batch", data=chunks(),
                             headers={"content-type": "application/json"}, timeout=30)
    assert_error(response, 413, "body_too_large")


def test_a_wrong_method_is_405_in_the_same_error_format(live_server):
    assert_error(requests.get(live_server.url + "/augment", timeout=10), 405, "method_not_allowed")


def test_a_client_request_id_is_echoed(live_server):
    response = post(live_server, "/augment", {"text": ""}, headers={"X-Request-ID": "client-42"})
    assert response.headers["x-request-id"] == "client-42"
    assert response.json()["request_id"] == "client-42"


def test_a_request_id_with_odd_characters_is_replaced(live_server):
    response = post(live_server, "/augment", {"text": ""}, headers={"X-Request-ID": "bad id\twith spaces"})
    assert response.headers["x-request-id"] != "bad id\twith spaces"


def test_a_client_that_hangs_up_mid_body_does_not_break_the_server(live_server):
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=5) as raw:
        raw.sendall(b"POST /augment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{\"text\": ")
    assert post(live_server, "/augment", {"text": TEXT, **FAST}).status_code == 200


def test_openapi_lists_the_routes_and_the_docs_page_needs_no_cdn(live_server):
    spec = requests.get(live_server.url + "/openapi.json", timeout=10).json()
    assert {"/augment", "/augment_batch", "/healthz", "/readyz"} <= set(spec["paths"])
    assert "post" in spec["paths"]["/augment"]


_FIELDS = ["text", "texts", "num_return_sequences", "max_length", "temperature", "top_k", "top_p", "seed",
           "engine", "extra"]
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/augment", "/augment_batch"]),
       body=st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=5))
def test_no_client_input_ever_gets_a_500(live_server, path, body):
    body = {**body, "max_length": 8} if "max_length" not in body else body
    response = requests.post(live_server.url + path, data=json.dumps(body), timeout=60,
                             headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 413, 422), response.text
    if response.status_code != 200:
        assert response.json()["error"]["code"] != "internal"


def test_deeply_nested_json_is_a_client_error(live_server):
    response = requests.post(live_server.url + "/augment", data=b"[" * 100000 + b"]" * 100000,
                             headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code in (400, 422)


def test_an_unexpected_failure_is_a_500_in_the_error_format_that_keeps_the_request_id():
    """No client input reaches this (the tests above), so a route that fails on purpose stands in for a bug."""
    import logging
    import threading
    import time

    import uvicorn
    from fastapi import FastAPI

    from app.api_errors import install_error_handling
    from app.logs import request_id
    from tests.conftest import free_port

    app = FastAPI()

    @app.post("/fails")
    async def fails() -> None:
        raise RuntimeError("a bug")

    install_error_handling(app, max_body_bytes=1000)
    logged = []

    class Remember(logging.Handler):
        def emit(self, record):
            logged.append((request_id.get(), record.getMessage(), record.exc_info is not None))

    remember = Remember(logging.ERROR)
    logging.getLogger("app.api_errors").addHandler(remember)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        response = requests.post(f"http://127.0.0.1:{port}/fails", json={}, headers={"X-Request-ID": "bug-7"},
                                 timeout=10)
    finally:
        server.should_exit = True
        thread.join(10)
        logging.getLogger("app.api_errors").removeHandler(remember)
    error = assert_error(response, 500, "internal")
    assert response.json()["request_id"] == "bug-7" and "a bug" not in error["message"]
    assert logged == [("bug-7", "POST /fails failed", True)]
