"""Both checkpoint layouts load through the real code; anything broken is named, never half-loaded."""

import json
import shutil

import pytest
import torch

from app.engines.hf import HFEngine, pick_dtype
from app.engines.model_files import inspect_model_dir
from app.errors import ModelUnavailable
from app.params import GenerationParams

PROMPTS = ["这款耳机的音质很好，佩戴也很舒适。", "物流速度很快", "请问怎么修改收货地址？"]
GREEDY = GenerationParams(do_sample=False, num_return_sequences=1, max_length=12, min_new_tokens=12)


def test_layouts_are_recognised(tiny_models):
    assert inspect_model_dir(tiny_models["modelscope"]).layout == "modelscope"
    assert inspect_model_dir(tiny_models["huggingface"]).layout == "huggingface"
    assert inspect_model_dir(tiny_models["modelscope"]).weights[0].name == "pytorch_model.bin"


def test_modelscope_and_huggingface_layouts_load_the_same_model(tiny_models):
    modelscope = HFEngine(tiny_models["modelscope"])
    huggingface = HFEngine(tiny_models["huggingface"])
    assert modelscope.info()["layout"] == "modelscope"
    assert modelscope.generate(PROMPTS, GREEDY) == huggingface.generate(PROMPTS, GREEDY)
    assert modelscope.score(PROMPTS[0], ["积极", "消极"]) == pytest.approx(
        huggingface.score(PROMPTS[0], ["积极", "消极"]), abs=1e-4)


def test_fp16_files_load_and_run_in_float32_on_cpu(tiny_models):
    fp16 = HFEngine(tiny_models["fp16"], device="cpu")
    fp32 = HFEngine(tiny_models["huggingface"], device="cpu")
    assert fp16.info()["dtype"] == "float32"
    outputs = fp16.generate(PROMPTS, GREEDY)
    assert all(len(texts) == 1 and texts[0] for texts in outputs)
    # FP16 storage rounds each weight by at most 2**-11 relative; label scores move accordingly little.
    assert fp16.score(PROMPTS[1], ["积极", "消极", "物流"]) == pytest.approx(
        fp32.score(PROMPTS[1], ["积极", "消极", "物流"]), rel=1e-2)


def _copy(tiny_models, tmp_path, layout="huggingface"):
    target = tmp_path / layout
    shutil.copytree(tiny_models[layout], target)
    return target


def test_missing_directory_names_the_path_and_how_to_get_weights(tmp_path):
    with pytest.raises(ModelUnavailable) as caught:
        HFEngine(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in caught.value.message
    assert "damo/nlp_mt5_zero-shot-augment_chinese-base" in caught.value.message


@pytest.mark.parametrize("remove, expected", [
    ("config.json", "config.json"),
    ("model.safetensors", "权重文件"),
    ("spiece.model+tokenizer.json", "分词器"),
])
def test_incomplete_directory_names_what_is_missing(tiny_models, tmp_path, remove, expected):
    target = _copy(tiny_models, tmp_path)
    for name in remove.split("+"):
        (target / name).unlink()
    with pytest.raises(ModelUnavailable, match=expected):
        HFEngine(target)


def test_other_architectures_are_refused(tiny_models, tmp_path):
    target = _copy(tiny_models, tmp_path)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
    with pytest.raises(ModelUnavailable, match="bert"):
        HFEngine(target)


def test_sharded_checkpoint_with_a_missing_shard_is_refused(tiny_models, tmp_path):
    target = _copy(tiny_models, tmp_path)
    (target / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"shared.weight": "model-00001-of-00002.safetensors",
                                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (target / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelUnavailable, match="model-00001-of-00002"):
        HFEngine(target)


def test_truncated_weights_are_reported_in_one_line(tiny_models, tmp_path):
    target = _copy(tiny_models, tmp_path, "modelscope")
    weights = target / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelUnavailable) as caught:
        HFEngine(target)
    assert "\n" not in caught.value.message
    assert "无法加载" in caught.value.message


def test_weights_of_another_shape_are_refused(tiny_models, tmp_path):
    target = _copy(tiny_models, tmp_path)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(config | {"d_ff": config["d_ff"] * 2}))
    with pytest.raises(ModelUnavailable):
        HFEngine(target)


def test_weights_missing_a_tensor_are_refused(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    target = _copy(tiny_models, tmp_path)
    state = load_file(target / "model.safetensors")
    del state["decoder.final_layer_norm.weight"]
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelUnavailable, match="decoder.final_layer_norm.weight"):
        HFEngine(target)


class _FakeCuda:
    """Stands in for torch.cuda on this GPU-less machine; pick_dtype is what is under test."""

    def __init__(self, bf16: bool) -> None:
        self.bf16 = bf16

    def device(self, name):
        import contextlib
        return contextlib.nullcontext()

    def is_bf16_supported(self, including_emulation=True):
        return self.bf16 or including_emulation


class _TorchWithGpu:
    float32, bfloat16, float16 = torch.float32, torch.bfloat16, torch.float16

    def __init__(self, bf16: bool) -> None:
        self.cuda = _FakeCuda(bf16)


def test_dtype_is_float32_on_cpu_and_bfloat16_only_on_gpus_with_native_support():
    assert pick_dtype(torch, "cpu", "auto") == torch.float32
    assert pick_dtype(_TorchWithGpu(bf16=True), "cuda:0", "auto") == torch.bfloat16
    # T4 and V100: emulated bfloat16 only, and float16 overflows in T5, so float32.
    assert pick_dtype(_TorchWithGpu(bf16=False), "cuda:0", "auto") == torch.float32
    assert pick_dtype(torch, "cpu", "bfloat16") == torch.bfloat16


def test_asking_for_cuda_without_a_gpu_is_a_clear_refusal(tiny_models):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelUnavailable, match="CUDA"):
        HFEngine(tiny_models["huggingface"], device="cuda")
