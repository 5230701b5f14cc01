"""Convert a local mT5 checkpoint (ModelScope or Hugging Face layout) for serving, and prove it.

    python -m bundle.convert SRC DST [--force]                         # FP16 safetensors
    python -m bundle.convert --ct2 SRC [DST] [--quantization int8]     # CTranslate2, DST default SRC/ctranslate2

FP16: the weights are rounded to float16 and written as one `model.safetensors`; config, tokenizer
and other small files are copied unchanged. The result is checked before it is kept: both models
run in float32, as the CPU engine runs them, and must agree (see `FP16_ATOL`).

CTranslate2: the model the mt5-ct2 engine serves (int8 by default), with the tokenizer as one
`tokenizer.json` beside it, so it needs neither torch nor transformers to run. A float32
conversion must give the original's greedy output token for token; a quantized one is reported.
The server picks it up from `<model dir>/ctranslate2` on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.engines.model_files import inspect_model_dir
from app.errors import ModelUnavailable
from app.settings import CT2_DIR_NAME
from bundle.progress import Progress, human_size

# Files that hold weights (any framework); everything else at the top of the directory is copied.
WEIGHT_SUFFIXES = (".bin", ".safetensors", ".h5", ".msgpack", ".ckpt", ".pt", ".pth", ".index.json")
# Recreated by transformers from shared.weight when missing, so storing them would double 384 MB.
DERIVED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
FLOAT16_MAX = 65504.0
PROBE_PROMPT = "这家餐厅的菜味道很好，服务也很周到，下次还会再来。"
PROBE_TOKENS = 24
# Logits of the FP16 weights (computed in float32) may differ from the original's by at most
# ATOL + RTOL * max|logit|. Rounding a weight to float16 changes it by at most 2**-11 of its size
# (about 0.05%); through 24 layers this grows to well under 1% of the logit range.
FP16_ATOL = 0.05
FP16_RTOL = 0.01
CT2_QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16",
                     "float32")


class ConvertError(Exception):
    """Conversion refused or failed; the message says why and what to do."""


@dataclass(frozen=True)
class ProbeResult:
    max_abs_diff: float
    tolerance: float
    same_greedy: bool
    near_tie: bool
    tokens: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and (self.same_greedy or self.near_tie)

    def describe(self) -> str:
        greedy = "identical" if self.same_greedy else "differs only at a near-tie" if self.near_tie else "DIFFERS"
        return (f"probe: greedy output over {self.tokens} tokens {greedy}; "
                f"max |logit difference| {self.max_abs_diff:.4g} (tolerance {self.tolerance:.4g})")


def _load_state(weights: tuple[Path, ...]) -> dict:
    import torch
    from safetensors.torch import load_file

    state: dict = {}
    for path in weights:
        if path.suffix == ".safetensors":
            state.update(load_file(path))
        else:
            state.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    return state


def _half_state(state: dict) -> dict:
    import torch

    shared = state.get("shared.weight")
    result = {}
    progress = Progress("convert", len(state), unit="tensors")
    for name, tensor in state.items():
        progress.advance()
        if name.endswith(DERIVED) and shared is not None and torch.equal(tensor, shared):
            continue
        if tensor.is_floating_point():
            peak = tensor.abs().max().item() if tensor.numel() else 0.0
            if peak > FLOAT16_MAX:
                raise ConvertError(f"tensor {name} holds {peak:.3g}, beyond float16's range; "
                                   "this checkpoint cannot be stored as FP16")
            tensor = tensor.to(torch.float16)
        result[name] = tensor.contiguous()
    progress.done(f"{len(result)} tensors kept")
    return result


def _copy_side_files(source: Path, target: Path) -> None:
    for path in sorted(source.iterdir()):
        if path.is_file() and not path.name.startswith(".") and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(path, target / path.name)


def probe(original: Path, converted: Path, prompt: str = PROBE_PROMPT) -> ProbeResult:
    """Run both checkpoints in float32 on `prompt`: greedy outputs and logits along the original's path."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(original, local_files_only=True)
    models = [AutoModelForSeq2SeqLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
              for path in (original, converted)]
    encoded = tokenizer([prompt], return_tensors="pt")
    with torch.inference_mode():
        greedy = [model.generate(**encoded, do_sample=False, num_beams=1, max_new_tokens=PROBE_TOKENS,
                                 min_new_tokens=PROBE_TOKENS) for model in models]
        path = greedy[0][:, :-1]
        logits = [model(**encoded, decoder_input_ids=path).logits[0] for model in models]
    diff = (logits[0] - logits[1]).abs()
    tolerance = FP16_ATOL + FP16_RTOL * logits[0].abs().max().item()
    same = torch.equal(greedy[0], greedy[1])
    near_tie = False
    if not same and greedy[0].shape == greedy[1].shape:
        step = int((greedy[0][0] != greedy[1][0]).nonzero()[0]) - 1  # logits row that chose the token
        top2 = logits[0][step].topk(2).values
        near_tie = (top2[0] - top2[1]).item() <= 2 * diff[step].max().item()
    return ProbeResult(diff.max().item(), tolerance, same, near_tie, path.shape[1])


def _checked_source(source: Path, target: Path, force: bool):
    try:
        files = inspect_model_dir(source)
    except ModelUnavailable as exc:
        raise ConvertError(str(exc)) from exc
    if source.resolve() == target.resolve():
        raise ConvertError("source and target are the same directory; convert into a new one")
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not force:
        raise ConvertError(f"{target} already exists; pass --force to replace it")
    return files


@contextlib.contextmanager
def _staged(target: Path) -> Iterator[Path]:
    """A fresh directory beside `target` that replaces it only when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def convert(source: Path, target: Path, *, force: bool = False) -> ProbeResult:
    """Write the FP16 copy of `source` to `target` (atomically) and return the probe that passed."""
    from safetensors.torch import save_file

    files = _checked_source(source, target, force)
    with _staged(target) as staging:
        print(f"[convert] reading {files.layout} checkpoint {source}", file=sys.stderr)
        state = _half_state(_load_state(files.weights))
        save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
        del state
        (staging / "model.safetensors").chmod(0o644)
        _copy_side_files(source, staging)
        print("[convert] checking the FP16 model against the original", file=sys.stderr)
        result = probe(source, staging)
        print(f"[convert] {result.describe()}", file=sys.stderr)
        if not result.ok:
            raise ConvertError(f"the FP16 model does not match the original ({result.describe()}); nothing written")
    return result


def convert_ct2(source: Path, target: Path, *, quantization: str = "int8", force: bool = False) -> str:
    """Write the CTranslate2 model of `source` to `target` (atomically); return the probe's verdict."""
    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import AutoTokenizer

    class UntiedConverter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            # transformers 5 reports tie_word_embeddings=True for every MT5Config, and CTranslate2 would then
            # scale the decoder output by d_model**-0.5. mT5 keeps its own lm_head: trust the weights.
            model.config.tie_word_embeddings = torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)
            return model

    if quantization not in CT2_QUANTIZATIONS:
        raise ConvertError(f"quantization must be one of {', '.join(CT2_QUANTIZATIONS)}, got {quantization!r}")
    files = _checked_source(source, target, force)
    with _staged(target) as staging:
        print(f"[convert] reading {files.layout} checkpoint {source}; writing CTranslate2 {quantization}",
              file=sys.stderr)
        UntiedConverter(str(source), load_as_float16=False).convert(str(staging), quantization=quantization,
                                                                    force=True)
        with tempfile.TemporaryDirectory() as scratch:
            AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(scratch)
            shutil.copy(Path(scratch) / "tokenizer.json", staging / "tokenizer.json")
        same, total = probe_ct2(source, staging)
        verdict = f"probe: CTranslate2 greedy output agrees with the original on {same} of {total} tokens"
        print(f"[convert] {verdict}", file=sys.stderr)
        if quantization == "float32" and same != total:
            raise ConvertError(f"the float32 CTranslate2 model does not match the original ({verdict}); nothing written")
    return verdict


def probe_ct2(original: Path, converted: Path, prompt: str = PROBE_PROMPT) -> tuple[int, int]:
    """Greedy decoding of `prompt` by the original (transformers, float32) and by the converted model:
    how many of the first PROBE_TOKENS tokens agree, counted up to the first difference."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from app.engines.ct2 import CT2Engine

    engine = CT2Engine(converted, device="cpu")
    model = AutoModelForSeq2SeqLM.from_pretrained(original, local_files_only=True, dtype=torch.float32).eval()
    ids = engine.encode([prompt])
    with torch.inference_mode():
        expected = model.generate(torch.tensor(ids), do_sample=False, num_beams=1, max_new_tokens=PROBE_TOKENS,
                                  min_new_tokens=PROBE_TOKENS)[0, 1:].tolist()
    got = engine.greedy_ids(ids, PROBE_TOKENS)[0]
    same = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    return same, len(expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bundle.convert",
        description="Convert a local mT5 checkpoint (ModelScope or Hugging Face layout, pytorch_model.bin or "
                    "safetensors) to FP16 safetensors. The copy is checked against the original on a probe "
                    f"prompt: identical greedy output and logits within {FP16_ATOL} + {FP16_RTOL} x max|logit|.",
    )
    parser.add_argument("source", type=Path, help="model directory to read")
    parser.add_argument("target", type=Path, nargs="?",
                        help=f"directory to write (must not exist unless --force); with --ct2 default SOURCE/{CT2_DIR_NAME}")
    parser.add_argument("--force", action="store_true", help="replace TARGET if it already exists")
    parser.add_argument("--ct2", action="store_true", help="write a CTranslate2 model for the mt5-ct2 engine")
    parser.add_argument("--quantization", default="int8", choices=CT2_QUANTIZATIONS,
                        help="CTranslate2 weight type (default int8)")
    args = parser.parse_args(argv)
    if args.target is None and not args.ct2:
        parser.error("TARGET is required (without --ct2)")
    target = args.target or args.source / CT2_DIR_NAME
    try:
        if args.ct2:
            convert_ct2(args.source, target, quantization=args.quantization, force=args.force)
        else:
            convert(args.source, target, force=args.force)
    except ConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    kind = f"CTranslate2 {args.quantization}" if args.ct2 else "FP16"
    print(f"{kind} model written: {target.resolve()} ({human_size(size)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
