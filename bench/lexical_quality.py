"""Blind quality reading of lexical variants: ours against nlpcda's Similarword.

    .venv/bin/python -m bench.lexical_quality make    # one variant per sentence from each, shuffled
    (a person marks each line of bench/results/lexical_quality_blind.tsv: ok or bad in column 4)
    .venv/bin/python -m bench.lexical_quality score   # joins the marks back, writes the table

The reader sees original and variant only, in shuffled order, never which system made it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import subprocess
import sys
from pathlib import Path

from bench.lexical import SENTENCES

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BLIND = RESULTS / "lexical_quality_blind.tsv"
KEY = RESULTS / "lexical_quality_key.json"
TABLE = RESULTS / "lexical_quality.md"
PER_DOMAIN = 5  # 6 domains x 5 = 30 sentences
SEED = 1


def _picked() -> list[str]:
    """The first sentences of each domain, in file order."""
    picked: dict[str, list[str]] = {}
    for line in SENTENCES.read_text("utf-8").splitlines():
        if line:
            domain, text = line.split("\t")
            if len(picked.setdefault(domain, [])) < PER_DOMAIN:
                picked[domain].append(text)
    return [text for texts in picked.values() for text in texts]


def _one_variant_each(system: str) -> list[str | None]:
    texts = _picked()
    if system == "ours":
        from app.engines.lexical import LexicalEngine
        from app.params import GenerationParams
        from app.settings import Settings

        engine = LexicalEngine(Settings().lexicon_file)
        found = engine.generate(texts, GenerationParams(num_return_sequences=1, seed=SEED))
        return [variants[0] if variants else None for variants in found]
    with contextlib.redirect_stdout(io.StringIO()):
        from nlpcda import Similarword

        peer = Similarword(create_num=2, change_rate=0.3, seed=SEED)
    return [next(iter(peer.replace(text)[1:]), None) for text in texts]


def make() -> None:
    rows = []
    for system in ("ours", "nlpcda"):
        answer = subprocess.run([sys.executable, "-m", "bench.lexical_quality", "child", system],
                                cwd=ROOT, capture_output=True, text=True, check=True)
        for original, variant in zip(_picked(), json.loads(answer.stdout.strip().splitlines()[-1])):
            rows.append((system, original, variant))
    random.Random(SEED).shuffle(rows)
    key = {}
    with BLIND.open("w", encoding="utf-8") as out:
        out.write("id\toriginal\tvariant\tmark\n")
        for number, (system, original, variant) in enumerate(rows, 1):
            key[str(number)] = system
            out.write(f"{number}\t{original}\t{variant or '（无变体）'}\t\n")
    KEY.write_text(json.dumps(key, indent=1), "utf-8")
    print(f"wrote {BLIND} ({len(rows)} lines) and {KEY}")


def score() -> None:
    key = json.loads(KEY.read_text("utf-8"))
    lines = [line.split("\t") for line in BLIND.read_text("utf-8").splitlines()[1:] if line]
    marks: dict[str, list[tuple[str, str, str, str]]] = {"ours": [], "nlpcda": []}
    for number, original, variant, mark, *note in lines:
        if mark not in ("ok", "bad", "none"):
            raise SystemExit(f"line {number}: mark must be ok, bad or none (no variant), got {mark!r}")
        marks[key[number]].append((original, variant, mark, note[0] if note else ""))
    summary = {}
    for system, rows in marks.items():
        produced = [m for m in rows if m[2] != "none"]
        ok = sum(m[2] == "ok" for m in produced)
        summary[system] = {"read": len(produced), "ok": ok, "ok_share": ok / len(produced) if produced else 0.0,
                           "no_variant": len(rows) - len(produced)}
    table = ["# Lexical variants read by a person (blind)", "",
             f"One variant per sentence (seed {SEED}) for the first {PER_DOMAIN} sentences of each domain in "
             "`tests/data/lexical_sentences.tsv`, shuffled together and read without knowing the system; "
             "ok = same meaning and natural Chinese. Sentences where a system gave no variant are counted "
             "apart, not as ok.", ""]
    for system, label in (("ours", "ours (lexical engine)"), ("nlpcda", "nlpcda Similarword, change_rate 0.3")):
        s = summary[system]
        table.append(f"- {label}: **{s['ok_share']:.0%}** ok ({s['ok']} of {s['read']} variants read; "
                     f"{s['no_variant']} sentences without a variant)")
    table += ["", "| system | original | variant | mark | note |", "| --- | --- | --- | --- | --- |"]
    for system, rows in marks.items():
        table += [f"| {system} | {o} | {v} | {m} | {n} |" for o, v, m, n in rows]
    TABLE.write_text("\n".join(table) + "\n", "utf-8")
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["make", "score", "child"])
    parser.add_argument("system", nargs="?", choices=["ours", "nlpcda"])
    args = parser.parse_args()
    if args.step == "child":
        print(json.dumps(_one_variant_each(args.system), ensure_ascii=False))
    else:
        make() if args.step == "make" else score()


if __name__ == "__main__":
    main()
