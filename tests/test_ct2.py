"""The CTranslate2 engine on the tiny real model: conversion, equivalence with transformers, selection."""

import shutil
import subprocess
import sys

import pytest
import requests

from app.engines import engines_to_load
from app.engines.ct2 import CT2Engine
from app.engines.hf import HFEngine
from app.errors import ModelUnavailable
from app.params import GenerationParams
from app.settings import Settings
from bundle import convert
from tests.conftest import ROOT, start_server

PROMPTS = ["这款耳机的音质很好，佩戴也很舒适。", "好", "文本分类。\n候选标签：物流,价格。\n文本内容：物流很快",
           "账户被冻结后需要携带身份证到网点办理。"]
LABELS = ["物流", "价格", "客服态度", "质量"]
# Label log-probabilities of the float32 CTranslate2 model may differ from transformers' by this much:
# the same float32 arithmetic in another order.
SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model_dir(tiny_models, tmp_path_factory):
    """A copy of the tiny Hugging Face model with a float32 CTranslate2 model in `ctranslate2/`."""
    target = tmp_path_factory.mktemp("ct2") / "model"
    shutil.copytree(tiny_models["huggingface"], target)
    assert convert.main([str(target), "--ct2", "--quantization", "float32"]) == 0
    return target


@pytest.fixture(scope="module")
def engines(model_dir):
    return HFEngine(model_dir, device="cpu"), CT2Engine(model_dir / "ctranslate2")


def test_the_conversion_is_self_contained(model_dir):
    names = {path.name for path in (model_dir / "ctranslate2").iterdir()}
    assert {"model.bin", "config.json", "tokenizer.json"} <= names
    assert not any(name.startswith(".") for name in (path.name for path in model_dir.iterdir()))


def test_greedy_output_equals_transformers_token_for_token(engines):
    hf, ct2 = engines
    ids = ct2.encode(PROMPTS)
    assert ids == [hf._tokenizer(prompt).input_ids for prompt in PROMPTS]
    import torch

    for row in ids:
        expected = hf._model.generate(torch.tensor([row]), do_sample=False, max_new_tokens=24)[0, 1:].tolist()
        got = ct2.greedy_ids([row], 24)[0]
        assert got == [token for token in expected if token not in (0, 1)]
    greedy = GenerationParams(do_sample=False, num_return_sequences=1, max_length=24)
    assert ct2.generate(PROMPTS, greedy) == hf.generate(PROMPTS, greedy)


def test_label_scores_agree_with_transformers(engines):
    hf, ct2 = engines
    for prompt in PROMPTS:
        assert ct2.score(prompt, LABELS) == pytest.approx(hf.score(prompt, LABELS), abs=SCORE_TOLERANCE)


def test_scoring_many_prompts_at_once_agrees_with_transformers(engines):
    hf, ct2 = engines
    items = [(prompt, LABELS[:2 + number % 3]) for number, prompt in enumerate(PROMPTS)]
    for ours, theirs in zip(ct2.score_batch(items), hf.score_batch(items)):
        assert ours == pytest.approx(theirs, abs=SCORE_TOLERANCE)


def test_long_prompts_are_cut_as_transformers_cuts_them(model_dir):
    short = CT2Engine(model_dir / "ctranslate2", max_input_tokens=8)
    hf = HFEngine(model_dir, device="cpu", max_input_tokens=8)
    assert short.encode([PROMPTS[3]]) == hf._encode([PROMPTS[3]]).input_ids.tolist()


def test_a_seed_reproduces_sampling_and_another_differs(engines):
    _, ct2 = engines
    params = GenerationParams(num_return_sequences=3, max_length=12, seed=7, top_k=0)
    first = ct2.generate(PROMPTS[:2], params)
    assert [len(texts) for texts in first] == [3, 3]
    assert ct2.generate(PROMPTS[:2], params) == first
    assert ct2.generate(PROMPTS[:2], params.with_changes(seed=8)) != first
    unseeded = ct2.generate(PROMPTS[:1], params.with_changes(seed=None, temperature=1.5))[0]
    assert len(set(unseeded)) > 1


def test_serving_with_ctranslate2_imports_neither_torch_nor_transformers(model_dir):
    code = ("import sys; from pathlib import Path; from app.engines.ct2 import CT2Engine; from app.params import "
            "GenerationParams; e = CT2Engine(Path(sys.argv[1])); e.generate(['好'], GenerationParams(max_length=8)); "
            "e.score('好', ['甲', '乙']); print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code, str(model_dir / "ctranslate2")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_missing_conversion_says_how_to_make_it(tmp_path):
    with pytest.raises(ModelUnavailable, match="bundle.convert --ct2"):
        CT2Engine(tmp_path / "ctranslate2")


def test_a_wrong_quantization_is_refused(model_dir, tmp_path):
    with pytest.raises(convert.ConvertError, match="quantization"):
        convert.convert_ct2(model_dir, tmp_path / "out", quantization="int4")


def test_auto_prefers_the_converted_model_on_cpu(model_dir, tmp_path):
    assert engines_to_load(Settings(model_dir=model_dir, device="cpu")) == ("mt5-ct2", "lexical")
    assert engines_to_load(Settings(model_dir=tmp_path, device="cpu")) == ("mt5", "lexical")
    assert engines_to_load(Settings(model_dir=model_dir, device="cuda")) == ("mt5", "lexical")
    assert engines_to_load(Settings(model_dir=model_dir, engine="mt5")) == ("mt5",)


def test_a_server_on_cpu_serves_the_converted_model(model_dir, engines, tmp_path):
    server = start_server(tmp_path, "--model-dir", str(model_dir), "--device", "cpu")
    try:
        ready = requests.get(server.url + "/readyz", timeout=10).json()
        assert ready["engine"] == "mt5-ct2" and ready["layout"] == "ctranslate2"
        assert ready["engines"] == ["mt5-ct2", "lexical"]
        request = {"text": PROMPTS[0], "max_length": 8, "seed": 3}
        first = requests.post(server.url + "/augment", json=request, timeout=60).json()
        assert first["engine"] == "mt5-ct2" and 1 <= len(first["augmented_texts"]) <= 3
        assert requests.post(server.url + "/augment", json=request, timeout=60).json()["augmented_texts"] == \
            first["augmented_texts"]
        body = requests.post(server.url + "/classify", json={"text": PROMPTS[0], "labels": LABELS}, timeout=60).json()
        hf, _ = engines
        prompt = "文本分类。\n候选标签：" + ",".join(LABELS) + "。\n文本内容：" + PROMPTS[0]
        expected = dict(zip(LABELS, hf.score(prompt, LABELS)))
        assert body["label"] == max(expected, key=expected.get)
    finally:
        server.stop()
