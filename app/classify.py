"""Zero-shot classification's own logic: label probabilities, multi-label pairs, free answers matched."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from app.checks import LABEL_SEPARATORS
from app.params import GenerationParams
from app.tasks import Templates

MODES = ("constrained", "generate")
# multi_label asks about each label on its own, against a catch-all partner label.
PARTNER_LABELS = ("其他", "无关")
# Generate mode: greedy, with room for a label (or several, with multi_label) and its end token.
GREEDY_ANSWER = GenerationParams(do_sample=False, num_return_sequences=1, max_length=64)


@dataclass(frozen=True)
class Classification:
    label: str | None  # constrained: always one of the labels; generate: the matched label or None
    scores: dict[str, float] | None  # constrained only, in the order the labels were given
    raw_output: str | None  # generate only
    in_labels: bool
    labels: list[str] | None = None  # multi_label only: every label that passed, most probable first

    def as_dict(self) -> dict:
        shown = {"label": self.label, "scores": self.scores, "raw_output": self.raw_output,
                 "in_labels": self.in_labels}
        if self.labels is not None:
            shown["labels"] = self.labels
        return shown


def softmax(values: list[float]) -> list[float]:
    """Probabilities from log-probabilities, computed in float64 so they sum to 1."""
    top = max(values)
    weights = [math.exp(value - top) for value in values]
    total = math.fsum(weights)
    return [weight / total for weight in weights]


def _label_key(text: str) -> str:
    return "".join(text.split()).strip("。.！!；;").casefold()


def match_labels(raw: str, labels: list[str], multi_label: bool) -> tuple[list[str], bool]:
    """The labels a free-generated answer names, and whether it names nothing else."""
    keys = {_label_key(label): label for label in labels}
    parts = LABEL_SEPARATORS.split(raw) if multi_label else [raw]
    found = [keys.get(_label_key(part)) for part in parts]
    hits = list(dict.fromkeys(label for label in found if label is not None))
    return hits, all(label is not None for label in found)


def best_label(scores: dict[str, float]) -> Classification:
    """Constrained, one label: the most probable."""
    return Classification(max(scores, key=scores.__getitem__), scores, None, True)


def pair_items(templates: Templates, texts: list[str], labels: list[str]) -> list[tuple[str, list[str]]]:
    """multi_label: per text and label, a prompt offering that label and a catch-all partner."""
    items = []
    for text in texts:
        for label in labels:
            partner = next(p for p in PARTNER_LABELS if p != label)
            prompt = templates.render("classification", labels=f"{label},{partner}", text=text)
            items.append((prompt, [label, partner]))
    return items


def from_pairs(scores: Iterator[dict[str, float]], texts: list[str], labels: list[str],
               threshold: float) -> list[Classification]:
    """multi_label: each label's own probability against its partner; those at the threshold pass."""
    classifications = []
    for _ in texts:
        own = {label: next(scores)[label] for label in labels}
        passed = sorted((label for label in labels if own[label] >= threshold), key=own.__getitem__, reverse=True)
        classifications.append(Classification(max(own, key=own.__getitem__), own, None, True, passed))
    return classifications


def from_answer(raw: str, labels: list[str], multi_label: bool) -> Classification:
    """generate mode: the model's free answer, and the labels it names."""
    hits, only_labels = match_labels(raw, labels, multi_label)
    return Classification(hits[0] if hits else None, None, raw, bool(hits) and only_labels,
                          hits if multi_label else None)
