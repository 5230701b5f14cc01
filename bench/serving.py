"""Serving under load through a real server: dynamic batching against a seed-style server, one run.

    .venv/bin/python -m bench.serving [--engine mt5-ct2|mt5] [--clients 8] [--requests 4]
                                      [--batch-texts 64] [--rounds 2] [--out bench/results/serving_cpu.json]

bench.device runs the same measurement with its own arms (on a GPU: --no-ui, larger engine calls).

The model is the mT5-base-shaped checkpoint of bench.base_model (random weights); with the default
engine mt5-ct2 its CTranslate2 int8 copy serves, as the server picks it on CPU. Two arms:

- batched: the server as shipped (concurrent requests share engine calls of up to 16 prompts);
- seed_style: the same server with --no-coalescing --max-batch-size 1: one engine call per text,
  as a plain loop over `generate` serves.

Per arm and round (the arms alternate, and take turns going first): cold start from launch to
/readyz ready; single-request latency (one client); CLIENTS clients each sending REQUESTS /augment
requests back to back (throughput, p50, p95); one /augment_batch of BATCH_TEXTS texts; the server's
peak RSS and, on a GPU, the engine's peak GPU memory (`gpu_memory_peak_bytes` in /readyz, else null).
Each server answers one untimed request first. A request is one text, 3 variants of at
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

from bench.base_model import build_base_model
from bench.cpu_engines import CT2_DIR, base_model_and_ct2
from bench.machine import describe, emit, peak_rss
from bench.texts import NEW_TOKENS, TEXTS, VARIANTS
from tests.conftest import free_port, server_env

ROOT = Path(__file__).resolve().parent.parent
REQUEST = {"num_return_sequences": VARIANTS, "max_length": NEW_TOKENS}
# Each arm's flags beside the common ones; the ratios compare "batched" (ours) with "seed_style".
ARMS = {"batched": [], "seed_style": ["--no-coalescing", "--max-batch-size", "1"]}


def model_dir(work: Path, with_ct2: bool) -> Path:
    """The base checkpoint as links, with its CTranslate2 copy at <dir>/ctranslate2 when `with_ct2`
    (converting needs ctranslate2, which a GPU machine serving mT5 through torch need not have)."""
    base = base_model_and_ct2() if with_ct2 else build_base_model()
    linked = work / "model"
    linked.mkdir()
    for path in base.iterdir():
        (linked / path.name).symlink_to(path)
    if with_ct2:
        (linked / "ctranslate2").symlink_to(CT2_DIR)
    return linked


def _tail(log: Path, chars: int = 3000) -> str:
    """The end of a server's output, for an error message: the log lives in a temporary directory."""
    return log.read_text("utf-8", errors="replace")[-chars:] if log.exists() else ""


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
            raise RuntimeError(f"server exited with {process.returncode}:\n{_tail(log)}")
        try:
            readiness = requests.get(url + "/readyz", timeout=2).json()
        except requests.RequestException:
            readiness = {"status": "starting"}
        if readiness.get("status") == "ready":
            return process, url, time.monotonic() - started
        if readiness.get("status") == "unavailable":  # the engine will not load: waiting would never end
            process.terminate()
            process.wait(timeout=60)
            raise RuntimeError(f"server not ready: {readiness.get('reason')}\n{_tail(log)}")
        time.sleep(0.05)


def augment(url: str, text: str) -> float:
    started = time.monotonic()
    response = requests.post(url + "/augment", json={"text": text, **REQUEST}, timeout=1800)
    response.raise_for_status()
    return time.monotonic() - started


def measure(url: str, clients: int, requests_per_client: int, batch_texts: int) -> dict:
    augment(url, "预热：第一次调用分配缓冲区。")  # untimed: a fresh server's first call sets up buffers
    single = [augment(url, TEXTS[i % len(TEXTS)]) for i in range(requests_per_client)]

    def client(number: int) -> list[float]:
        return [augment(url, f"{TEXTS[(number + i) % len(TEXTS)]}（{number}-{i}）")
                for i in range(requests_per_client)]

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [seconds for one in pool.map(client, range(clients)) for seconds in one]
    wall = time.monotonic() - started
    texts = [f"{TEXTS[i % len(TEXTS)]}（第{i}条）" for i in range(batch_texts)]
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


def gpu_memory_peak(url: str) -> int | None:
    """The engine's peak GPU memory as /readyz reports it; None off a GPU."""
    return requests.get(url + "/readyz", timeout=10).json().get("gpu_memory_peak_bytes")


def _median(values: list) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 3) if present else None


def run(*, engine: str = "mt5-ct2", device: str = "cpu", arms: dict[str, list[str]] | None = None,
        common_flags: tuple[str, ...] = (), clients: int = 8, requests_per_client: int = 4,
        batch_texts: int = 64, rounds: int = 2) -> dict:
    """Start each arm's server `rounds` times, the arms taking turns, measure it, and report the medians.

    `arms` maps "batched" and "seed_style" to their own flags (default ARMS); `common_flags` go to both."""
    arms = ARMS if arms is None else arms
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="dpp-serving-") as scratch:
        work = Path(scratch)
        flags = ["--model-dir", str(model_dir(work, with_ct2=engine == "mt5-ct2")), "--engine", engine,
                 "--device", device, "--max-batch-texts", str(max(batch_texts, 50)), "--resample-rounds", "0",
                 *common_flags]
        for round_number in range(rounds):
            order = list(arms) if round_number % 2 == 0 else list(arms)[::-1]
            for arm in order:
                log = work / f"{arm}.log"
                process, url, cold = start([*flags, *arms[arm]], log)
                try:
                    measured = measure(url, clients, requests_per_client, batch_texts)
                    results[arm].append({"cold_start_s": cold, **measured, "peak_rss_bytes": peak_rss(process.pid),
                                         "gpu_memory_peak_bytes": gpu_memory_peak(url)})
                except requests.RequestException as exc:
                    raise RuntimeError(f"the {arm} server failed a request: {exc}\n{_tail(log)}") from exc
                finally:
                    process.terminate()
                    process.wait(timeout=60)

    medians = {arm: {key: _median([one[key] for one in runs]) for key in runs[0]} for arm, runs in results.items()}
    ours, naive = medians["batched"], medians["seed_style"]
    return {
        "benchmark": f"serving: dynamic batching vs seed-style, {engine} on {device}",
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "model": "mT5-base-shaped, random weights" + (", CTranslate2 int8" if engine == "mt5-ct2" else ""),
        "request": "1 text, 3 sampled variants, max_length 32",
        "arms": {arm: " ".join([*common_flags, *arm_flags]) for arm, arm_flags in arms.items()},
        "clients": clients,
        "requests_per_client": requests_per_client,
        "batch_texts": batch_texts,
        "rounds": rounds,
        "median": medians,
        "ratios": {
            "concurrent_throughput_batched_over_seed_style": round(
                ours["concurrent_requests_per_s"] / naive["concurrent_requests_per_s"], 2),
            "batch_speedup_batched_over_seed_style": round(naive["batch_s"] / ours["batch_s"], 2),
            "single_request_batched_over_seed_style": round(ours["single_request_s"] / naive["single_request_s"], 2),
        },
        "note": "Arms alternate within one run; read the ratios. Random weights: only the time counts.",
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
    report = run(engine=args.engine, device=args.device, clients=args.clients, requests_per_client=args.requests,
                 batch_texts=args.batch_texts, rounds=args.rounds)
    return emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
