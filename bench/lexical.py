"""Lexical augmentation side by side with nlpcda's Similarword, in one run on this CPU.

    .venv/bin/python -m bench.lexical [--rounds 5] [--out bench/results/lexical_throughput.json]

Each system runs in its own process (nlpcda re-seeds the global `random` and adds its words to the
global jieba dictionary), on the same sentences (every lexical sentence set under tests/data: fixed, development
and the three held-out sets), asked for 3 variants per sentence. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import describe

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ROOT / "tests" / "data" / "lexical_sentences.tsv"
VARIANTS = 3
NLPCDA_CHANGE_RATE = 0.3  # the setting the issue quotes for the peer


TIMED_SETS = [SENTENCES, *(SENTENCES.with_name(name) for name in
                            ("lexical_dev.tsv", "lexical_heldout.tsv", "lexical_heldout2.tsv",
                             "lexical_heldout3.tsv"))]


def sentences(path: Path = SENTENCES) -> list[str]:
    """The texts of a domain<TAB>sentence file."""
    return [line.split("\t")[1] for line in path.read_text("utf-8").splitlines() if line]


def timed_sentences() -> list[str]:
    return [text for path in TIMED_SETS for text in sentences(path)]


def our_engine():
    from app.engines.lexical import LexicalEngine

    return LexicalEngine.from_settings()


def nlpcda_peer(seed: int | None = None):
    """nlpcda's Similarword, asked for VARIANTS variants besides the text itself; its banner silenced."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        from nlpcda import Similarword

        return Similarword(create_num=VARIANTS + 1, change_rate=NLPCDA_CHANGE_RATE, seed=seed)


def run_child(module: str, *args: str):
    """Run `python -m module args` from the project root (a fresh process); its last line, read as JSON."""
    answer = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                            check=True)
    return json.loads(answer.stdout.strip().splitlines()[-1])


def _ours(texts: list[str], rounds: int) -> dict:
    from app.params import GenerationParams

    started = time.perf_counter()
    engine = our_engine()
    load_s = time.perf_counter() - started
    params = GenerationParams(num_return_sequences=VARIANTS)
    engine.generate(texts, params)  # warm-up
    started = time.perf_counter()
    for _ in range(rounds):
        outputs = engine.generate(texts, params)
    elapsed = time.perf_counter() - started
    return {"load_s": load_s, "seconds": elapsed, "sentences": len(texts) * rounds,
            "with_3_variants": sum(len(v) >= VARIANTS for v in outputs) / len(texts)}


def _nlpcda(texts: list[str], rounds: int) -> dict:
    started = time.perf_counter()
    peer = nlpcda_peer()
    load_s = time.perf_counter() - started
    for text in texts:
        peer.replace(text)  # warm-up
    started = time.perf_counter()
    for _ in range(rounds):
        outputs = [peer.replace(text)[1:] for text in texts]
    elapsed = time.perf_counter() - started
    return {"load_s": load_s, "seconds": elapsed, "sentences": len(texts) * rounds,
            "with_3_variants": sum(len(v) >= VARIANTS for v in outputs) / len(texts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=["ours", "nlpcda"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure = _ours if args.child == "ours" else _nlpcda
        print(json.dumps(measure(timed_sentences(), args.rounds)))
        return
    results = {name: run_child("bench.lexical", "--child", name, "--rounds", str(args.rounds))
               for name in ("ours", "nlpcda")}
    for result in results.values():
        result["sentences_per_s"] = round(result["sentences"] / result["seconds"], 1)
    report = {
        "benchmark": "lexical augmentation throughput, 3 variants per sentence",
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "sentences": len(timed_sentences()),
        "sentence_files": [str(path.relative_to(ROOT)) for path in TIMED_SETS],
        "rounds": args.rounds,
        "ours": results["ours"],
        "nlpcda_similarword": results["nlpcda"],
        "throughput_ratio_ours_over_nlpcda": round(
            results["ours"]["sentences_per_s"] / results["nlpcda"]["sentences_per_s"], 2),
    }
    text = json.dumps(report, ensure_ascii=False, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", "utf-8")


if __name__ == "__main__":
    main()
