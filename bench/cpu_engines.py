"""The CPU fast path against the plain one: CTranslate2 int8 vs transformers float32, in one run.

    .venv/bin/python -m bench.cpu_engines [--rounds 5] [--out bench/results/cpu_engines.json]

Both engines serve the mT5-base-shaped checkpoint of bench.base_model (random weights). The
CTranslate2 copy is made once with `python -m bundle.convert --ct2` (int8) and cached beside it.
One request is the issue's unit: one text, 3 sampled variants, 32 new tokens each (forced, since
random weights never stop). Label scoring (10 labels) is timed too. The arms alternate within
each round after an untimed warm-up; read the ratios of medians. Peak RSS of a process that
serves with the CTranslate2 engine alone is measured in a child process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from app.engines.ct2 import CT2Engine
from app.engines.hf import HFEngine
from app.params import GenerationParams
from bench.base_model import DEFAULT_DIR, build_base_model
from bench.classify import LABELS, TEXTS
from bench.machine import describe, emit, run_interleaved
from bundle.convert import convert_ct2

CT2_DIR = DEFAULT_DIR.parent / (DEFAULT_DIR.name + "-ct2-int8")
REQUEST = GenerationParams(num_return_sequences=3, max_length=32, min_new_tokens=32)
# VmHWM, not ru_maxrss: the latter can carry the parent's peak across fork and exec.
CHILD = """
import re, sys
from pathlib import Path
from app.engines.ct2 import CT2Engine
from app.params import GenerationParams
engine = CT2Engine(Path(sys.argv[1]))
engine.generate([sys.argv[2]], GenerationParams(num_return_sequences=3, max_length=32, min_new_tokens=32))
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024)
"""


def peak_rss_ct2(text: str) -> int:
    root = Path(__file__).resolve().parent.parent
    output = subprocess.run([sys.executable, "-c", CHILD, str(CT2_DIR), text], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    return int(output.split()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds over all texts (after one warm-up)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    model = build_base_model()
    if not (CT2_DIR / "model.bin").is_file():
        convert_ct2(model, CT2_DIR, quantization="int8", force=True)
    rss = peak_rss_ct2(TEXTS[0])  # before this process grows
    engines = {"transformers_float32": HFEngine(model, device="cpu"), "ctranslate2_int8": CT2Engine(CT2_DIR)}
    prompt = "文本分类。\n候选标签：" + ",".join(LABELS) + "。\n文本内容：{}"
    arms = {}
    for name, engine in engines.items():
        arms[f"{name}/augment"] = lambda text, engine=engine: engine.generate([text], REQUEST)
        arms[f"{name}/score_10_labels"] = lambda text, engine=engine: engine.score(prompt.format(text), LABELS)

    times = run_interleaved(arms, TEXTS, args.rounds)

    median = {name: round(statistics.median(values), 1) for name, values in times.items()}
    report = {
        "benchmark": "cpu_engines: CTranslate2 int8 vs transformers float32, single requests",
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "ctranslate2": __import__("ctranslate2").__version__,
        "threads": threads,
        "model": "mT5-base-shaped, random weights",
        "request": "1 text, 3 sampled variants x 32 forced new tokens; scoring: 10 labels",
        "texts": len(TEXTS),
        "rounds": args.rounds,
        "median_ms": median,
        "ratios": {
            "augment_transformers_over_ctranslate2": round(
                median["transformers_float32/augment"] / median["ctranslate2_int8/augment"], 2),
            "score_transformers_over_ctranslate2": round(
                median["transformers_float32/score_10_labels"] / median["ctranslate2_int8/score_10_labels"], 2),
        },
        "ctranslate2_alone_peak_rss_bytes": rss,
        "note": "Random weights: only the time counts. Arms interleaved in one run; read the ratios of medians.",
    }
    return emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
