"""Blind quality reading of lexical variants: ours against nlpcda's Similarword.

    .venv/bin/python -m bench.lexical_quality make    # one variant per sentence from each, shuffled
    (a person marks each line of bench/results/lexical_quality_blind.tsv: ok or bad in column 4)
    .venv/bin/python -m bench.lexical_quality score   # joins the marks back, writes the table

Four sentence sets: the fixed test set (tests/data/lexical_sentences.tsv) and three held-out sets written by
readers who never saw the lexicon or the rules (tests/data/lexical_heldout.tsv; lexical_heldout2.tsv, written
for the rules' issue; lexical_heldout3.tsv, written for its second round, after held-out 2 had been measured).
The rules were developed on tests/data/lexical_dev.tsv and the fixed set only.
The reader sees original and variant only, in shuffled order, never which system made it.
"""

from __future__ import annotations

import argparse
import json
import random

from bench.lexical import ROOT, SENTENCES, VARIANTS, nlpcda_peer, our_engine, run_child, sentences

RESULTS = ROOT / "bench" / "results"
BLIND = RESULTS / "lexical_quality_blind.tsv"
KEY = RESULTS / "lexical_quality_key.json"
TABLE = RESULTS / "lexical_quality.md"
SETS = {"fixed": SENTENCES, "held-out": SENTENCES.with_name("lexical_heldout.tsv"),
        "held-out 2": SENTENCES.with_name("lexical_heldout2.tsv"),
        "held-out 3": SENTENCES.with_name("lexical_heldout3.tsv")}
SEED = 1


def _picked() -> list[tuple[str, str]]:
    """(set, sentence) for every sentence of each set, in file order."""
    return [(name, text) for name, path in SETS.items() for text in sentences(path)]


def _variants(system: str) -> list[list[str]]:
    """Up to VARIANTS variants per picked sentence; the first is the one read."""
    texts = [text for _, text in _picked()]
    if system == "ours":
        from app.params import GenerationParams

        return our_engine().generate(texts, GenerationParams(num_return_sequences=VARIANTS, seed=SEED))
    peer = nlpcda_peer(seed=SEED)
    return [[v for v in dict.fromkeys(peer.replace(text)[1:]) if v != text] for text in texts]


def make() -> None:
    rows, coverage = [], {}
    for system in ("ours", "nlpcda"):
        found = run_child("bench.lexical_quality", "child", system)
        for (name, original), variants in zip(_picked(), found):
            rows.append((system, name, original, variants[0] if variants else None))
            counts = coverage.setdefault(system, {}).setdefault(name, [])
            counts.append(len(variants))
    random.Random(SEED).shuffle(rows)
    key = {}
    with BLIND.open("w", encoding="utf-8") as out:
        out.write("id\toriginal\tvariant\tmark\n")
        for number, (system, name, original, variant) in enumerate(rows, 1):
            key[str(number)] = [system, name]
            out.write(f"{number}\t{original}\t{variant or '（无变体）'}\t{'' if variant else 'none'}\n")
    shares = {system: {name: {"sentences": len(c), "with_1": sum(n >= 1 for n in c) / len(c),
                              f"with_{VARIANTS}": sum(n >= VARIANTS for n in c) / len(c)}
                       for name, c in sets.items()} for system, sets in coverage.items()}
    KEY.write_text(json.dumps({"coverage": shares, "lines": key}, indent=1), "utf-8")
    print(json.dumps(shares))
    print(f"wrote {BLIND} ({len(rows)} lines) and {KEY}")


def score() -> None:
    key = json.loads(KEY.read_text("utf-8"))
    lines = [line.split("\t") for line in BLIND.read_text("utf-8").splitlines()[1:] if line]
    marks: dict[tuple[str, str], list[tuple[str, str, str, str]]] = {}
    for number, original, variant, mark, *note in lines:
        if mark not in ("ok", "bad", "none"):
            raise SystemExit(f"line {number}: mark must be ok, bad or none (no variant), got {mark!r}")
        system, name = key["lines"][number]
        marks.setdefault((system, name), []).append((original, variant, mark, note[0] if note else ""))
    summary: dict[str, dict] = {}
    for (system, name), rows in sorted(marks.items()):
        read = [m for m in rows if m[2] != "none"]
        ok = sum(m[2] == "ok" for m in read)
        summary.setdefault(system, {})[name] = {
            "read": len(read), "ok": ok, "ok_share": ok / len(read) if read else 0.0,
            "no_variant": len(rows) - len(read), **key["coverage"][system][name]}
    table = ["# Lexical variants read blind", "",
             f"One variant per sentence (seed {SEED}) from each system, on four sets: "
             "`tests/data/lexical_sentences.tsv` (fixed), `tests/data/lexical_heldout.tsv`, "
             "`tests/data/lexical_heldout2.tsv` and `tests/data/lexical_heldout3.tsv` (held-out: written by readers "
             "who had not seen the lexicon or the rules, which were developed on `lexical_dev.tsv` and the fixed set; "
             "held-out 3 was written after the first round had been measured on held-out 2). All lines were "
             "shuffled together "
             "and read without knowing the system; "
             "ok = same meaning and natural Chinese. The readers were two separate AI agents, each given only "
             "half of the lines to mark (original and variant); a human spot-check is still to be done. Sentences where a system gave no variant are counted "
             f"apart, not as ok. Coverage: share of sentences with at least 1 and at least "
             f"{VARIANTS} distinct variants when {VARIANTS} are asked for.", "",
             "| system | set | ok share | ok / read | no variant | ≥1 variant | "
             f"≥{VARIANTS} variants |", "| --- | --- | --- | --- | --- | --- | --- |"]
    labels = {"ours": "ours (lexical engine)", "nlpcda": "nlpcda Similarword, change_rate 0.3"}
    for system, sets in summary.items():
        for name, s in sets.items():
            table.append(f"| {labels[system]} | {name} | **{s['ok_share']:.0%}** | {s['ok']} / {s['read']} | "
                         f"{s['no_variant']} | {s['with_1']:.0%} | {s[f'with_{VARIANTS}']:.0%} |")
        read, ok = (sum(s[k] for s in sets.values()) for k in ("read", "ok"))
        table.append(f"| {labels[system]} | all | **{ok / read if read else 0.0:.0%}** | {ok} / {read} |  |  |  |")
    table += ["", "| system | set | original | variant | mark | note |", "| --- | --- | --- | --- | --- | --- |"]
    for (system, name), rows in sorted(marks.items()):
        table += [f"| {system} | {name} | {o} | {v} | {m} | {n} |" for o, v, m, n in rows]
    TABLE.write_text("\n".join(table) + "\n", "utf-8")
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["make", "score", "child"])
    parser.add_argument("system", nargs="?", choices=["ours", "nlpcda"])
    args = parser.parse_args()
    if args.step == "child":
        print(json.dumps(_variants(args.system), ensure_ascii=False))
    else:
        make() if args.step == "make" else score()


if __name__ == "__main__":
    main()
