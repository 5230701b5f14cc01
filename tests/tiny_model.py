"""Build a tiny but real mT5 checkpoint with a SentencePiece tokenizer, in seconds, in both layouts."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

CORPUS = Path(__file__).parent / "data" / "zh_sentences.txt"
PREFIXES = ("", "我觉得", "听说", "其实", "总的来说，")
TINY_SHAPE = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                  relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def training_sentences() -> list[str]:
    base = [line.strip() for line in CORPUS.read_text("utf-8").splitlines() if line.strip()]
    return [prefix + sentence for prefix in PREFIXES for sentence in base]


def train_spiece(target: Path) -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_sentences()), model_writer=model, vocab_size=600, hard_vocab_limit=False,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=1, minloglevel=2,
    )
    target.write_bytes(model.getvalue())


def _write_config(config, target: Path, model_type: str) -> None:
    # Like the real mT5 checkpoints: an untied lm_head, declared in config.json. transformers
    # forces the in-memory flag to True, so the file is written by hand.
    values = config.to_dict() | {"model_type": model_type, "tie_word_embeddings": False}
    values["architectures"] = ["T5ForConditionalGeneration" if model_type == "t5" else "MT5ForConditionalGeneration"]
    (target / "config.json").write_text(json.dumps(values, indent=2), "utf-8")


def save_tokenizer(tokenizer, spiece: Path, target: Path) -> None:
    tokenizer.save_pretrained(target)
    shutil.copy(spiece, target / "spiece.model")


def write_modelscope(target: Path, config, state: dict) -> None:
    """config.json (model_type t5, untied), configuration.json and a float32 pytorch_model.bin, as
    ModelScope ships the real checkpoint; the tokenizer files are already in `target`."""
    import torch

    _write_config(config, target, "t5")
    (target / "configuration.json").write_text(
        json.dumps({"framework": "pytorch", "task": "text2text-generation"}), "utf-8")
    torch.save(state, target / "pytorch_model.bin")


def tokenizer_files(root: Path):
    """Train the tiny SentencePiece model under `root`; return (tokenizer, spiece path)."""
    from transformers import T5Tokenizer

    root.mkdir(parents=True, exist_ok=True)
    spiece = root / "spiece.model"
    train_spiece(spiece)
    tokenizer_dir = root / "tokenizer"
    tokenizer_dir.mkdir(exist_ok=True)
    shutil.copy(spiece, tokenizer_dir / "spiece.model")
    return T5Tokenizer.from_pretrained(tokenizer_dir), spiece


def build_tiny_models(root: Path) -> dict[str, Path]:
    """Write one random tiny mT5 as ModelScope (pytorch_model.bin, model_type t5), Hugging Face
    (model.safetensors, mt5) and Hugging Face FP16 directories under `root`; return them by name."""
    import torch
    from safetensors.torch import save_file
    from transformers import MT5Config, MT5ForConditionalGeneration

    tokenizer, spiece = tokenizer_files(root)

    torch.manual_seed(0)
    config = MT5Config(vocab_size=len(tokenizer), **TINY_SHAPE)
    model = MT5ForConditionalGeneration(config).eval()
    # Each tensor its own storage: an untied lm_head, and no aliasing that safetensors refuses.
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"]) * config.d_model**-0.5

    layouts = {"modelscope": root / "modelscope", "huggingface": root / "huggingface",
               "fp16": root / "huggingface-fp16"}
    for target in layouts.values():
        target.mkdir(exist_ok=True)
        save_tokenizer(tokenizer, spiece, target)
    write_modelscope(layouts["modelscope"], config, state)
    _write_config(config, layouts["huggingface"], "mt5")
    save_file(state, layouts["huggingface"] / "model.safetensors", metadata={"format": "pt"})
    _write_config(config, layouts["fp16"], "mt5")
    save_file({k: v.half() for k, v in state.items()}, layouts["fp16"] / "model.safetensors",
              metadata={"format": "pt"})
    return layouts
