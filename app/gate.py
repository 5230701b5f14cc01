"""The quality gate every variant passes before it is returned, whichever engine made it.

Each candidate is checked in a fixed order and the first check it fails is its reason:

- `empty`: the engine returned nothing;
- `duplicate`: the input, or an earlier candidate, once normalised (NFKC, which folds full and half
  width, case and white space);
- `protected_lost`: a protected span of the input (number, date, link, name, quote... see
  `protect.kept_spans`) is missing or changed (with `number_forms`, an amount may be written either way:
  三天 or 3天, never 4天);
- `too_close`: a near copy: only punctuation, white space, particles or width changed, or the
  character similarity is above `max_similarity`;
- `too_far`: the character similarity is below `min_similarity`, or the length ratio is outside
  `min_length_ratio`..`max_length_ratio`;
- `label_changed`: the variant's constrained classification over the request's labels is not the
  text's label, or its probability is under `min_label_prob` (scored by the service, in one batched
  call per round, since it needs the model).

Character similarity is the indel similarity of the two texts' content characters (normalised,
without punctuation and white space): 2 x their longest common subsequence / their total length.
With `quality="off"` only empty outputs and exact repeats (ignoring white space) are removed.

A text that ends with fewer variants than `requested` says why (`short_reason`), first that applies:
`no_rewritable_words` (the engine had nothing it could change: the lexical engine found no word it may rewrite),
`few_rewritable_words` (the engine made every distinct variant it could, and they were fewer),
`dropped_by_gate` (the gate dropped the rest: `dropped` says why), `fewer_outputs` (the engine gave fewer).
"""

from __future__ import annotations

import collections
import unicodedata
from dataclasses import dataclass, field, fields

from rapidfuzz.distance import Indel

from app.engines import protect
from app.errors import InvalidParameter
from app.settings import Settings

REASONS = ("empty", "duplicate", "protected_lost", "too_close", "too_far", "label_changed")
SHORT_REASONS = ("no_rewritable_words", "few_rewritable_words", "dropped_by_gate", "fewer_outputs")
# What the page says when a text got fewer variants than asked ("只生成 1 条（要 3 条）：句中可改写的词语不多").
SHORT_REASON_WORDS = {
    "no_rewritable_words": "句中没有可改写的词语（同义词替换引擎只改写审核过的同义词和句式）",
    "few_rewritable_words": "句中可改写的词语不多，不同的改写只有这些",
    "dropped_by_gate": "其余候选没有通过质量过滤",
    "fewer_outputs": "模型给出的不同结果不足",
}
# What the page says for each reason ("过滤 4 条：关键信息丢失 2，与原文过于相似 1，标签改变 1").
REASON_WORDS = {
    "empty": "空结果",
    "duplicate": "重复",
    "protected_lost": "数字等关键信息丢失",
    "too_close": "与原文过于相似",
    "too_far": "与原文相差过大",
    "label_changed": "标签改变",
}
QUALITY_MODES = ("on", "off")
# Words that change no meaning when added, dropped or swapped: a variant that differs from its input
# only in these (and punctuation, white space, width or case) is a near copy.
PARTICLES = frozenset("的地得了着过吧啊呢吗嘛呀哦啦喔噢哇嗯哟咯呗")


def normalized(text: str) -> str:
    """NFKC (full width to half width), case folded, white space removed."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def _content(normal: str) -> str:
    """A normalised text's characters without punctuation: what similarity and length compare."""
    return "".join(char for char in normal if unicodedata.category(char)[0] != "P")


def _without_particles(content: str) -> str:
    return "".join(char for char in content if char not in PARTICLES)


def similarity(a: str, b: str) -> float:
    """Character similarity of two texts, 0 (nothing in common) to 1 (the same content characters)."""
    return _similarity(_content(normalized(a)), _content(normalized(b)))


def length_ratio(source: str, variant: str) -> float:
    """The variant's content characters per content character of its source."""
    return len(_content(normalized(variant))) / max(1, len(_content(normalized(source))))


def _similarity(a: str, b: str) -> float:
    if not a and not b:
        return 1.0
    return Indel.normalized_similarity(a, b)


def _exact_key(text: str) -> str:
    return "".join(text.split())


@dataclass(frozen=True, kw_only=True)
class GateParams:
    """The gate's thresholds for one request (defaults from settings); checked when built."""

    quality: str = "on"
    min_similarity: float = 0.0
    max_similarity: float = 1.0
    min_length_ratio: float = 0.0
    max_length_ratio: float = 100.0
    min_label_prob: float = 0.0
    return_rejected: bool = False

    def __post_init__(self) -> None:
        if self.quality not in QUALITY_MODES:
            raise InvalidParameter(f"quality 只能是 on 或 off（收到 {str(self.quality)[:40]!r}）", field="quality")
        for name in ("min_similarity", "max_similarity", "min_label_prob"):
            _number_within(name, getattr(self, name), 0.0, 1.0)
        for name in ("min_length_ratio", "max_length_ratio"):
            _number_within(name, getattr(self, name), 0.0, 100.0)
        if self.min_similarity > self.max_similarity:
            raise InvalidParameter(f"min_similarity（{self.min_similarity}）不能大于 max_similarity"
                                   f"（{self.max_similarity}）", field="min_similarity")
        if self.min_length_ratio > self.max_length_ratio:
            raise InvalidParameter(f"min_length_ratio（{self.min_length_ratio}）不能大于 max_length_ratio"
                                   f"（{self.max_length_ratio}）", field="min_length_ratio")
        if not isinstance(self.return_rejected, bool):
            raise InvalidParameter("return_rejected 必须是布尔值", field="return_rejected")

    @property
    def on(self) -> bool:
        return self.quality == "on"

    def with_sent(self, values: dict) -> "GateParams":
        """These params with the fields a client sent (None: keep this default)."""
        sent = {f.name: values[f.name] for f in fields(self) if values.get(f.name) is not None}
        return GateParams(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **sent})


GATE_FIELDS = tuple(f.name for f in fields(GateParams))


def _number_within(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameter(f"{name} 必须是数字（收到 {value!r}）", field=name)
    if not low <= value <= high:
        raise InvalidParameter(f"{name} 必须在 {low:g} 到 {high:g} 之间（收到 {value}）", field=name)


@dataclass(frozen=True)
class Kept:
    text: str
    similarity: float | None  # None where there is no input to compare with (the card's tasks)
    label_probability: float | None = None  # the text's label's probability, where the label was checked

    def as_dict(self) -> dict:
        shown = {"text": self.text, "similarity": _rounded(self.similarity)}
        if self.label_probability is not None:
            shown["label_probability"] = _rounded(self.label_probability)
        return shown


@dataclass(frozen=True)
class Rejected:
    text: str
    reason: str
    similarity: float | None
    label_probability: float | None = None

    def as_dict(self) -> dict:
        shown = {"text": self.text, "reason": self.reason, "similarity": _rounded(self.similarity)}
        if self.label_probability is not None:
            shown["label_probability"] = _rounded(self.label_probability)
        return shown


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass
class Outcome:
    """What the gate made of one input's candidates: the variants kept, and those dropped by reason."""

    kept: list[Kept] = field(default_factory=list)
    dropped: collections.Counter = field(default_factory=collections.Counter)
    rejected: list[Rejected] = field(default_factory=list)
    label_probability: float | None = None  # the input's own, where the label was checked
    requested: int = 0
    short_reason: str | None = None  # one of SHORT_REASONS when fewer than requested were kept

    @property
    def texts(self) -> list[str]:
        return [variant.text for variant in self.kept]

    def drop(self, text: str, reason: str, similarity: float | None, label_probability: float | None = None) -> None:
        self.dropped[reason] += 1
        self.rejected.append(Rejected(text, reason, similarity, label_probability))

    def settle(self, requested: int, offered: int, exhausted: bool) -> None:
        """Record what was asked and, when fewer were kept, why: `offered` candidates came from the engine in
        all, and `exhausted` says it gave fewer than asked (it had no more)."""
        self.requested = requested
        if len(self.kept) >= requested:
            self.short_reason = None
        elif exhausted and not offered:
            self.short_reason = "no_rewritable_words"
        elif exhausted:
            self.short_reason = "few_rewritable_words"
        elif sum(self.dropped.values()):
            self.short_reason = "dropped_by_gate"
        else:
            self.short_reason = "fewer_outputs"

    def report(self, return_rejected: bool) -> dict:
        """What an answer says of this text: each kept variant's figures, how many were asked and why fewer came,
        the dropped by reason, the text's own label probability (label check), and with `return_rejected` the
        dropped texts and why."""
        shown: dict = {"variants": [variant.as_dict() for variant in self.kept], "requested": self.requested,
                       "short_reason": self.short_reason, "dropped": self.dropped_counts()}
        if self.label_probability is not None:
            shown["label_probability"] = _rounded(self.label_probability)
        if return_rejected:
            shown["rejected"] = [rejected.as_dict() for rejected in self.rejected]
        return shown

    def dropped_counts(self) -> dict[str, int]:
        """Every reason, in the gate's order, with its count (0 where none was dropped for it)."""
        return {reason: self.dropped[reason] for reason in REASONS}


def short_words(outcome: Outcome) -> str:
    """"只生成 1 条（要 3 条）：句中可改写的词语不多", or "" when every variant asked for was kept."""
    if outcome.short_reason is None:
        return ""
    return f"只生成 {len(outcome.kept)} 条（要 {outcome.requested} 条）：{SHORT_REASON_WORDS[outcome.short_reason]}"


def dropped_words(dropped: dict[str, int]) -> str:
    """"过滤 4 条：数字等关键信息丢失 2，与原文过于相似 1，标签改变 1", or "" when nothing was dropped."""
    total = sum(dropped.values())
    if not total:
        return ""
    parts = [f"{REASON_WORDS[reason]} {count}" for reason, count in dropped.items() if count]
    return f"过滤 {total} 条：" + "，".join(parts)


class TextGate:
    """The gate for one input: it remembers the candidates it has seen, so a repeat is a `duplicate`."""

    def __init__(self, source: str | None, params: GateParams, number_forms: bool = False) -> None:
        self.params = params
        self.outcome = Outcome()
        self.source = source
        self._spans: list[tuple[str, ...]] = []  # each protected span, in the forms it may take
        self._seen: set[str] = set()
        if source is not None:
            self._normal = normalized(source)
            self._content = _content(self._normal)
            self._bare = _without_particles(self._content)
            self._spans = [tuple(map(normalized, protect.number_forms(span) if number_forms else (span,)))
                           for span in protect.kept_spans(source)]
            self._seen.add(self._key(source))

    def _key(self, text: str) -> str:
        return normalized(text) if self.params.on else _exact_key(text)

    def check(self, candidate: str) -> tuple[str | None, float | None]:
        """The first check `candidate` fails (None if it passes all but the label check) and its similarity."""
        if not candidate.strip():
            return "empty", None
        key = self._key(candidate)
        repeat = key in self._seen
        self._seen.add(key)
        if self.source is None:
            return ("duplicate" if repeat else None), None
        normal = normalized(candidate)
        content = _content(normal)
        score = _similarity(self._content, content)
        if repeat:
            return "duplicate", score
        if not self.params.on:
            return None, score
        params = self.params
        if any(not any(form in normal for form in forms) for forms in self._spans):
            return "protected_lost", score
        if _without_particles(content) == self._bare or score > params.max_similarity:
            return "too_close", score
        if score < params.min_similarity:
            return "too_far", score
        if self._content:
            ratio = len(content) / len(self._content)
            if not params.min_length_ratio <= ratio <= params.max_length_ratio:
                return "too_far", score
        return None, score


def defaults(settings: Settings) -> GateParams:
    """The gate's thresholds where a request sends none: the settings'."""
    return GateParams(**{name: getattr(settings, name) for name in GATE_FIELDS if name != "return_rejected"})


def label_verdict(probabilities: dict[str, float], label: str, min_label_prob: float) -> bool:
    """Whether a variant keeps its text's label: that label wins the constrained classification, with at
    least `min_label_prob`."""
    best = max(probabilities, key=probabilities.__getitem__)
    return best == label and probabilities[label] >= min_label_prob
