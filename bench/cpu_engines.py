"""The CPU fast path against the plain one: CTranslate2 int8 vs transformers float32, in one run.

    .venv/bin/python -m bench.cpu_engines [--rounds 5] [--out bench/results/cpu_engines.json]

Both engines serve the mT5-base-shaped checkpoint of bench.base_model (random weights); the
transformers one decodes with transformers' own `generate` (decoder="generate"), the seed-style way. The
CTranslate2 copy is made once with `python -m bundle.convert --ct2` (int8) and cached beside it.
One request is the issue's unit: one text, 3 sampled variants, 32 new tokens each (forced, since
random weights never stop). Label scoring (10 labels) is timed too.

Each engine lives in a worker process of its own, as in a server: with torch loaded in the same
process, CTranslate2 generates at half its speed on this machine. The parent sends the requests
and alternates the arms within each round after an untimed warm-up; read the ratios of medians.
Each worker reports its peak RSS (VmHWM) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import describe, emit, peak_rss, run_interleaved
from bench.texts import LABELS, REQUEST, TEXTS

ROOT = Path(__file__).resolve().parent.parent
# bench.base_model's cache, named here so that the CTranslate2 worker need not import it (it imports
# transformers and torch, which the worker's peak RSS must not count).
CT2_DIR = ROOT / "bench" / ".cache" / "mt5-base-random-ct2-int8"
PROMPT = "文本分类。\n候选标签：" + ",".join(LABELS) + "。\n文本内容：{}"
ENGINES = {"transformers_float32": "mt5", "ctranslate2_int8": "mt5-ct2"}


def base_model_and_ct2() -> Path:
    """The mT5-base-shaped checkpoint, with its CTranslate2 int8 copy at CT2_DIR made once."""
    from bench.base_model import build_base_model
    from bundle.convert import convert_ct2

    model = build_base_model()
    if not (CT2_DIR / "model.bin").is_file():
        convert_ct2(model, CT2_DIR, quantization="int8", force=True)
    return model


def worker(engine_name: str) -> None:
    """Serve timing requests on stdin ("augment TEXT" / "score TEXT" as JSON) until "rss"."""
    if engine_name == "mt5":  # torch only in this worker, as in a server on that engine
        import torch

        from app.engines.hf import HFEngine
        from bench.base_model import build_base_model

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        # The seed-style baseline: transformers' own generate, whatever the server's default decoder is.
        engine = HFEngine(build_base_model(), device="cpu", decoder="generate")
    else:
        from app.engines.ct2 import CT2Engine

        engine = CT2Engine(CT2_DIR)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        kind, text = json.loads(line)
        if kind == "rss":
            print(json.dumps({"rss": peak_rss()}), flush=True)
            return
        started = time.perf_counter()
        if kind == "augment":
            engine.generate([text], REQUEST)
        else:
            engine.score(PROMPT.format(text), LABELS)
        print(json.dumps({"ms": (time.perf_counter() - started) * 1000}), flush=True)


class Worker:
    def __init__(self, engine_name: str) -> None:
        code = f"from bench.cpu_engines import worker; worker({engine_name!r})"
        self.process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited with {self.process.wait()}")
        return json.loads(line)

    def ask(self, kind: str, text: str = "") -> dict:
        self.process.stdin.write(json.dumps([kind, text]) + "\n")
        self.process.stdin.flush()
        return self._read()


def measure(rounds: int = 5, text_count: int = len(TEXTS)) -> dict:
    """Time both engines, each in its worker, on the first `text_count` bench texts for `rounds` rounds."""
    texts = TEXTS[:text_count]
    base_model_and_ct2()
    workers = {name: Worker(engine) for name, engine in ENGINES.items()}
    arms = {}
    for name, process in workers.items():
        arms[f"{name}/augment"] = lambda text, process=process: process.ask("augment", text)
        arms[f"{name}/score_10_labels"] = lambda text, process=process: process.ask("score", text)
    # The workers' own clocks time the calls; the parent's would add the pipe.
    served: dict[str, list[float]] = {name: [] for name in arms}
    run_interleaved({name: (lambda text, name=name, arm=arm: served[name].append(arm(text)["ms"]))
                     for name, arm in arms.items()}, texts, rounds)
    rss = {name: process.ask("rss")["rss"] for name, process in workers.items()}
    # The first len(texts) answers of each arm are the untimed warm-up round.
    median = {name: round(statistics.median(values[len(texts):]), 1) for name, values in served.items()}
    import ctranslate2
    import torch

    return {
        "benchmark": "cpu_engines: CTranslate2 int8 vs transformers float32, single requests",
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "ctranslate2": ctranslate2.__version__,
        "threads": len(os.sched_getaffinity(0)),
        "model": "mT5-base-shaped, random weights",
        "request": "1 text, 3 sampled variants x 32 forced new tokens; scoring: 10 labels",
        "texts": len(texts),
        "rounds": rounds,
        "median_ms": median,
        "ratios": {
            "augment_transformers_over_ctranslate2": round(
                median["transformers_float32/augment"] / median["ctranslate2_int8/augment"], 2),
            "score_transformers_over_ctranslate2": round(
                median["transformers_float32/score_10_labels"] / median["ctranslate2_int8/score_10_labels"], 2),
        },
        "worker_peak_rss_bytes": rss,
        "note": "Random weights: only the time counts. One worker process per engine; arms interleaved in one run.",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds over all texts (after one warm-up)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    return emit(measure(args.rounds), args.out)


if __name__ == "__main__":
    sys.exit(main())
