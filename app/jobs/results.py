"""A job's output table and its report, built from its stored input rows and per-row results.

augment: every original column, then `source_row` (the row's number in the file, 1 = the first data row),
`variant` (0 = the row itself, when originals are included), `similarity` and, with the label check,
`label_probability`; the text column holds the variant, the label column the row's own label.
classify: every original column, then `source_row`, `predicted_label` (multi-label: every label that
passed, joined by ","), and `prob_<label>` per candidate label.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from app.jobs.spec import AUGMENT_COLUMNS, PROBABILITY_PREFIX
from app.jobs.store import Job, JobStore


def columns(job: Job) -> list[str]:
    if job.kind == "augment":
        added = [name for name in AUGMENT_COLUMNS if name != "label_probability" or label_checked(job)]
    else:
        added = ["source_row", "predicted_label", *(PROBABILITY_PREFIX + label for label in job.spec.labels)]
    return [*job.columns, *added]


def label_checked(job: Job) -> bool:
    """Whether any row of the job has a label probability to show (the label check ran)."""
    return bool(job.spec.labels) and job.spec.label_col is not None and job.kind == "augment"


def rows(job: Job, store: JobStore) -> Iterator[dict]:
    """The output rows, in file order, of the rows done so far."""
    make = _augmented if job.kind == "augment" else _classified
    for row, values, result in store.results(job.id):
        if result is not None:
            yield from make(job, row, values, result)


def _augmented(job: Job, row: int, values: dict, result: dict) -> Iterator[dict]:
    spec = job.spec
    if spec.include_original:
        yield {**values, "source_row": row, "variant": 0, "similarity": None,
               "label_probability": result.get("label_probability")}
    for number, variant in enumerate(result.get("variants", []), start=1):
        yield {**values, spec.text_col: variant["text"], "source_row": row, "variant": number,
               "similarity": variant["similarity"], "label_probability": variant.get("label_probability")}


def _classified(job: Job, row: int, values: dict, result: dict) -> Iterator[dict]:
    labels = job.spec.labels
    scores = result.get("scores") or {}
    chosen = result.get("labels") if result.get("labels") is not None else (
        [result["label"]] if result.get("label") else [])
    yield {**values, "source_row": row, "predicted_label": ",".join(chosen),
           **{PROBABILITY_PREFIX + label: _rounded(scores.get(label)) for label in labels}}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def report(job: Job, store: JobStore) -> dict:
    """Rows that got fewer variants than asked (and the gate's reasons), and rows skipped (and why)."""
    return {**_report_head(job), "rows_short": list(_rows_short(job, store)),
            "rows_skipped": list(_rows_skipped(job, store))}


def report_chunks(job: Job, store: JobStore) -> Iterator[str]:
    """`report` as JSON text, written as the rows are read: a job of 100,000 rows may list most of them."""
    yield json.dumps(_report_head(job), ensure_ascii=False)[:-1]
    for name, entries in (("rows_short", _rows_short(job, store)), ("rows_skipped", _rows_skipped(job, store))):
        yield f', "{name}": ['
        for number, entry in enumerate(entries):
            yield ("," if number else "") + "\n" + json.dumps(entry, ensure_ascii=False)
        yield "]"
    yield "}\n"


def _report_head(job: Job) -> dict:
    return {"id": job.id, "kind": job.kind, "state": job.state, "rows_done": job.rows_done,
            "rows_total": job.rows_total, "notes": job.notes}


def _rows_short(job: Job, store: JobStore) -> Iterator[dict]:
    if job.kind != "augment":
        return
    want = job.spec.generation().num_return_sequences
    for row, values, result in store.results(job.id):
        if result is not None and "skipped" not in result and len(result["variants"]) < want:
            dropped = {reason: n for reason, n in result["dropped"].items() if n}
            yield {"source_row": row, "text": _shown(job, values), "asked": want, "got": len(result["variants"]),
                   "reason": result.get("short_reason"), "dropped": dropped}


def _rows_skipped(job: Job, store: JobStore) -> Iterator[dict]:
    for row, values, result in store.results(job.id):
        if result is not None and "skipped" in result:
            yield {"source_row": row, "reason": result["skipped"], "text": _shown(job, values)}


def _shown(job: Job, values: dict) -> str:
    return str(values.get(job.spec.text_col) or "")[:200]
