"""Our GPU decoder against the seed-style one, in one process: batches through our decoding loop vs
transformers' `generate` one text at a time.

    python -m bench.gpu_engines [--rounds 2] [--batch-texts 64] [--out bench/results/gpu_engines.json]

Both arms are HFEngine on the mT5-base-shaped checkpoint of bench.base_model (random weights), in the
dtype the server picks (bfloat16 on an H100):

- seed_style: decoder="generate", one `generate` call per text, as a plain loop over the model serves;
- ours: decoder="fast" (app/engines/fast_decode.py: static cache, CUDA graphs), many texts in one call.

A request is the issue's unit: one text, 3 sampled variants of 32 new tokens (forced, as in
bench.cpu_engines: random weights rarely stop, and both arms must write as much). Timed: one request
(single-request latency, over bench.texts), and BATCH_TEXTS texts (one call for ours, one call per text for
seed-style), read as generated tokens per second (texts x 3 x 32 / seconds).

Each engine is loaded and warmed up alone first, at the shapes it then serves, and its GPU memory read
there: the peak allocated and reserved above what was in use before it loaded, its weights included
(torch.cuda.reset_peak_memory_stats between the arms). Then the arms alternate within each round
(bench.machine.run_interleaved). Decoding tokens into text waits for the GPU, so every clock reading
follows finished work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from bench.machine import describe, emit, run_interleaved
from bench.texts import NEW_TOKENS, REQUEST, TEXTS, VARIANTS

ARMS = {"seed_style": "generate", "ours": "fast"}


def batch_of(count: int) -> list[str]:
    """`count` distinct texts, as bench.serving sends them in one /augment_batch."""
    return [f"{TEXTS[i % len(TEXTS)]}（第{i}条）" for i in range(count)]


def _calls(engine, decoder: str):
    """The arm's single-request and batch calls: seed-style serves a batch one text at a time."""
    def single(text: str) -> None:
        engine.generate([text], REQUEST)

    def batch(texts: list[str]) -> None:
        if decoder == "generate":
            for text in texts:
                engine.generate([text], REQUEST)
        else:
            engine.generate(texts, REQUEST)

    return single, batch


def _load_warm_and_weigh(torch, model: Path, device: str, decoder: str, batch: list[str]):
    """Load one arm's engine and warm it up; its GPU memory peak above what was in use before (None on CPU)."""
    from app.engines.hf import HFEngine

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    engine = HFEngine(model, device=device, dtype="auto", decoder=decoder)
    single, run_batch = _calls(engine, decoder)
    single(TEXTS[0])
    # The fast decoder sets up buffers (and captures graphs) per shape, so it meets the batch's shape here;
    # seed-style's batch is a loop of one-text calls, which the call above has warmed.
    run_batch(batch if decoder == "fast" else batch[:1])
    if not cuda:
        return engine, None
    torch.cuda.synchronize()
    return engine, {"peak_allocated_bytes": torch.cuda.max_memory_allocated() - allocated,
                    "peak_reserved_bytes": torch.cuda.max_memory_reserved() - reserved}


def measure(rounds: int = 2, text_count: int = len(TEXTS), batch_texts: int = 64, device: str = "cuda",
            model: Path | None = None) -> dict:
    """Time both arms on the first `text_count` bench texts and on one batch; the report as a dict."""
    import torch
    import transformers

    from bench.base_model import build_base_model

    model = build_base_model() if model is None else model
    batch = batch_of(batch_texts)
    engines, memory = {}, {}
    for arm, decoder in ARMS.items():
        engines[arm], memory[arm] = _load_warm_and_weigh(torch, model, device, decoder, batch)
    # decoder_check: the load-time check's figures on this device (its bfloat16 gap is what its tolerance
    # should be revisited with); decoder_fallback: why our loop does not serve, if it does not.
    keys = ("device", "dtype", "decoder", "load_seconds", "decoder_check", "decoder_fallback")
    infos = {arm: {key: engine.info().get(key) for key in keys} for arm, engine in engines.items()}
    if infos["ours"]["decoder"] == "generate":
        why = infos["ours"]["decoder_fallback"] or "see the warning above"
        raise SystemExit(f"the fast decoder did not load ({why}): both arms would run generate")

    calls = {arm: _calls(engine, ARMS[arm]) for arm, engine in engines.items()}
    single = run_interleaved({arm: one for arm, (one, _) in calls.items()}, TEXTS[:text_count], rounds)
    batched = run_interleaved({arm: many for arm, (_, many) in calls.items()}, [batch], rounds, warm_up=False)
    median_ms = {}
    for arm in ARMS:
        median_ms[f"{arm}/single"] = round(statistics.median(single[arm]), 1)
        median_ms[f"{arm}/batch"] = round(statistics.median(batched[arm]), 1)
    tokens_per_s = {arm: round(batch_texts * VARIANTS * NEW_TOKENS / (median_ms[f"{arm}/batch"] / 1000))
                    for arm in ARMS}
    cuda = device.startswith("cuda")
    return {
        "benchmark": "gpu_engines: our decoder on batches vs transformers' generate per text, one process",
        "machine": describe(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": "mT5-base-shaped, random weights",
        "request": f"1 text, {VARIANTS} sampled variants x {NEW_TOKENS} forced new tokens",
        "engines": infos,
        "texts": text_count,
        "batch_texts": batch_texts,
        "rounds": rounds,
        "median_ms": median_ms,
        "batch_generated_tokens_per_s": tokens_per_s,
        "gpu_memory": memory,
        "ratios": {
            "single_request_seed_style_over_ours": round(median_ms["seed_style/single"] / median_ms["ours/single"], 2),
            "batch_tokens_per_s_ours_over_seed_style": round(tokens_per_s["ours"] / tokens_per_s["seed_style"], 2),
        },
        "note": "Random weights: only the time counts. Both engines in one process, arms interleaved; GPU "
                "memory per arm is its peak above what was in use before it loaded, its weights included.",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (after one warm-up)")
    parser.add_argument("--batch-texts", type=int, default=64)
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu runs too, for a smoke test)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    return emit(measure(args.rounds, batch_texts=args.batch_texts, device=args.device), args.out)


if __name__ == "__main__":
    sys.exit(main())
