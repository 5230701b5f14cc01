"""Recognise a local model directory (ModelScope or Hugging Face layout) before loading it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from app.errors import ModelUnavailable
from app.settings import MODEL_ID

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("spiece.model", "tokenizer.json")
HOW_TO_GET = (
    f"请在联网的机器上从 ModelScope 下载 {MODEL_ID}（或其 Hugging Face 版本），"
    "放到该目录或用 --model-dir / DPP_MODEL_DIR 指定，详见 README「安装模型权重」。"
)


@dataclass(frozen=True)
class ModelFiles:
    directory: Path
    layout: str  # "modelscope" or "huggingface"
    weights: tuple[Path, ...]
    model_type: str


def _unavailable(directory: Path, problem: str) -> ModelUnavailable:
    return ModelUnavailable(f"模型目录 {directory} {problem}。{HOW_TO_GET}")


def _weights(directory: Path) -> tuple[Path, ...]:
    for name in WEIGHT_FILES:
        index = directory / (name + ".index.json")
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text("utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, TypeError) as exc:
                raise _unavailable(directory, f"的 {index.name} 无法解析（{exc}）") from exc
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise _unavailable(directory, f"缺少权重分片 {', '.join(missing)}")
            return tuple(directory / s for s in shards)
        if (directory / name).is_file():
            return (directory / name,)
    raise _unavailable(directory, f"缺少权重文件（{' 或 '.join(WEIGHT_FILES)}）")


def inspect_model_dir(directory: Path) -> ModelFiles:
    """Check that `directory` holds a T5/mT5 checkpoint we can load; say what is missing if not."""
    if not directory.is_dir():
        raise _unavailable(directory, "不存在")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise _unavailable(directory, "缺少 config.json")
    try:
        config = json.loads(config_path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _unavailable(directory, f"的 config.json 无法解析（{exc}）") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise _unavailable(directory, f"的 model_type 为 {model_type!r}，需要 t5 或 mt5")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise _unavailable(directory, f"缺少分词器文件（{' 或 '.join(TOKENIZER_FILES)}）")
    weights = _weights(directory)
    modelscope = (directory / "configuration.json").is_file() or weights[0].suffix == ".bin"
    return ModelFiles(directory, "modelscope" if modelscope else "huggingface", weights, model_type)
