"""Schemathesis hooks for tests/test_openapi.py: the rules of /augment and /augment_batch that JSON Schema
cannot state (the schema says them in words), applied to generated bodies that are otherwise valid, so that
a body the schema allows is one the server must accept.

- the text's `label` is one of `labels`; `text_labels` has one item per text, each one of `labels` or null;
- min_similarity <= max_similarity and min_length_ratio <= max_length_ratio.

A body whose own fields are already invalid is left as it is, so negative cases stay negative.
"""

from __future__ import annotations

import re

import schemathesis

from app.checks import LABEL_SEPARATORS, label_pattern
from app.settings import Settings

LABEL = re.compile(label_pattern(Settings().max_label_chars))


def _first_label(labels: object) -> str | None:
    if isinstance(labels, list) and labels and isinstance(labels[0], str):
        return labels[0]
    if isinstance(labels, str):
        return LABEL_SEPARATORS.split(labels)[0].strip() or None
    return None


def _ordered(body: dict, low: str, high: str) -> None:
    a, b = body.get(low), body.get(high)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)) and a > b:
        body[low], body[high] = b, a


@schemathesis.hook
def map_body(ctx, body):
    if not isinstance(body, dict):
        return body
    first = _first_label(body.get("labels"))
    if first is not None:
        if isinstance(body.get("label"), str) and LABEL.match(body["label"]):
            body["label"] = first
        texts, own = body.get("texts"), body.get("text_labels")
        if isinstance(texts, list) and isinstance(own, list) and all(
                item is None or (isinstance(item, str) and LABEL.match(item)) for item in own):
            body["text_labels"] = [first if i % 2 == 0 else None for i in range(len(texts))]
    _ordered(body, "min_similarity", "max_similarity")
    _ordered(body, "min_length_ratio", "max_length_ratio")
    return body
