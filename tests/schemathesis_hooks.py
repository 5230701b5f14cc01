"""Schemathesis hooks for tests/test_openapi.py: the rules of /augment and /augment_batch that JSON Schema
cannot state (the schema says them in words), applied to generated bodies that are otherwise valid, so that
a body the schema allows is one the server must accept.

- the text's `label` is one of `labels`; `text_labels` has one item per text, each one of `labels` or null;
- min_similarity <= max_similarity and min_length_ratio <= max_length_ratio, where a bound left out (or null)
  is the server's default: `max_similarity: 0.25` alone conflicts with the default `min_similarity` 0.4.

POST /jobs: the file is made a small CSV that has the columns the form names (the text column, and the label
column when one is named), so that forms the schema allows reach the job code rather than stopping at
file_invalid.

A body whose own fields are already invalid is left as it is, so negative cases stay negative.
"""

from __future__ import annotations

import csv
import io
import re

import schemathesis

from app.checks import LABEL_SEPARATORS, label_pattern
from app.settings import Settings

SETTINGS = Settings()
LABEL = re.compile(label_pattern(SETTINGS.max_label_chars))
DEFAULTS = {name: getattr(SETTINGS, name) for name in
            ("min_similarity", "max_similarity", "min_length_ratio", "max_length_ratio")}


def _first_label(labels: object) -> str | None:
    if isinstance(labels, list) and labels and isinstance(labels[0], str):
        return labels[0]
    if isinstance(labels, str):
        return LABEL_SEPARATORS.split(labels)[0].strip() or None
    return None


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ordered(body: dict, low: str, high: str) -> None:
    """Order a pair as the server reads it: an absent or null bound is the server's default (Settings())."""
    sent = {name: body.get(name) for name in (low, high)}
    if not all(v is None or _number(v) for v in sent.values()):
        return
    a, b = (DEFAULTS[name] if sent[name] is None else sent[name] for name in (low, high))
    if a > b:
        body[low], body[high] = b, a


def _column(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _job_file(body: dict) -> None:
    """A CSV whose header has the form's text column (and label column), and two rows of text."""
    text_col, label_col = _column(body.get("text_col")), _column(body.get("label_col"))
    if "file" not in body or text_col is None:
        return
    columns = [text_col, *([label_col] if label_col not in (None, text_col) else [])]
    rows = [["快递第二天就到了，包装完好。", "正面"], ["客服回复很慢，问题也没解决。", "负面"]]
    sink = io.StringIO()
    writer = csv.writer(sink)
    writer.writerow(columns)
    writer.writerows(row[:len(columns)] for row in rows)
    body["file"] = sink.getvalue().encode("utf-8")


@schemathesis.hook
def map_body(ctx, body):
    if not isinstance(body, dict):
        return body
    if ctx.operation is not None and ctx.operation.path == "/jobs":
        _job_file(body)
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
