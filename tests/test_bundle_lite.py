"""The cpu-lite bundle: CTranslate2 int8 weights and no torch, built from the tiny model and run unpacked."""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from bundle.build import LITE_LEAVES_OUT
from tests.conftest import free_port, launcher_tools
from tests.test_bundle import _normal, build_bundle, launcher, version_fields

pytestmark = pytest.mark.bundle


@pytest.fixture(scope="module")
def lite(tiny_models, tmp_path_factory):
    tarball, _ = build_bundle(tiny_models["modelscope"], "cpu-lite", tmp_path_factory.mktemp("dist-lite"))
    assert "-cpu-lite-linux-" in tarball.name
    target = tmp_path_factory.mktemp("target-lite")
    subprocess.run(["tar", "-xzf", str(tarball)], cwd=target, check=True)
    (top,) = target.iterdir()
    return top


def test_it_carries_ctranslate2_and_neither_torch_nor_transformers(lite):
    fields = version_fields(lite)
    assert fields["profile"] == "cpu-lite" and fields["torch"] == "none"
    assert fields["model_dtype"] == "int8-ctranslate2"
    site = next((lite / "python" / "lib").glob("python3.*/site-packages"))
    installed = {_normal(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
    assert "ctranslate2" in installed and "tokenizers" in installed and "gradio" in installed
    assert not installed & {_normal(name) for name in LITE_LEAVES_OUT}
    model = lite / "models" / "nlp_mt5_zero-shot-augment_chinese-base"
    assert (model / "ctranslate2" / "model.bin").is_file() and (model / "ctranslate2" / "tokenizer.json").is_file()
    assert [path.name for path in model.rglob("*.bin")] == ["model.bin"] and not list(model.rglob("*.safetensors"))


def test_it_serves_with_the_ctranslate2_engine(lite, tmp_path):
    tools = launcher_tools(tmp_path / "tools")
    setup = launcher(lite, "--setup-only", tools=tools)
    assert setup.returncode == 0 and "CTranslate2 (no torch)" in setup.stdout, setup.stdout + setup.stderr
    port = free_port()
    server = subprocess.Popen(["/usr/bin/env", "-i", f"PATH={tools}", "./start_dpp.sh", "--host", "127.0.0.1",
                               "--port", str(port)], cwd=lite, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()[-3000:]
            try:
                ready = requests.get(url + "/readyz", timeout=2).json()
                if ready.get("status") == "ready":
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        assert ready["engine"] == "mt5-ct2" and ready["engines"] == ["mt5-ct2", "lexical"]
        augment = requests.post(url + "/augment", json={"text": "物流很快，包装完好。", "max_length": 8}, timeout=60)
        assert augment.status_code == 200 and augment.json()["engine"] == "mt5-ct2"
        labels = ["物流", "价格"]
        classify = requests.post(url + "/classify", json={"text": "物流很快", "labels": labels}, timeout=60)
        assert classify.status_code == 200 and classify.json()["label"] in labels
    finally:
        server.terminate()
        server.wait(timeout=30)
