"""Size of a CPU bundle of the mT5-base-shaped model, and its time from ./start_dpp.sh to ready.

    .venv/bin/python -m bench.bundle [--rounds 3] [--profile cpu|gpu|cpu-lite] [--cuda cu126] [--out FILE.json]

Builds the bundle as users do (python -m bundle.build, default gzip level), unpacks it, verifies
it, then starts it ROUNDS times with an empty environment and times ./start_dpp.sh until /readyz
says ready and until the first short /augment is answered. In the same run and interleaved, the
checkout's launcher starts on the bundle's own FP16 files (packaging alone) and on the original
float32 pytorch_model.bin (what a checkout runs today), so the ratios compare like with like on
this machine. A cpu-lite bundle (CTranslate2 int8) is compared with the latter only. Prints JSON.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.base_model import build_base_model
from bench.machine import describe, emit
from bundle.build import MODEL_SUBDIR
from tests.conftest import free_port, launcher_tools

ROOT = Path(__file__).resolve().parent.parent
PROBE_TEXT = "这家餐厅的菜味道很好，服务也很周到。"


def timed(command: list[str], **options) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, **options)
    return time.monotonic() - started


def start_and_answer(command: list[str], cwd: Path, port: int, log: Path) -> tuple[float, float]:
    """Seconds from starting `command` to /readyz saying 'ready', and to the first /augment answer
    (a short one: weights that were mapped lazily are read then). The server is then stopped."""
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}; see {log}")
            try:
                if requests.get(url + "/readyz", timeout=2).json().get("status") == "ready":
                    break
            except requests.RequestException:
                pass
            if time.monotonic() - started > 600:
                raise RuntimeError(f"not ready after 600 s; see {log}")
            time.sleep(0.05)
        ready = time.monotonic() - started
        response = requests.post(url + "/augment", json={"text": PROBE_TEXT, "num_return_sequences": 1,
                                                         "max_length": 8}, timeout=300)
        response.raise_for_status()
        return ready, time.monotonic() - started
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def warm(paths: list[Path]) -> None:
    """Read every file under `paths` once, as unpacking or a previous start leaves them in the page cache."""
    for root in paths:
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file() and not path.is_symlink():
                with open(path, "rb") as handle:
                    while handle.read(1 << 24):
                        pass


def _ratios(medians: dict, ours: str, theirs: str) -> dict[str, float]:
    return {phase: round(medians[ours][phase] / medians[theirs][phase], 2) for phase in ("ready", "first_answer")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=("cpu", "gpu", "cpu-lite"), default="cpu",
                        help="which bundle to build (a gpu bundle runs on this machine's CPU here)")
    parser.add_argument("--cuda", help="for --profile gpu: the CUDA build of torch (bundle.build's --cuda)")
    parser.add_argument("--model-dir", type=Path, help="checkpoint to bundle (default: bench.base_model's)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (tarball, unpacked bundle, logs)")
    args = parser.parse_args(argv)

    model = args.model_dir or build_base_model()
    work = Path(tempfile.mkdtemp(prefix="dpp-bench-bundle-", dir=args.work))
    try:
        dist = work / "dist"
        build_seconds = timed([sys.executable, "-m", "bundle.build", "--model-dir", str(model),
                               "--profile", args.profile, "--out", str(dist),
                               *(["--cuda", args.cuda] if args.cuda else [])], cwd=ROOT)
        (tarball,) = dist.glob("*.tar.gz")
        target = work / "target"
        target.mkdir()
        extract_seconds = timed(["tar", "-xzf", str(tarball)], cwd=target)
        (top,) = target.iterdir()
        unpacked = sum(p.stat().st_size for p in top.rglob("*") if p.is_file() and not p.is_symlink())
        tools = launcher_tools(work / "tools")
        bare = ["/usr/bin/env", "-i", f"PATH={tools}"]
        verify_seconds = timed(bare + ["./start_dpp.sh", "--verify", "--setup-only"], cwd=top,
                               stdout=subprocess.DEVNULL)
        checkout = ["./start_dpp.sh", "--log-dir", str(work / "logs"), "--model-dir"]
        venv = ROOT / ".venv"
        # The bundle; the checkout on the very same FP16 files (not for cpu-lite, which has none); the
        # checkout on the original, as users run it today.
        ours = "bundle_ct2_int8" if args.profile == "cpu-lite" else "bundle_fp16"
        arms = {ours: (bare + ["./start_dpp.sh"], top, [top / "python", top / MODEL_SUBDIR])}
        if args.profile != "cpu-lite":
            arms["checkout_fp16"] = (checkout + [str(top / MODEL_SUBDIR)], ROOT, [venv, top / MODEL_SUBDIR])
        arms["checkout_fp32_bin"] = (checkout + [str(model)], ROOT, [venv, Path(model)])
        runs: dict[str, dict[str, list[float]]] = {name: {"ready": [], "first_answer": []} for name in arms}
        names = list(arms)
        for round_number in range(args.rounds):
            # Each arm starts after a different one in each round, and on a warm page cache: this
            # machine keeps only a few GB of cache, and one arm's reads would evict the next one's files.
            for name in names[round_number % len(names):] + names[:round_number % len(names)]:
                command, cwd, reads = arms[name]
                warm(reads)
                port = free_port()
                ready, answered = start_and_answer(command + ["--port", str(port)], cwd, port, work / f"{name}.log")
                runs[name]["ready"].append(round(ready, 2))
                runs[name]["first_answer"].append(round(answered, 2))
        medians = {name: {phase: round(statistics.median(values), 2) for phase, values in phases.items()}
                   for name, phases in runs.items()}
        report = {
            "benchmark": f"bundle_{args.profile}",
            "profile": args.profile, "cuda": args.cuda,
            "machine": describe(),
            "model": "mT5-base-shaped, random weights (582M parameters, untied lm_head)",
            "source_checkpoint_bytes": sum(p.stat().st_size for p in Path(model).glob("*.bin")),
            "tarball_bytes": tarball.stat().st_size,
            "unpacked_bytes": unpacked,
            "model_bytes": sum(p.stat().st_size for p in (top / MODEL_SUBDIR).rglob("*") if p.is_file()),
            "build_seconds": round(build_seconds, 1),
            "extract_seconds": round(extract_seconds, 1),
            "verify_seconds": round(verify_seconds, 1),
            "seconds_from_start": runs,
            "median_seconds_from_start": medians,
            # Packaging alone (same weights), then bundle against the checkout as users run it today.
            **({} if args.profile == "cpu-lite" else {
                "ratio_bundle_vs_checkout_same_fp16_weights": _ratios(medians, ours, "checkout_fp16")}),
            "ratio_bundle_vs_checkout_fp32_bin": _ratios(medians, ours, "checkout_fp32_bin"),
            "page_cache": "warm: before each start the arm's interpreter and model files are read once, as "
                          "unpacking leaves them; a first start after a reboot also reads them from disk",
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
