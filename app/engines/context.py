"""Where in a sentence an edit of the lexical engine may apply: conditions on the words around it.

A context is written in the reviewed data files as conditions separated by spaces, all of which must hold:

    next=了,过        the next word is one of these          prev=...       the word before is one of these
    not_next=警惕      the next word is none of these         not_prev=...
    next_tag=a,v       the next word's jieba tag starts so     prev_tag=..., not_next_tag=..., not_prev_tag=...
    next_len=1         the next word has 1 character           next_len=2+    2 or more (prev_len likewise)
    next2_tag=uj       the word after the next one ...        prev2=...      the word before the previous one

Punctuation, and the start and end of the text, count as a word tagged "x" ("not_next_tag=x": not at the end
of a clause); numbers, dates and other protected spans are words tagged "m".
"""

from __future__ import annotations

from dataclasses import dataclass

BOUNDARY = "x"
PROTECTED = "m"
_SIDES = {"next": 1, "prev": -1, "next2": 2, "prev2": -2}  # where the neighbour is, from the word


@dataclass(frozen=True)
class Token:
    text: str
    tag: str  # jieba's tag; "x" for punctuation, "m" for any other protected span
    protected: bool = False  # a protected span (a number, a date, a quote...): never rewritten


class ContextError(ValueError):
    """A context that cannot be read."""


@dataclass(frozen=True)
class _Condition:
    side: str  # "next", "prev", "next2" or "prev2"
    what: str  # "word", "tag" or "len"
    values: tuple[str, ...]
    negated: bool

    def holds(self, neighbour: Token) -> bool:
        if self.what == "word":
            found = neighbour.text in self.values
        elif self.what == "tag":
            found = neighbour.tag.startswith(self.values)
        else:
            [wanted] = self.values
            length = len(neighbour.text) if neighbour.tag != BOUNDARY else 0
            found = length >= int(wanted[:-1]) if wanted.endswith("+") else length == int(wanted)
        return found != self.negated


@dataclass(frozen=True)
class Context:
    conditions: tuple[_Condition, ...] = ()

    def holds(self, tokens: list[Token], index: int) -> bool:
        """Whether every condition holds for the word at `index` of `tokens`."""
        return all(condition.holds(neighbour(tokens, index, condition.side)) for condition in self.conditions)

    def __str__(self) -> str:
        return " ".join(f"{'not_' if c.negated else ''}{c.side}{'' if c.what == 'word' else '_' + c.what}="
                        f"{','.join(c.values)}" for c in self.conditions)


ANYWHERE = Context()


def neighbour(tokens: list[Token], index: int, side: str) -> Token:
    at = index + _SIDES[side]
    return tokens[at] if 0 <= at < len(tokens) else Token("", BOUNDARY)


def parse_context(text: str) -> Context:
    """A context from its written form (see the module's doc); raises ContextError naming what is wrong."""
    conditions = []
    for part in text.split():
        name, sign, values = part.partition("=")
        if not sign or not values:
            raise ContextError(f"{part!r}: expected name=value[,value...]")
        negated = name.startswith("not_")
        side, _, what = name.removeprefix("not_").partition("_")
        what = what or "word"
        if side not in _SIDES or what not in ("word", "tag", "len"):
            raise ContextError(f"{part!r}: unknown condition {name!r}")
        listed = tuple(value for value in values.split(",") if value)
        if what == "len" and (len(listed) != 1 or not listed[0].removesuffix("+").isdigit()):
            raise ContextError(f"{part!r}: a length is a number, or a number and + (2+)")
        conditions.append(_Condition(side, what, listed, negated))
    return Context(tuple(conditions))
