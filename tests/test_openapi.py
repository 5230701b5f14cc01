"""/openapi.json tells the truth: schemathesis, with all its checks, against a real server on the tiny model.

Every request the schema allows must be answered 2xx, every one it forbids 4xx, every answer must match
its declared status, body and headers, and an undeclared method gets 405 with Allow. The server runs with
--max-batch-texts 3, so that its largest request (3 texts x 10 variants x 512 tokens) is within the work
budget: the one rule JSON Schema cannot state (the schema says it in words).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from tests.conftest import ROOT, start_server

MIN_REQUESTS = 1000


@pytest.fixture(scope="module")
def api_server(tiny_models, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("openapi"), "--model-dir", str(tiny_models["huggingface"]),
                          "--no-ui", "--max-batch-texts", "3")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def schema(api_server) -> dict:
    return requests.get(api_server.url + "/openapi.json", timeout=10).json()


def _body(schema: dict, path: str) -> dict:
    return schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def test_the_schema_declares_the_limits_the_server_enforces(schema):
    augment, batch = _body(schema, "/augment"), _body(schema, "/augment_batch")
    text = augment["properties"]["text"]
    assert text["minLength"] == 1 and text["maxLength"] == 1000 and text["pattern"]
    assert batch["properties"]["texts"]["minItems"] == 1 and batch["properties"]["texts"]["maxItems"] == 3
    assert augment["properties"]["max_length"]["minimum"] == 8 and augment["properties"]["max_length"]["maximum"] == 512
    assert augment["additionalProperties"] is False and "--max-request-tokens" in augment["description"]
    listed, joined = _body(schema, "/classify")["properties"]["labels"]["anyOf"]
    assert listed["minItems"] == 2 and listed["maxItems"] == 50 and listed["uniqueItems"] is True
    assert joined["type"] == "string" and joined["pattern"]
    tasks = {variant["properties"]["task"]["const"] for variant in _body(schema, "/generate")["oneOf"]}
    assert {"sentiment", "title", "question_generation"} <= tasks


def test_every_status_a_route_can_answer_is_documented_with_the_error_body(schema):
    for path in ("/augment", "/augment_batch", "/classify", "/classify_batch", "/generate"):
        responses = schema["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "413", "422", "500", "503", "504"}, path
        assert responses["503"]["headers"]["Retry-After"]["required"] is False
        assert responses["422"]["content"]["application/json"]["schema"]["required"] == ["error", "request_id"]
    assert set(schema["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}
    submit = schema["paths"]["/jobs"]["post"]
    form = submit["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file", "text_col"] and form["additionalProperties"] is False
    assert form["properties"]["file"]["format"] == "binary" and form["properties"]["kind"]["enum"] == [
        "augment", "classify"]
    assert form["properties"]["num_return_sequences"]["maximum"] == 10
    assert set(submit["responses"]) == {"202", "400", "413", "422", "500", "503"}
    assert set(schema["paths"]["/jobs/{job_id}"]["get"]["responses"]) == {"200", "404", "500", "503"}
    result = schema["paths"]["/jobs/{job_id}/result"]["get"]
    assert set(result["responses"]["200"]["content"]) == {"text/csv", "application/x-ndjson",
                                                         "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def test_an_undeclared_method_is_405_with_allow(api_server):
    response = requests.request("TRACE", api_server.url + "/augment", timeout=10)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


def _schemathesis(server, tmp_path, name: str, *options: str) -> dict:
    report_dir = tmp_path / name
    command = [sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json", "--checks", "all",
               "--max-examples", "60", "--workers", "1", "--seed", "15", "--generation-database", "none",
               "--report", "json", "--report-dir", str(report_dir), "--no-color", *options]
    # The hooks apply the rules JSON Schema cannot state (a text's label is one of labels, min <= max).
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    [report_file] = report_dir.glob("*.json")
    report = json.loads(report_file.read_text("utf-8"))
    assert result.returncode == 0, result.stdout[-6000:]
    assert report["failures"] == [] and report["errors"] == []
    return report


def test_schemathesis_with_all_checks_finds_nothing(api_server, tmp_path):
    report = _schemathesis(api_server, tmp_path, "requests", "--exclude-path-regex", "^/jobs")
    assert report["operations"]["tested"] == 8 and report["operations"]["total"] == 15
    assert report["test_cases"]["generated"] >= MIN_REQUESTS
    assert "Traceback" not in api_server.log_text()
    assert requests.get(api_server.url + "/readyz", timeout=5).json()["queue"]["waiting"] == 0


def test_schemathesis_finds_nothing_on_the_file_job_routes(api_server, tmp_path):
    """Every check but one: whether a form is valid depends on its file's contents (text_col must be one of its
    columns) and on rules between fields (classify needs labels), which the schema says in words only, so a
    schema-valid form may rightly get a 422."""
    report = _schemathesis(api_server, tmp_path, "jobs", "--include-path-regex", "^/jobs",
                           "--exclude-checks", "positive_data_acceptance")
    assert report["operations"]["tested"] == 7 and report["operations"]["total"] == 15
    # The hooks give forms a file with their columns: jobs are made, and the id routes are tried on real ids.
    accepted = {operation: sum(phase["accepted"] for phase in rates.values())
                for operation, rates in report["valid_rates"].items()}
    assert accepted["POST /jobs"] > 0 and accepted["GET /jobs/{job_id}/result"] > 0
    assert "Traceback" not in api_server.log_text()
