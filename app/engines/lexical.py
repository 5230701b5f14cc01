"""Synonym replacement that keeps meaning: the engine that needs no model weights.

Policy lives here (which words may change, how many, in which order); the synonyms themselves
are data (app/engines/lexicon.py and app/data/synonyms_reviewed.tsv).
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

from app.engines.lexicon import Lexicon, load_lexicon
from app.engines.protect import split_protected
from app.errors import ScoringUnsupported
from app.params import GenerationParams

log = logging.getLogger(__name__)

# temperature -> share of replaceable words changed in a variant: 0.8 changes 40%, 2.0 all.
SHARE_PER_TEMPERATURE = 0.5
# Below this many combinations every variant is listed and picked from; above, variants are sampled.
ENUMERATION_LIMIT = 4096
SAMPLING_ATTEMPTS_PER_VARIANT = 30


@dataclass(frozen=True)
class Edit:
    word: str
    replacement: str
    tag: str


@dataclass(frozen=True)
class Variant:
    text: str
    edits: tuple[Edit, ...]


@dataclass(frozen=True)
class _Slot:
    index: int  # position in the token list
    word: str
    tag: str
    synonyms: tuple[str, ...]


def changed_share(temperature: float) -> float:
    return min(1.0, temperature * SHARE_PER_TEMPERATURE)


class LexicalEngine:
    """Replaces content words by reviewed Cilin synonyms, never touching protected spans."""

    name = "lexical"
    can_score = False
    wants_raw_text = True

    def __init__(self, reviewed_file: Path) -> None:
        started = time.monotonic()
        import jieba
        import jieba.posseg

        jieba.setLogLevel(logging.WARNING)
        self._cut = jieba.posseg.dt.cut
        self._lexicon: Lexicon = load_lexicon(reviewed_file)
        self._load_seconds = time.monotonic() - started
        log.info("Lexical engine loaded in %.1f s (%s)", self._load_seconds, self._lexicon.source)

    def info(self) -> dict:
        return {
            "engine": self.name,
            "model": self._lexicon.source,
            "device": "cpu",
            "dtype": "n/a",
            "load_seconds": round(self._load_seconds, 2),
        }

    def generate(self, prompts: list[str], params: GenerationParams) -> list[list[str]]:
        return [[variant.text for variant in self.propose(text, params)] for text in prompts]

    def score(self, prompt: str, candidates: list[str]) -> list[float]:
        raise ScoringUnsupported("同义词替换引擎不能打分：零样本分类等任务需要 mT5 权重（见 README「安装模型权重」）")

    def _tokens(self, text: str) -> tuple[list[str], list[_Slot]]:
        tokens: list[str] = []
        slots: list[_Slot] = []
        for piece, protected in split_protected(text):
            if protected:
                tokens.append(piece)
                continue
            for pair in self._cut(piece):
                synonyms = self._lexicon.candidates(pair.word, pair.flag)
                if synonyms:
                    slots.append(_Slot(len(tokens), pair.word, pair.flag, synonyms))
                tokens.append(pair.word)
        return tokens, slots

    def propose(self, text: str, params: GenerationParams) -> list[Variant]:
        """Up to `num_return_sequences` distinct variants, each different from `text`."""
        tokens, slots = self._tokens(text)
        if not slots:
            return []
        # A seed fixes each text's variants whatever else is in the batch.
        rng = random.Random(f"{params.seed}\x00{text}") if params.seed is not None else random.Random()
        target = max(1, round(changed_share(params.temperature) * len(slots)))
        wanted = params.num_return_sequences
        combinations = 1
        for slot in slots:
            combinations *= len(slot.synonyms) + 1
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
        options = [[None, *((slot, s) for s in slot.synonyms)] for slot in slots]
        every = [[c for c in combo if c is not None] for combo in itertools.product(*options)]
        # Closest to the asked share first; ties in a seeded random order (one key per combination).
        return sorted((combo for combo in every if combo), key=lambda combo: (abs(len(combo) - target), rng.random()))

    @staticmethod
    def _sample(slots: list[_Slot], target: int, wanted: int, rng: random.Random):
        attempts = wanted * SAMPLING_ATTEMPTS_PER_VARIANT
        for attempt in range(attempts):
            # Half the attempts at the asked share; then any share, to find distinct variants.
            count = target if attempt < attempts // 2 else rng.randint(1, len(slots))
            yield [(slot, rng.choice(slot.synonyms)) for slot in rng.sample(slots, count)]


def _apply(tokens: list[str], choice) -> Variant:
    changed = list(tokens)
    edits = []
    for slot, synonym in sorted(choice, key=lambda pair: pair[0].index):
        changed[slot.index] = synonym
        edits.append(Edit(slot.word, synonym, slot.tag))
    return Variant("".join(changed), tuple(edits))
