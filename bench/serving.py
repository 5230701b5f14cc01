"""Serving under load through a real server: dynamic batching against a seed-style server, one run.

    .venv/bin/python -m bench.serving [--engine mt5-ct2|mt5] [--clients 8] [--requests 4]
                                      [--batch-texts 64] [--rounds 2] [--out bench/results/serving_cpu.json]

The model is the mT5-base-shaped checkpoint of bench.base_model (random weights); with the default
engine mt5-ct2 its CTranslate2 int8 copy serves, as the server picks it on CPU. Two arms:

- batched: the server as shipped (concurrent requests share engine calls of up to 16 prompts);
- seed_style: the same server with --no-coalescing --max-batch-size 1: one engine call per text,
  as a plain loop over `generate` serves.

Per arm and round (the arms alternate, and take turns going first): cold start from launch to
/readyz ready; single-request latency (one client); CLIENTS clients each sending REQUESTS /augment
requests back to back (throughput, p50, p95); one /augment_batch of BATCH_TEXTS texts; the server's
peak RSS. Each server answers one untimed request first. A request is one text, 3 variants of at
most 32 new tokens (random weights almost never stop early). Both arms run with --resample-rounds 0:
the random model's tokens mostly lie outside the test tokenizer's small vocabulary and decode to
empty text, which would make the service sample again; with real weights the first round gives the
variants. Read the ratios: they were measured side by side.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.cpu_engines import CT2_DIR, base_model_and_ct2
from bench.machine import describe, emit, peak_rss
from bench.texts import TEXTS
from tests.conftest import free_port, server_env

ROOT = Path(__file__).resolve().parent.parent
REQUEST = {"num_return_sequences": 3, "max_length": 32}
ARMS = {"batched": [], "seed_style": ["--no-coalescing", "--max-batch-size", "1"]}


def model_dir(work: Path) -> Path:
    """The base checkpoint with its CTranslate2 copy at <dir>/ctranslate2, as links."""
    base = base_model_and_ct2()
    linked = work / "model"
    linked.mkdir()
    for path in base.iterdir():
        (linked / path.name).symlink_to(path)
    (linked / "ctranslate2").symlink_to(CT2_DIR)
    return linked


def start(flags: list[str], log: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    started = time.monotonic()
    with open(log, "ab") as sink:
        process = subprocess.Popen([sys.executable, str(ROOT / "webui.py"), "--host", "127.0.0.1", "--port", str(port),
                                    "--log-dir", str(log.parent / "logs"), *flags],
                                   stdout=sink, stderr=subprocess.STDOUT, env=server_env())
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log}")
        try:
            if requests.get(url + "/readyz", timeout=2).json().get("status") == "ready":
                return process, url, time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.05)


def augment(url: str, text: str) -> float:
    started = time.monotonic()
    response = requests.post(url + "/augment", json={"text": text, **REQUEST}, timeout=1800)
    response.raise_for_status()
    return time.monotonic() - started


def measure(url: str, args) -> dict:
    augment(url, "预热：第一次调用分配缓冲区。")  # untimed: a fresh server's first call sets up buffers
    single = [augment(url, TEXTS[i % len(TEXTS)]) for i in range(args.requests)]

    def client(number: int) -> list[float]:
        return [augment(url, f"{TEXTS[(number + i) % len(TEXTS)]}（{number}-{i}）") for i in range(args.requests)]

    started = time.monotonic()
    with ThreadPoolExecutor(args.clients) as pool:
        latencies = [seconds for one in pool.map(client, range(args.clients)) for seconds in one]
    wall = time.monotonic() - started
    texts = [f"{TEXTS[i % len(TEXTS)]}（第{i}条）" for i in range(args.batch_texts)]
    started = time.monotonic()
    requests.post(url + "/augment_batch", json={"texts": texts, **REQUEST}, timeout=3600).raise_for_status()
    batch = time.monotonic() - started
    return {
        "single_request_s": statistics.median(single),
        "concurrent_requests_per_s": len(latencies) / wall,
        "concurrent_p50_s": statistics.median(latencies),
        "concurrent_p95_s": statistics.quantiles(latencies, n=20, method="inclusive")[-1],
        "batch_s": batch,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="mt5-ct2", choices=["mt5-ct2", "mt5"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client, and single requests")
    parser.add_argument("--batch-texts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="dpp-serving-") as scratch:
        work = Path(scratch)
        flags = ["--model-dir", str(model_dir(work)), "--engine", args.engine, "--device", args.device,
                 "--max-batch-texts", str(max(args.batch_texts, 50)), "--resample-rounds", "0"]
        for round_number in range(args.rounds):
            order = list(ARMS) if round_number % 2 == 0 else list(ARMS)[::-1]
            for arm in order:
                process, url, cold = start([*flags, *ARMS[arm]], work / f"{arm}.log")
                try:
                    measured = measure(url, args)
                    results[arm].append({"cold_start_s": cold, **measured, "peak_rss_bytes": peak_rss(process.pid)})
                finally:
                    process.terminate()
                    process.wait(timeout=60)

    medians = {arm: {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}
               for arm, runs in results.items()}
    ours, naive = medians["batched"], medians["seed_style"]
    report = {
        "benchmark": f"serving: dynamic batching vs seed-style, {args.engine} on {args.device}",
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "model": "mT5-base-shaped, random weights" + (", CTranslate2 int8" if args.engine == "mt5-ct2" else ""),
        "request": "1 text, 3 sampled variants, max_length 32",
        "clients": args.clients,
        "requests_per_client": args.requests,
        "batch_texts": args.batch_texts,
        "rounds": args.rounds,
        "median": medians,
        "ratios": {
            "concurrent_throughput_batched_over_seed_style": round(
                ours["concurrent_requests_per_s"] / naive["concurrent_requests_per_s"], 2),
            "batch_speedup_batched_over_seed_style": round(naive["batch_s"] / ours["batch_s"], 2),
            "single_request_batched_over_seed_style": round(ours["single_request_s"] / naive["single_request_s"], 2),
        },
        "note": "Arms alternate within one run; read the ratios. Random weights: only the time counts.",
    }
    return emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
