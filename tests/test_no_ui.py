"""REST-only mode (--no-ui): the API serves as usual; no page, no Gradio API, gradio never imported."""

import subprocess
import sys

import pytest
import requests

from app.settings import load_settings
from tests.conftest import ROOT, server_env, start_server

REST_ROUTES = {"/augment", "/augment_batch", "/classify", "/classify_batch", "/generate", "/tasks", "/healthz",
               "/readyz"}


@pytest.fixture(scope="module")
def rest_only_server(tiny_models, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("no-ui"), "--no-ui", "--model-dir",
                          str(tiny_models["huggingface"]))
    yield server
    server.stop()


def test_the_flag_and_its_variable_turn_the_page_off():
    assert load_settings({}, {}).no_ui is False
    assert load_settings({"no_ui": True}, {}).no_ui is True
    assert load_settings({}, {"DPP_NO_UI": "1"}).no_ui is True


def test_augment_answers_with_variants(rest_only_server):
    response = requests.post(rest_only_server.url + "/augment",
                             json={"text": "物流速度很快，包装完好无损。", "max_length": 8}, timeout=60)
    assert response.status_code == 200
    body = response.json()
    assert body["engine"] == "mt5"
    assert 1 <= len(body["augmented_texts"]) <= 3
    assert all(isinstance(v, str) and v for v in body["augmented_texts"])


def test_the_root_names_the_rest_routes_and_says_the_page_is_off(rest_only_server):
    response = requests.get(rest_only_server.url + "/", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["service"] == "dpp"
    assert "--no-ui" in body["page"] and "REST" in body["message"]
    assert REST_ROUTES <= {route["path"] for route in body["routes"]}
    assert {"method": "POST", "path": "/augment"} in body["routes"]


@pytest.mark.parametrize("path", ["/gradio_api/info", "/config"])
def test_gradio_routes_are_not_served(rest_only_server, path):
    response = requests.get(rest_only_server.url + path, timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def modules_after_create_app(flags: dict) -> set[str]:
    """Which of gradio and app.ui a fresh interpreter has imported once create_app(flags) returns."""
    code = ("import os, sys\n"
            "from app.settings import load_settings\n"
            "from app.server import create_app\n"
            f"app = create_app(load_settings({flags!r}, os.environ))\n"
            "print(' '.join(sorted({'gradio', 'app.ui'} & set(sys.modules))))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=server_env(), capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_creating_the_app_without_the_page_leaves_gradio_unimported():
    assert modules_after_create_app({"no_ui": True}) == set()


def test_creating_the_app_with_the_page_mounts_gradio():
    assert modules_after_create_app({}) == {"gradio", "app.ui"}
