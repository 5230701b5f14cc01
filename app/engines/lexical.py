"""Synonym replacement and reviewed rewrites that keep meaning: the engine that needs no model weights.

Policy lives here (which words may change, how many, in which order); the edits themselves are data:
content-word synonyms (app/engines/lexicon.py, app/data/synonyms_reviewed.tsv) and rules for function words
and small constructions (app/engines/rules.py, app/data/rules_reviewed.tsv).
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from app.engines.context import BOUNDARY, PROTECTED, Token
from app.engines.lexicon import EXCLUDED_TAGS, Lexicon, load_lexicon
from app.engines.protect import other_number_form, split_protected
from app.engines.rules import NO_RULES, Rules, load_rules
from app.errors import NeedsMT5
from app.params import GenerationParams

log = logging.getLogger(__name__)

# temperature -> share of replaceable words changed in a variant: 0.8 changes 40%, 2.0 all.
SHARE_PER_TEMPERATURE = 0.5
# Below this many combinations every variant is listed and picked from; above, variants are sampled.
ENUMERATION_LIMIT = 4096
SAMPLING_ATTEMPTS_PER_VARIANT = 30
# jieba's dictionary holds ~116k phrases with count <= 3 (仔细阅读, 提高效率, 价格比); they are cut in two
# words when both halves are common words, so that the halves can be replaced.
PHRASE_ENTRY_MAX_FREQ = 3
COMMON_WORD_FREQ = 300
# Two nouns joined by one of these may swap places (身份证和户口本 -> 户口本和身份证) ...
CONJUNCTIONS = frozenset({"和", "与", "及", "以及", "、"})
# ... unless a word of comparison or relation follows, where the order carries meaning (颜色和图片一样).
ORDERED_RELATIONS = frozenset({
    "一样", "不一样", "相同", "不同", "相似", "类似", "相比", "相比较", "比较", "对比", "相当", "一致", "相等",
    "相反", "同样", "区别", "差别", "差异", "不如", "之间", "相关", "有关", "无关", "接近", "相近", "差不多", "比",
})
RELATION_LOOKAHEAD = 3  # tokens after the second noun searched for such a word
# What may stand right before the first noun and right after the second: a clause boundary, a verb,
# a preposition or an adverb; never a modifier (新的产品和服务, 3个苹果和梨) whose scope would move.
BEFORE_FIRST = ("v", "p", "x")
AFTER_SECOND = ("v", "d", "p", "x", "u", "c")
REORDER = "reorder"
SYNONYM, RULE, NUMBER = "synonym", "rule", "number"


@dataclass(frozen=True)
class Edit:
    word: str
    replacement: str
    tag: str  # the word's part of speech; REORDER for two coordinated nouns swapping places
    kind: str = SYNONYM  # SYNONYM (the reviewed synonyms), RULE (the reviewed rules), NUMBER or REORDER


@dataclass(frozen=True)
class Variant:
    text: str
    edits: tuple[Edit, ...]


@dataclass(frozen=True)
class _Slot:
    index: int  # position in the token list
    word: str
    tag: str
    options: tuple[str, ...]  # synonyms, then rule rewrites; for a reorder the one option is the partner noun
    partner: int | None = None  # a reorder exchanges the nouns at index and partner
    synonyms: int = 0  # how many of the options are synonyms (the rest are rule rewrites)
    kind: str | None = None  # NUMBER for an amount written the other way; else told by `synonyms`


def changed_share(temperature: float) -> float:
    return min(1.0, temperature * SHARE_PER_TEMPERATURE)


class LexicalEngine:
    """Replaces words by reviewed synonyms and rewrites, never touching protected spans."""

    name = "lexical"
    can_score = False
    wants_raw_text = True
    batch_size = 16

    def __init__(self, reviewed_file: Path, rules_file: Path | None = None) -> None:
        started = time.monotonic()
        import jieba
        import jieba.posseg

        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()  # replaces jieba.dt.FREQ, so before it is kept
        self._cut = jieba.posseg.dt.cut
        self._tags = jieba.posseg.dt.word_tag_tab
        self._freq = jieba.dt.FREQ
        self._lexicon: Lexicon = load_lexicon(reviewed_file)
        self.rules: Rules = NO_RULES if rules_file is None else load_rules(rules_file)
        self._load_seconds = time.monotonic() - started
        log.info("Lexical engine loaded in %.1f s (%s)", self._load_seconds, self.source)

    @property
    def source(self) -> str:
        return f"{self._lexicon.source}; {self.rules.source}"

    @classmethod
    def from_settings(cls, settings=None) -> "LexicalEngine":
        """The engine on the reviewed data the settings name (the defaults: app/data/)."""
        from app.settings import Settings

        settings = settings or Settings()
        return cls(settings.lexicon_file, settings.rules_file)

    def info(self) -> dict:
        return {
            "engine": self.name,
            "model": self.source,
            "device": "cpu",
            "dtype": "n/a",
            "load_seconds": round(self._load_seconds, 2),
        }

    def generate(self, prompts: list[str], params: GenerationParams) -> list[list[str]]:
        return [[variant.text for variant in self.propose(text, params)] for text in prompts]

    def score(self, prompt: str, candidates: list[str]) -> list[float]:
        return self.score_batch([(prompt, candidates)])[0]

    def score_batch(self, items: list[tuple[str, list[str]]]) -> list[list[float]]:
        raise NeedsMT5("同义词替换引擎不能打分：零样本分类等任务需要 mT5 权重（见 README「安装模型权重」）")

    def tokens(self, text: str) -> list[Token]:
        """The text as jieba's words with their tags; protected spans whole (punctuation "x", others "m")."""
        tokens: list[Token] = []
        for piece, protected in split_protected(text):
            if protected:
                punctuation = all(_is_punctuation(c) for c in piece)
                tokens.append(Token(piece, BOUNDARY if punctuation else PROTECTED, protected=True))
                continue
            for pair in self._cut(piece):
                tokens.extend(self._halves(pair.word, pair.flag))
        return tokens

    def _halves(self, word: str, tag: str) -> list[Token]:
        """A phrase entry of jieba's dictionary cut in two common words; any other word as it is."""
        if (len(word) < 3 or self._freq.get(word, 0) > PHRASE_ENTRY_MAX_FREQ or tag in EXCLUDED_TAGS
                or self._lexicon.candidates(word, tag)):
            return [Token(word, tag)]
        cuts = [(word[:i], word[i:]) for i in range(1, len(word))]
        cuts = [cut for cut in cuts if all(self._freq.get(half, 0) >= COMMON_WORD_FREQ
                                           and self._tags.get(half, "x") not in EXCLUDED_TAGS for half in cut)]
        if not cuts:
            return [Token(word, tag)]
        best = max(cuts, key=lambda cut: min(self._freq[half] for half in cut))
        return [Token(half, self._tags[half]) for half in best]

    def _slots(self, tokens: list[Token], number_forms: bool = False) -> list[_Slot]:
        slots = []
        for i, token in enumerate(tokens):
            if token.tag == PROTECTED and number_forms and (other := other_number_form(token.text)):
                slots.append(_Slot(i, token.text, PROTECTED, (other,), kind=NUMBER))
                continue
            if token.protected:
                continue
            synonyms = self._lexicon.candidates_at(tokens, i)
            rewrites = tuple(r for r in self.rules.replacements(tokens, i) if r not in synonyms)
            if synonyms or rewrites:
                slots.append(_Slot(i, token.text, token.tag, synonyms + rewrites, synonyms=len(synonyms)))
        for i in range(1, len(tokens) - 1):
            if tokens[i].text in CONJUNCTIONS and _coordinated(tokens, i - 1, i + 1):
                slots.append(_Slot(i - 1, tokens[i - 1].text, REORDER, (tokens[i + 1].text,), partner=i + 1))
        return slots

    def propose(self, text: str, params: GenerationParams) -> list[Variant]:
        """Up to `num_return_sequences` distinct variants, each different from `text`."""
        tokens = self.tokens(text)
        slots = self._slots(tokens, params.number_forms)
        if not slots:
            return []
        # A seed fixes each text's variants whatever else is in the batch.
        rng = random.Random(f"{params.seed}\x00{text}") if params.seed is not None else random.Random()
        target = max(1, round(changed_share(params.temperature) * len(slots)))
        wanted = params.num_return_sequences
        combinations = 1
        for slot in slots:
            combinations *= len(slot.options) + 1
        if combinations <= ENUMERATION_LIMIT:
            choices = self._enumerate(slots, target, rng)
        else:
            choices = self._sample(slots, target, wanted, rng)
        variants, seen = [], {text}
        for choice in choices:
            variant = _apply(tokens, choice)
            if variant.text not in seen:
                seen.add(variant.text)
                variants.append(variant)
                if len(variants) == wanted:
                    break
        return variants

    @staticmethod
    def _enumerate(slots: list[_Slot], target: int, rng: random.Random):
        options = [[None, *((slot, option) for option in slot.options)] for slot in slots]
        every = [[c for c in combo if c is not None] for combo in itertools.product(*options)]
        # Closest to the asked share first; ties in a seeded random order (one key per combination).
        return sorted((combo for combo in every if combo), key=lambda combo: (abs(len(combo) - target), rng.random()))

    @staticmethod
    def _sample(slots: list[_Slot], target: int, wanted: int, rng: random.Random):
        attempts = wanted * SAMPLING_ATTEMPTS_PER_VARIANT
        for attempt in range(attempts):
            # Half the attempts at the asked share; then any share, to find distinct variants.
            count = target if attempt < attempts // 2 else rng.randint(1, len(slots))
            yield [(slot, rng.choice(slot.options)) for slot in rng.sample(slots, count)]


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char)[0] in "PZ"


def _coordinated(tokens: list[Token], first: int, second: int) -> bool:
    """Two plain nouns joined by a conjunction, with nothing around them whose meaning hangs on their order."""
    if not all(tokens[i].tag == "n" and len(tokens[i].text) >= 2 for i in (first, second)):
        return False
    if tokens[first].text == tokens[second].text:
        return False
    if first > 0 and tokens[first - 1].tag[:1] not in BEFORE_FIRST:
        return False
    after = tokens[second + 1:second + 1 + RELATION_LOOKAHEAD]
    if after and after[0].tag[:1] not in AFTER_SECOND:
        return False
    return not any(t.text in ORDERED_RELATIONS for t in after)


def _apply(tokens: list[Token], choice) -> Variant:
    changed = [t.text for t in tokens]
    edits = []
    # Synonyms first, then reorders, so that a noun may be both replaced and moved.
    for slot, option in sorted(choice, key=lambda pair: (pair[0].partner is not None, pair[0].index)):
        if slot.partner is None:
            changed[slot.index] = option
            kind = slot.kind or (SYNONYM if slot.options.index(option) < slot.synonyms else RULE)
            edits.append(Edit(slot.word, option, slot.tag, kind))
        else:
            first, second = changed[slot.index], changed[slot.partner]
            middle = "".join(changed[slot.index + 1:slot.partner])
            changed[slot.index], changed[slot.partner] = second, first
            edits.append(Edit(first + middle + second, second + middle + first, REORDER, REORDER))
    return Variant("".join(changed), tuple(edits))

