"""One benchmark command per device: the seed-style baseline against ours, at the engine and through a
real server, in one run, as one JSON.

    python -m bench.device --device cpu|cuda [--out FILE] [--rounds N] [--texts N] [--clients N]
                           [--requests N] [--batch-texts N]

- cpu: the engine level is bench.cpu_engines (transformers float32 vs CTranslate2 int8, single requests,
  each engine in a worker process); the server level is bench.serving on mt5-ct2, 8 clients (seed-style:
  --no-coalescing --max-batch-size 1; ours: as shipped).
- cuda: the engine level is bench.gpu_engines (transformers' generate per text vs our decoder on batches,
  in this process); the server level is bench.serving on mt5 with --no-ui (a GPU machine need not have
  gradio), 32 clients (seed-style: --decoder generate --no-coalescing --max-batch-size 1; ours: as
  shipped, which on a GPU coalesces up to 64 prompts per engine call).

Both levels build or reuse the mT5-base-shaped model of bench.base_model (random weights, cached in
bench/.cache, not committed). The server level runs first, while this process has not touched the GPU.
The report holds both sections, their ratios side by side, and `targets`: the issue's targets against
what this run measured (benchmarks, not tests).
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
import time
from pathlib import Path

from bench import cpu_engines, serving
from bench.machine import describe, emit
from bench.texts import TEXTS

SERVER_ARMS = {
    "cpu": dict(engine="mt5-ct2", device="cpu", arms=serving.ARMS, common_flags=()),
    "cuda": dict(engine="mt5", device="cuda", common_flags=("--no-ui",), arms={
        "batched": [],
        "seed_style": ["--decoder", "generate", "--no-coalescing", "--max-batch-size", "1"],
    }),
}
# Modest on a GPU, where the seed-style arm is slow and a lent machine's command has ten minutes.
LOAD = {
    "cpu": dict(rounds=2, clients=8, requests=4, batch_texts=64),
    "cuda": dict(rounds=2, clients=32, requests=2, batch_texts=64),
}
# The targets: where this report holds the figure, how it must compare, and the bound in its unit.
TARGETS = {
    "cpu": {
        "single request: CTranslate2 int8 over torch float32 (x)":
            (("engine_level", "ratios", "augment_transformers_over_ctranslate2"), ">=", 5),
        "single request: CTranslate2 int8 (ms)": (("engine_level", "median_ms", "ctranslate2_int8/augment"), "<", 1500),
        "concurrent clients: throughput over batching off (x)":
            (("server", "ratios", "concurrent_throughput_batched_over_seed_style"), ">=", 2),
        "server peak RSS, int8 (bytes)": (("server", "median", "batched", "peak_rss_bytes"), "<", 1.5e9),
    },
    "cuda": {
        "single request, engine (ms)": (("engine_level", "median_ms", "ours/single"), "<", 60),
        "single request, through the server (s)": (("server", "median", "batched", "single_request_s"), "<", 0.06),
        "64-text batch (generated tokens/s)": (("engine_level", "batch_generated_tokens_per_s", "ours"), ">", 40_000),
        "concurrent clients: throughput over seed-style (x)":
            (("server", "ratios", "concurrent_throughput_batched_over_seed_style"), ">=", 10),
        "concurrent clients: p95 latency (s)": (("server", "median", "batched", "concurrent_p95_s"), "<", 0.3),
        "serving GPU memory (bytes)": (("server", "median", "batched", "gpu_memory_peak_bytes"), "<", 2.5e9),
    },
}
_COMPARE = {"<": operator.lt, ">": operator.gt, ">=": operator.ge}


def engine_level(device: str, rounds: int, text_count: int, batch_texts: int) -> dict:
    if device == "cpu":
        return cpu_engines.measure(rounds, text_count)
    from bench import gpu_engines  # imports torch, which the CPU path keeps out of this process

    return gpu_engines.measure(rounds, text_count, batch_texts, device=device)


def check_targets(device: str, report: dict) -> dict:
    """Each target with the figure this run measured and whether it is met (None where not measured)."""
    checked = {}
    for name, (path, comparison, bound) in TARGETS[device].items():
        measured = report
        for key in path:
            measured = measured.get(key) if isinstance(measured, dict) else None
        met = None if measured is None else _COMPARE[comparison](measured, bound)
        checked[name] = {"measured": measured, "target": f"{comparison} {bound:g}", "met": met}
    return checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", required=True, choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, help="timed rounds at each level (cpu 2, cuda 2)")
    parser.add_argument("--texts", type=int, default=len(TEXTS), help="bench texts for single requests at the "
                        f"engine level (1-{len(TEXTS)})")
    parser.add_argument("--clients", type=int, help="concurrent clients against the server (cpu 8, cuda 32)")
    parser.add_argument("--requests", type=int, help="requests per client, and single requests to the server "
                        "(cpu 4, cuda 2)")
    parser.add_argument("--batch-texts", type=int, help="texts in the batch (default 64)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    load = {key: value if (value := getattr(args, key)) is not None else default
            for key, default in LOAD[args.device].items()}

    server = serving.run(**SERVER_ARMS[args.device], clients=load["clients"], requests_per_client=load["requests"],
                         batch_texts=load["batch_texts"], rounds=load["rounds"])
    if args.out:  # kept if the engine level never finishes (a lent machine's command has a time limit)
        args.out.write_text(json.dumps({"partial": "server level only", "server": server}, ensure_ascii=False,
                                       indent=2) + "\n", "utf-8")
    engine = engine_level(args.device, load["rounds"], args.texts, load["batch_texts"])
    gpu = engine.get("gpu")
    report = {
        "benchmark": f"device: seed-style baseline vs ours on {args.device}, engine level and a real server",
        "machine": describe() + (f", {gpu}" if gpu else ""),
        "date": time.strftime("%Y-%m-%d"),
        "device": args.device,
        "model": "mT5-base-shaped, random weights (bench.base_model)",
        "ratios": {"engine_level": engine["ratios"], "server": server["ratios"]},
        "engine_level": engine,
        "server": server,
    }
    report["targets"] = check_targets(args.device, report)
    return emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
