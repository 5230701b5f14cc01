"""The quality gate's similarity and length defaults, calibrated on written paraphrase pairs.

    .venv/bin/python -m bench.gate_calibration [--out bench/results/gate_calibration.json]

Two sets of Chinese sentence pairs, each written by a separate reader (an AI helper agent) who never saw
the gate, its measure or its thresholds: `faithful` pairs (the same meaning, reworded lightly to heavily)
and `different` pairs (the same topic and much of the same wording, another meaning). The thresholds are
chosen on the calibration set only, by the rule below, fixed before looking at the held-out set; the
held-out set is only reported.

The rule: `too_far` must almost never drop a faithful paraphrase. `min_similarity` is the largest multiple
of 0.05 that at least 99.5% of the calibration set's faithful pairs reach. (A first rule, 97.5%, gave 0.45;
it was run on the calibration set and on the first held-out set before the rule was changed, because the
pairs it dropped were the best heavy rewordings. The second held-out set was written after the change and
read only once, for the report.) The length bounds are guards against truncated or run-on output, not
calibrated: 0.5 and 2.0, and the report shows that no faithful pair in any set falls outside them.
`max_similarity` is not calibrated here either: a faithful variant can be one word swapped, so it sits
above the closest faithful pair of every set and the lexical engine's closest reviewed swap (the report
and tests/test_gate.py show both).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from app.gate import GateParams, TextGate, defaults as gate_defaults, length_ratio, similarity
from app.settings import Settings
from bench.machine import describe, emit

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "tests" / "data" / "paraphrase_pairs_calibration.tsv"
HELD_OUT = ROOT / "tests" / "data" / "paraphrase_pairs_heldout.tsv"
HELD_OUT_2 = ROOT / "tests" / "data" / "paraphrase_pairs_heldout2.tsv"
KEEP_FAITHFUL = 0.995  # share of faithful pairs min_similarity must keep


def pairs(path: Path) -> list[dict]:
    """kind, domain, source, paraphrase per row of a pairs file (header first)."""
    lines = path.read_text("utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]


def _quantile(values: list[float], share: float) -> float:
    """The value that `share` of `values` are at or above."""
    ordered = sorted(values)
    return ordered[max(0, math.floor((1 - share) * len(ordered)))]


def calibrated(rows: list[dict]) -> float:
    """min_similarity by the rule above, from the faithful pairs of `rows`."""
    scores = [similarity(row["source"], row["paraphrase"]) for row in rows if row["kind"] == "faithful"]
    return round(math.floor(_quantile(scores, KEEP_FAITHFUL) / 0.05 + 1e-9) * 0.05, 2)


def extremes(rows: list[dict]) -> dict:
    """Per kind, the lowest and highest similarity and length ratio: where the guards sit against them."""
    report = {}
    for kind in ("faithful", "different"):
        mine = [row for row in rows if row["kind"] == kind]
        scores = [similarity(row["source"], row["paraphrase"]) for row in mine]
        ratios = [length_ratio(row["source"], row["paraphrase"]) for row in mine]
        report[kind] = {"similarity": [round(min(scores), 4), round(max(scores), 4)],
                        "length_ratio": [round(min(ratios), 4), round(max(ratios), 4)]}
    return report


def verdicts(rows: list[dict], params: GateParams) -> list[str | None]:
    """Each pair's gate reason (None: passes) with `params`, the paraphrase as the only candidate."""
    return [TextGate(row["source"], params).check(row["paraphrase"])[0] for row in rows]


def too_far_shares(rows: list[dict], params: GateParams) -> dict:
    """Per kind, the share within the similarity floor and the length bounds, whatever the other checks say."""
    report = {}
    for kind in ("faithful", "different"):
        mine = [row for row in rows if row["kind"] == kind]
        within = [similarity(r["source"], r["paraphrase"]) >= params.min_similarity
                  and params.min_length_ratio <= length_ratio(r["source"], r["paraphrase"]) <= params.max_length_ratio
                  for r in mine]
        report[kind] = round(sum(within) / len(mine), 4)
    return report


def shares(rows: list[dict], params: GateParams) -> dict:
    """Per kind: pairs, the share the whole gate passes, and the count dropped by each reason."""
    report = {}
    reasons = verdicts(rows, params)
    for kind in ("faithful", "different"):
        mine = [reason for row, reason in zip(rows, reasons) if row["kind"] == kind]
        dropped: dict[str, int] = {}
        for reason in mine:
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
        report[kind] = {"pairs": len(mine), "pass_share": round(mine.count(None) / len(mine), 4),
                        "dropped": dropped}
    return report


def sweep(rows: list[dict]) -> list[dict]:
    """Share of each kind at or above each min_similarity: the curve the default is read from."""
    scores = {kind: [similarity(r["source"], r["paraphrase"]) for r in rows if r["kind"] == kind]
              for kind in ("faithful", "different")}
    return [{"min_similarity": t / 100, **{kind: round(sum(s >= t / 100 for s in values) / len(values), 4)
                                           for kind, values in scores.items()}}
            for t in range(0, 100, 5)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sets = {"calibration": pairs(CALIBRATION), "held_out": pairs(HELD_OUT), "held_out_2": pairs(HELD_OUT_2)}
    chosen = calibrated(sets["calibration"])
    defaults = Settings()
    params = gate_defaults(defaults)
    report = {
        "machine": describe(),
        "readers": "each set written by a separate AI helper agent that never saw the gate, its measure or its "
                   "thresholds; no human reading yet",
        "rule": f"min_similarity: largest multiple of 0.05 that {KEEP_FAITHFUL:.1%} of the calibration set's "
                f"faithful pairs reach; length ratio bounds 0.5-2.0 are fixed guards",
        "min_similarity_by_the_rule": chosen,
        "settings_defaults": {name: getattr(defaults, name) for name in
                              ("min_similarity", "max_similarity", "min_length_ratio", "max_length_ratio")},
        "default_matches_the_rule": defaults.min_similarity == chosen,
        "gate_at_defaults": {name: shares(rows, params) for name, rows in sets.items()},
        "too_far_alone_at_defaults": {name: too_far_shares(rows, params) for name, rows in sets.items()},
        "extremes": {name: extremes(rows) for name, rows in sets.items()},
        "sweep": {name: sweep(rows) for name, rows in sets.items()},
    }
    return emit(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
