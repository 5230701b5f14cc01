"""An mT5-base-shaped checkpoint with random weights, for measuring what the real one costs.

    .venv/bin/python -m bench.base_model [--out bench/.cache/mt5-base-random]

Same shapes as google/mt5-base and the ModelScope model (d_model 768, 12+12 layers, 250,112-token
vocabulary, untied lm_head: about 582M parameters, a 2.3 GB float32 pytorch_model.bin) in
ModelScope's layout. The tokenizer is the tests' tiny SentencePiece model: token ids stay below its
size, which changes nothing in what a token costs. Its outputs are noise; use it for size and time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.tiny_model import save_tokenizer, tokenizer_files, write_modelscope

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "bench" / ".cache" / "mt5-base-random"
BASE_SHAPE = dict(vocab_size=250112, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
                  num_heads=12, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                  pad_token_id=0, eos_token_id=1, dropout_rate=0.1)


def build_base_model(target: Path = DEFAULT_DIR) -> Path:
    """Write the checkpoint once; later calls reuse it."""
    if (target / "pytorch_model.bin").is_file():
        return target
    import torch
    from transformers import MT5Config, MT5ForConditionalGeneration

    target.mkdir(parents=True, exist_ok=True)
    tokenizer, spiece = tokenizer_files(target.parent / (target.name + "-tokenizer"))
    save_tokenizer(tokenizer, spiece, target)
    torch.manual_seed(0)
    config = MT5Config(**BASE_SHAPE)
    model = MT5ForConditionalGeneration(config).eval()
    # The embedding stays shared by shared/encoder/decoder, as in the real file (torch.save keeps aliases).
    state = dict(model.state_dict())
    state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"]) * config.d_model**-0.5
    write_modelscope(target, config, state)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.base_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    print(build_base_model(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
