"""Reviewed rewrite rules for function words and small constructions: the lexical engine's second kind of edit.

Synonym swaps (app/engines/lexicon.py) change content words. Most everyday sentences have few of those with a
safe synonym, but nearly all have a degree word, a conjunction, a modal or a time word that can be written
another way with the same meaning: 很 -> 非常 before an adjective, 但是 -> 不过, 已经 -> 已, 把 -> 将. Each rule
names one word (as jieba cuts it) and its part of speech, the words that may replace it, and the context it
needs (app/engines/context.py), because these words are safe only in some places (可以 is "may" before a verb
and "OK" at the end of a sentence).

The rules are data: app/data/rules_reviewed.tsv, one rule per line,

    word<TAB>jieba tag (a prefix, or * for any)<TAB>replacements (space separated)<TAB>context<TAB>note

A replacement written ∅ deletes the word (提供一下订单号 -> 提供订单号): for words whose presence changes only the
tone, never the meaning.

    python -m app.engines.rules check SENTENCES   # each rule, and on how many words of the file it fires
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.engines.context import ANYWHERE, Context, ContextError, Token, parse_context
from app.engines.lexicon import LexiconError

ANY_TAG = "*"
DELETED = "∅"  # the replacement that deletes the word


class RulesError(LexiconError):
    """The rules file cannot be read."""


@dataclass(frozen=True)
class Rule:
    word: str
    tag: str
    replacements: tuple[str, ...]
    context: Context
    line: int

    def applies(self, tokens: list[Token], index: int) -> bool:
        token = tokens[index]
        return (token.text == self.word and (self.tag == ANY_TAG or token.tag.startswith(self.tag))
                and self.context.holds(tokens, index))


@dataclass(frozen=True)
class Rules:
    by_word: dict[str, tuple[Rule, ...]]
    source: str

    def __iter__(self) -> Iterator[Rule]:
        return (rule for rules in self.by_word.values() for rule in rules)

    def __len__(self) -> int:
        return sum(map(len, self.by_word.values()))

    def applying(self, tokens: list[Token], index: int) -> Iterator[Rule]:
        """The rules that apply to the word at `index` of `tokens`, in file order."""
        return (rule for rule in self.by_word.get(tokens[index].text, ()) if rule.applies(tokens, index))

    def replacements(self, tokens: list[Token], index: int) -> tuple[str, ...]:
        """What may replace the word at `index` here, by every rule that applies (in file order, no repeats)."""
        return tuple(dict.fromkeys(word for rule in self.applying(tokens, index) for word in rule.replacements))


NO_RULES = Rules({}, "no rules")


def load_rules(path: Path) -> Rules:
    """Every rule of the file; a line that cannot be read is an error naming the line (the file is reviewed)."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError as exc:
        raise RulesError(f"cannot read rules {path}: {exc.strerror}") from exc
    by_word: dict[str, list[Rule]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) not in (3, 4, 5):
            raise RulesError(f"{path}:{number}: expected word<TAB>tag<TAB>replacements[<TAB>context[<TAB>note]]")
        word, tag, replacements = (part.strip() for part in parts[:3])
        written = parts[3] if len(parts) > 3 else ""
        try:
            context = parse_context(written) if written.strip() else ANYWHERE
        except ContextError as exc:
            raise RulesError(f"{path}:{number}: {exc}") from None
        options = tuple(dict.fromkeys("" if option == DELETED else option for option in replacements.split()))
        if not word or not tag or not options or word in options:
            raise RulesError(f"{path}:{number}: a rule needs a word, a tag and replacements other than the word")
        by_word.setdefault(word, []).append(Rule(word, tag, options, context, number))
    rules = {word: tuple(listed) for word, listed in by_word.items()}
    count = sum(map(len, rules.values()))
    return Rules(rules, f"{count} reviewed rules")


def main() -> None:
    from app.engines.lexical import LexicalEngine

    parser = argparse.ArgumentParser(description="Check the lexical engine's rewrite rules on sentences.")
    steps = parser.add_subparsers(dest="step", required=True)
    check = steps.add_parser("check", help="load the rules and count, per rule, the sentences it applies to")
    check.add_argument("sentences", type=Path, help="a file of sentences (TSV: the last column is the sentence)")
    args = parser.parse_args()
    engine = LexicalEngine.from_settings()
    counts: dict[int, int] = {}
    for line in args.sentences.read_text("utf-8").splitlines():
        sentence = line.split("\t")[-1]
        tokens = engine.tokens(sentence)
        for index in range(len(tokens)):
            for rule in engine.rules.applying(tokens, index):
                counts[rule.line] = counts.get(rule.line, 0) + 1
    for rule in engine.rules:
        written = " ".join(option or DELETED for option in rule.replacements)
        print(f"{rule.line}\t{rule.word}\t{rule.tag}\t{written}\t{rule.context}\t"
              f"{counts.get(rule.line, 0)}")


if __name__ == "__main__":
    main()
