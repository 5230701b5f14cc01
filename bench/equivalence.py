"""Equivalence of the fast paths with transformers, as a record: runs the equivalence tests on this
machine and writes what they found, with the machine, to JSON.

    python -m bench.equivalence [--device cuda] [--out bench/results/equivalence_cuda.json]

The tests (tests/test_fast_decode.py, tests/test_decoder_check.py, and tests/test_ct2.py where
CTranslate2 is installed) compare on the tiny real model, in float32: our decoding loop's greedy tokens
with `generate`'s, token for token, eagerly, with reused buffers and, on CUDA, with captured graphs;
sampling against transformers' top-k/top-p warpers; label scores across devices within the tests' stated
tolerance; and the load-time check of our loop (app/engines/decoder_check.py), on CUDA in bfloat16 too.
On a GPU machine (bench/on_device.sh) this is how the issue's "verified on the device" is kept in
bench/results/.
Beside the test outcomes it records the largest difference between the label log-probabilities
scored on DEVICE and on the CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from bench.machine import describe, emit

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = ["tests/test_fast_decode.py", "tests/test_decoder_check.py", "tests/test_ct2.py"]


def run_tests(files: list[str]) -> dict:
    """Run the files with pytest; every test's outcome by id, and the totals."""
    with tempfile.TemporaryDirectory(prefix="dpp-equivalence-") as scratch:
        report = Path(scratch) / "junit.xml"
        completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    f"--junitxml={report}", *files], cwd=ROOT, capture_output=True, text=True)
        outcomes = {}
        if report.exists():
            for case in ElementTree.parse(report).iter("testcase"):
                name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
                found = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
                outcomes[name] = found[0].replace("failure", "failed") if found else "passed"
    totals = {state: list(outcomes.values()).count(state) for state in ("passed", "failed", "error", "skipped")}
    return {"exit_code": completed.returncode, "totals": totals, "tests": outcomes,
            "tail": completed.stdout[-3000:] if completed.returncode else ""}


def score_differences(device: str) -> dict:
    """Label log-probabilities on `device` against the CPU's, float32, on the tiny model."""
    import torch

    from app.engines.hf import HFEngine
    from tests.test_fast_decode import PROMPTS
    from tests.tiny_model import build_tiny_models

    with tempfile.TemporaryDirectory(prefix="dpp-tiny-") as scratch:
        model = build_tiny_models(Path(scratch))["modelscope"]
        cpu = HFEngine(model, device="cpu")
        other = HFEngine(model, device=device, dtype="float32")
        labels = ["体育", "财经", "娱乐", "科技", "物流慢", "物流"]
        worst = max(abs(a - b) for prompt in PROMPTS
                    for a, b in zip(cpu.score(prompt, labels), other.score(prompt, labels)))
        return {"device": device, "torch": torch.__version__, "max_abs_logprob_difference": worst}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.equivalence", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the scores are compared with the CPU's")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    files = [f for f in TEST_FILES if f != "tests/test_ct2.py" or importlib.util.find_spec("ctranslate2")]
    report = {
        "benchmark": "equivalence of the fast paths with transformers (tiny real model, float32)",
        "machine": describe(),
        "gpu": _gpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "test_files": files,
        "tests": run_tests(files),
        "scores": score_differences(args.device) if args.device != "cpu" else None,
    }
    emit(report, args.out)
    return 0 if report["tests"]["exit_code"] == 0 else 1


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


if __name__ == "__main__":
    sys.exit(main())
