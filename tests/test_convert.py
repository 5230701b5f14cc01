"""FP16 conversion on real tiny checkpoints: what it writes, what it refuses, and the check that guards it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from safetensors import safe_open

from app.engines.hf import HFEngine
from app.params import GenerationParams
from bundle.convert import DERIVED, probe
from tests.conftest import ROOT


def run_convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bundle.convert", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def converted(tiny_models, tmp_path_factory):
    """The ModelScope layout (pytorch_model.bin, float32) converted once for the module."""
    target = tmp_path_factory.mktemp("convert") / "fp16"
    result = run_convert(tiny_models["modelscope"], target)
    assert result.returncode == 0, result.stderr
    return target, result


@pytest.mark.parametrize("layout", ["modelscope", "huggingface"])
def test_both_layouts_convert_to_fp16_safetensors(tiny_models, tmp_path, layout):
    target = tmp_path / "out"
    result = run_convert(tiny_models[layout], target)
    assert result.returncode == 0, result.stderr
    with safe_open(target / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
        assert names and all(str(weights.get_slice(n).get_dtype()) == "F16" for n in names)
    assert "lm_head.weight" in names and "shared.weight" in names
    assert not any(name.endswith(DERIVED) for name in names)  # derived from shared.weight on load
    assert "FP16 model written" in result.stdout


def test_side_files_are_copied_unchanged_and_no_float32_weights_remain(tiny_models, converted):
    target, _ = converted
    source = tiny_models["modelscope"]
    for name in ("config.json", "configuration.json", "spiece.model", "tokenizer_config.json"):
        assert (target / name).read_bytes() == (source / name).read_bytes()
    assert not (target / "pytorch_model.bin").exists()
    assert json.loads((target / "config.json").read_text())["tie_word_embeddings"] is False
    assert (target / "model.safetensors").stat().st_size < (source / "pytorch_model.bin").stat().st_size * 0.6


def test_the_probe_result_is_printed_with_its_tolerance(converted):
    _, result = converted
    assert "greedy output over 24 tokens identical" in result.stderr
    assert "tolerance" in result.stderr


def test_the_engine_serves_the_converted_model_like_the_original(tiny_models, converted):
    target, _ = converted
    params = GenerationParams(do_sample=False, max_length=16, min_new_tokens=16)
    prompts = ["今天天气很好，我们去公园散步吧。", "这家店的服务态度非常好。"]
    original = HFEngine(tiny_models["modelscope"]).generate(prompts, params)
    fp16 = HFEngine(target).generate(prompts, params)
    assert fp16 == original
    assert all(text for texts in fp16 for text in texts)


def test_an_existing_target_is_refused_without_force(tiny_models, converted):
    target, _ = converted
    before = (target / "model.safetensors").stat().st_mtime_ns
    result = run_convert(tiny_models["huggingface"], target)
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert (target / "model.safetensors").stat().st_mtime_ns == before


def test_force_replaces_the_target(tiny_models, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    result = run_convert(tiny_models["huggingface"], target, "--force")
    assert result.returncode == 0, result.stderr
    assert not (target / "stale.txt").exists()
    assert (target / "model.safetensors").is_file()


def test_a_directory_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_convert(tmp_path / "empty", tmp_path / "out")
    assert result.returncode == 2
    assert "config.json" in result.stderr
    assert not (tmp_path / "out").exists()


def test_weights_beyond_float16_range_are_refused(tiny_models, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    source = tmp_path / "big"
    shutil.copytree(tiny_models["huggingface"], source)
    state = load_file(source / "model.safetensors")
    state["lm_head.weight"][0, 0] = 1e6
    save_file(state, source / "model.safetensors", metadata={"format": "pt"})
    result = run_convert(source, tmp_path / "out")
    assert result.returncode == 2
    assert "lm_head.weight" in result.stderr and "float16" in result.stderr
    assert not (tmp_path / "out").exists()
    assert torch.isfinite(load_file(tiny_models["huggingface"] / "model.safetensors")["lm_head.weight"]).all()


def test_the_probe_rejects_a_model_that_is_not_the_original(tiny_models, tmp_path):
    """The check has teeth: a checkpoint with other weights fails it."""
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny_models["huggingface"], other)
    state = load_file(other / "model.safetensors")
    state["lm_head.weight"] = state["lm_head.weight"].flip(0).contiguous()
    save_file(state, other / "model.safetensors", metadata={"format": "pt"})
    result = probe(tiny_models["huggingface"], other)
    assert not result.ok
    assert result.max_abs_diff > result.tolerance
    assert probe(tiny_models["huggingface"], tiny_models["fp16"]).ok


def test_help_documents_every_option():
    result = run_convert("--help")
    assert result.returncode == 0
    for option in ("source", "target", "--force", "greedy"):
        assert option in result.stdout
