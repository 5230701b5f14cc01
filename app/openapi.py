"""/openapi.json that tells the truth: every limit the service enforces, every status a route answers.

The request schemas are built from the settings, the served tasks and the loaded engines, so that a
request the schema allows is one the server accepts, and one it forbids is refused with a 4xx. The one
rule JSON Schema cannot state, the work budget (texts x variants x max_length, --max-request-tokens), is
written in the descriptions; a server whose budget covers its largest request has none left.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.auth import OPEN_PATHS
from app.checks import SPACE, label_pattern, labels_string_pattern
from app.gate import GATE_FIELDS, REASONS, SHORT_REASONS
from app.jobs.export import MEDIA_TYPES, OUTPUT_FORMATS
from app.jobs.spec import KINDS, LABEL_CHECKS, STATES
from app.params import (
    MAX_LENGTH_RANGE,
    NUM_RETURN_SEQUENCES_RANGE,
    SEED_RANGE,
    TEMPERATURE_RANGE,
    TOP_K_RANGE,
    TOP_P_RANGE,
)
from app.service import Service
from app.settings import Settings

TEXT_PATTERN = f"[^{SPACE}]"  # not only whitespace (what str.strip() removes)
_STRING = {"type": "string"}
_NUMBER = {"type": "number"}
_STRINGS = {"type": "array", "items": _STRING}
_NULLABLE_STRING = {"type": ["string", "null"]}
_SCORES = {"type": ["object", "null"], "additionalProperties": _NUMBER}
_NULL = {"type": "null"}


def _present(name: str) -> dict:
    """A JSON Schema condition: `name` is sent and is not null."""
    return {"required": [name], "properties": {name: {"not": _NULL}}}

ERROR_CODES = {
    400: "malformed_json: the body is not a JSON object",
    413: "body_too_large: the body is over --max-body-bytes",
    422: "a field is invalid: invalid_parameter, text_empty, text_too_long, batch_too_large, labels_invalid, "
         "work_too_large, engine_unavailable",
    500: "internal: a fault of the server, never of the request (the log has it under the request id)",
    503: "not_ready, model_unavailable, needs_mt5, overloaded or draining (the last two with Retry-After)",
    504: "timeout: no answer within --request-timeout-s of the request's arrival",
}
ERROR_BODY = {
    "type": "object",
    "required": ["error", "request_id"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {"code": _STRING, "message": _STRING, "field": _NULLABLE_STRING},
        },
        "request_id": _STRING,
    },
}
REQUEST_ID_HEADER = {"X-Request-ID": {"description": "the request id, as in the log", "required": True,
                                      "schema": _STRING}}
RETRY_AFTER_HEADER = {"Retry-After": {"description": "seconds to wait before trying again (overloaded, draining)",
                                      "required": False, "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
_SERVED_BY = {"engine": _STRING, "request_id": _STRING, "elapsed_ms": _NUMBER}
_CLASSIFICATION = {
    "label": _NULLABLE_STRING, "scores": _SCORES, "raw_output": _NULLABLE_STRING, "in_labels": {"type": "boolean"},
    "labels": {**_STRINGS, "description": "multi_label only: the labels at or above the threshold"},
}


def _closed(properties: dict, required: list[str] | None = None, **extra) -> dict:
    return {"type": "object", "properties": properties, "required": required if required is not None
            else list(properties), "additionalProperties": False, **extra}


def _answer(properties: dict, optional: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": [n for n in properties if n not in optional]}


def _range(kind: str, bounds: tuple, description: str, nullable: bool = True) -> dict:
    low, high = bounds
    return {"type": [kind, "null"] if nullable else kind, "minimum": low, "maximum": high,
            "description": description}


def _enum(values: list[str], description: str) -> dict:
    return {"enum": [*values, None], "description": description}


NUMBER_FORMS = {"type": ["boolean", "null"],
                "description": "an amount may change how it is written, never its value (三天 <-> 3天, 百分之二十 <-> 20%): "
                               "the lexical engine proposes it, and the gate accepts either form (default false)"}


def _generation_fields(engines: list[str]) -> dict:
    return {
        "num_return_sequences": _range("integer", NUM_RETURN_SEQUENCES_RANGE, "distinct outputs wanted (default 3)"),
        "max_length": _range("integer", MAX_LENGTH_RANGE, "most new tokens per output (default 128)"),
        "temperature": _range("number", TEMPERATURE_RANGE, "sampling temperature (default 0.8)"),
        "top_k": _range("integer", TOP_K_RANGE, "top-k cut, 0 = off (default 50)"),
        "top_p": _range("number", TOP_P_RANGE, "nucleus cut (default 0.95)"),
        "seed": _range("integer", SEED_RANGE, "makes the answer reproducible"),
        "engine": _enum(engines, "a loaded engine; null: the default one"),
    }


class _Schemas:
    """The request bodies of one server's routes, from its limits."""

    def __init__(self, settings: Settings, service: Service) -> None:
        self.settings, self.service = settings, service

    def text(self, description: str) -> dict:
        return {"type": "string", "minLength": 1, "maxLength": self.settings.max_text_chars,
                "pattern": TEXT_PATTERN, "description": description}

    def texts(self) -> dict:
        return {"type": "array", "items": self.text("one text"), "minItems": 1,
                "maxItems": self.settings.max_batch_texts}

    def labels(self) -> dict:
        settings = self.settings
        listed = {"type": "array", "minItems": 2, "maxItems": settings.max_labels, "uniqueItems": True,
                  "items": {"type": "string", "pattern": label_pattern(settings.max_label_chars),
                            "description": "one label: no commas, 、 or line breaks, no space at either end"}}
        joined = {"type": "string", "pattern": labels_string_pattern(settings.max_label_chars, settings.max_labels),
                  "description": "labels separated by , ， or 、 (trimmed; repeats count once; not all the same)"}
        return {"anyOf": [listed, joined], "description": "candidate labels"}

    def budget(self) -> str:
        return (f"texts x num_return_sequences x max_length (sampled) may be at most "
                f"{self.settings.max_request_tokens} (--max-request-tokens); more is a 422 work_too_large")

    def augment(self, one: bool) -> dict:
        fields = {"text": self.text("the text to paraphrase")} if one else {"texts": self.texts()}
        engines = self.service.engine_names()
        label = {"type": "string", "pattern": label_pattern(self.settings.max_label_chars)}
        own = ({"label": {**label, "type": ["string", "null"], "description": "the text's label, one of labels"}}
               if one else
               {"text_labels": {"type": ["array", "null"], "items": {**label, "type": ["string", "null"]},
                                "description": "each text's label (one of labels, or null: not checked), "
                                               "one per text"}})
        own_name = next(iter(own))
        gate = {
            "quality": _enum(["on", "off"], "the quality gate: on (default) or off (only exact repeats removed)"),
            "min_similarity": _range("number", (0, 1), "below this character similarity a variant is too_far"),
            "max_similarity": _range("number", (0, 1), "above this a variant is too_close; at most max"),
            "min_length_ratio": _range("number", (0, 100), "shorter than this share of the text is too_far"),
            "max_length_ratio": _range("number", (0, 100), "longer than this many times the text is too_far"),
            "min_label_prob": _range("number", (0, 1), "label check: the label's probability a variant needs"),
            "return_rejected": {"type": ["boolean", "null"], "description": "list the dropped variants and why"},
            "number_forms": NUMBER_FORMS,
            "labels": {"anyOf": [*self.labels()["anyOf"], _NULL],
                       "description": f"label check: candidate labels (with {own_name})"},
            **own,
        }
        # The label check needs both, or neither. (Rules JSON Schema cannot state, said in words: the text's
        # label is one of labels, text_labels has one item per text, and each min is at most its max.)
        both = {"allOf": [
            {"if": _present("labels"), "then": _present(own_name)},
            {"if": _present(own_name), "then": _present("labels")},
        ]}
        rules = (f"{self.budget()}; the text's label must be one of labels"
                 f"{'' if one else ', with one text_labels item per text'}; min_similarity <= max_similarity and "
                 "min_length_ratio <= max_length_ratio")
        return _closed({**fields, **_generation_fields(engines), **gate}, required=list(fields), description=rules,
                       **both)

    def classify(self, one: bool) -> dict:
        fields = {"text": self.text("the text to classify")} if one else {"texts": self.texts()}
        options = {
            "labels": self.labels(),
            "mode": {"enum": ["constrained", "generate"], "description": "constrained (default): always one of "
                                                                          "the labels; generate: the free answer"},
            "multi_label": {"type": "boolean", "description": "judge each label on its own"},
            "threshold": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                          "description": "multi_label: probability a label needs (default from settings)"},
            "engine": _enum(self.service.engine_names(scoring=True), "a loaded engine that scores; null: default"),
        }
        return _closed({**fields, **options}, required=[*fields, "labels"])

    def generate(self) -> dict:
        engines = self.service.engine_names(scoring=True)
        variants = []
        for task in self.service.tasks():
            fields = {name: self.text(f"the task's {name}") for name in task.fields}
            variants.append(_closed({"task": {"const": task.name, "description": task.title}, **fields,
                                     **_generation_fields(engines)}, required=["task", *fields]))
        return {"oneOf": variants, "description": f"one of GET /tasks, with its own fields; {self.budget()}"}

    def job_form(self) -> dict:
        """POST /jobs: the file and the options as form fields. An empty field is the same as none, so a field's
        schema states only what the server refuses whatever the rest of the form says; what depends on the file
        or on other fields (text_col must be one of the file's columns, classify needs labels, the work budget)
        is in the descriptions, and answered 422 naming the field."""
        settings = self.settings
        gate = self.augment(True)["properties"]
        fields = {
            "file": {"type": "string", "format": "binary",
                     "description": f"CSV or TSV (UTF-8, UTF-8 with BOM, GBK/GB18030), XLSX or JSONL; at most "
                                    f"{settings.max_file_bytes} bytes (--max-file-bytes) and {settings.max_file_rows} "
                                    "data rows (--max-file-rows)"},
            "kind": {"enum": list(KINDS), "description": "augment (default) or classify"},
            "text_col": {"type": "string", "description": "the column holding each row's text (required)"},
            "label_col": {"type": "string", "description": "the column holding each row's label"},
            "labels": {"type": "string", "description": "labels separated by , ， or 、: classify's candidates "
                                                        "(required there); augment: the label check's set"},
            "label_check": {"enum": list(LABEL_CHECKS), "description": "augment with label_col: auto (default: "
                                                                      "when an mT5 engine is loaded), on or off"},
            "multi_label": {"type": "boolean", "description": "classify: every label at or above threshold"},
            "threshold": {"type": "number", "minimum": 0, "maximum": 1, "description": "classify with multi_label"},
            "include_original": {"type": "boolean", "description": "augment: each row itself as variant 0 "
                                                                   "(default true)"},
            "sheet": {"type": "string", "description": "XLSX: the sheet to read (default the first)"},
            **{name: _not_null(schema) for name, schema in _generation_fields(self.service.engine_names()).items()},
            "number_forms": _not_null(NUMBER_FORMS),
            **{name: _not_null(gate[name]) for name in GATE_FIELDS},
        }
        return {"type": "object", "properties": fields, "required": ["file", "text_col"],
                "additionalProperties": False, "description": self.budget() + " (per row)"}


_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
_DROPPED = _answer({reason: {"type": "integer", "minimum": 0} for reason in REASONS})
_GATED = {
    "variants": {"type": "array", "items": _answer({"text": _STRING, "similarity": _PROBABILITY,
                                                    "label_probability": _PROBABILITY},
                                                   optional=("label_probability",))},
    "requested": {"type": "integer", "minimum": 1, "description": "num_return_sequences: variants asked for"},
    "short_reason": {"enum": [*SHORT_REASONS, None],
                     "description": "why fewer than requested were kept (null when none is missing): the engine "
                                    "had no word it could rewrite, had no more distinct variants, the gate dropped "
                                    "the rest (see dropped), or the engine gave fewer"},
    "dropped": _DROPPED,
    "rejected": {"type": "array", "items": _answer({"text": _STRING, "reason": {"enum": list(REASONS)},
                                                    "similarity": {"type": ["number", "null"]},
                                                    "label_probability": _PROBABILITY},
                                                   optional=("label_probability",)),
                 "description": "return_rejected only"},
    "label_probability": {**_PROBABILITY, "description": "label check only: the text's own label probability"},
}
_GATED_OPTIONAL = ("rejected", "label_probability")

ANSWERS = {
    "/augment": _answer({"original": _STRING, "augmented_texts": _STRINGS, "augmented": _STRINGS, **_GATED,
                         **_SERVED_BY}, optional=_GATED_OPTIONAL),
    "/augment_batch": _answer({
        "results": {"type": "array", "items": _answer({"original": _STRING, "augmented_texts": _STRINGS, **_GATED},
                                                      optional=_GATED_OPTIONAL)},
        "augmented_texts": _STRINGS, "dropped": _DROPPED, **_SERVED_BY}),
    "/classify": _answer({**_CLASSIFICATION, **_SERVED_BY}, optional=("labels",)),
    "/classify_batch": _answer({
        "results": {"type": "array", "items": _answer({"text": _STRING, **_CLASSIFICATION}, optional=("labels",))},
        "labels": _STRINGS, **_SERVED_BY}),
    "/generate": _answer({"task": _STRING, "prompt": _STRING, "outputs": _STRINGS, "scores": _SCORES, **_SERVED_BY}),
    "/tasks": _answer({"tasks": {"type": "array", "items": _answer({
        "name": _STRING, "title": _STRING, "fields": _STRINGS, "scored": {"type": "boolean"},
        "labels": {"type": ["array", "null"], "items": _STRING}, "template": _STRING})}}),
    "/healthz": _answer({"status": {"const": "ok"}}),
    "/readyz": _answer({"status": {"const": "ready"}, "engine": _STRING, "engines": _STRINGS,
                        "queue": _answer({"running": {"type": "integer"}, "waiting": {"type": "integer"},
                                          "max_queue": {"type": "integer"}})}),
}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
JOB = _answer({
    "id": _STRING, "kind": {"enum": list(KINDS)}, "state": {"enum": list(STATES)}, "filename": _STRING,
    "rows_done": _COUNT, "rows_total": _COUNT, "rows_per_second": _NULLABLE_NUMBER, "eta_seconds": _NULLABLE_NUMBER,
    "counts": {"type": "object", "description": "augment: variants, rows_short, rows_skipped, dropped (by reason); "
                                                "classify: labels (rows per label), rows_skipped"},
    "notes": _STRINGS, "error": _NULLABLE_STRING, "created_at": _STRING, "started_at": _NULLABLE_STRING,
    "finished_at": _NULLABLE_STRING, "options": {"type": "object"}, "columns": _STRINGS, "result_columns": _STRINGS})
JOB_ANSWERS = {
    ("/jobs", "post"): ("202", JOB, "the job, queued (Location: /jobs/{id})"),
    ("/jobs", "get"): ("200", _answer({"jobs": {"type": "array", "items": JOB}}), "every job, newest first"),
    ("/jobs/{job_id}", "get"): ("200", JOB, "the job"),
    ("/jobs/{job_id}/cancel", "post"): ("200", JOB, "the job, cancelled (a finished one as it was)"),
    ("/jobs/{job_id}", "delete"): ("200", _answer({"id": _STRING, "deleted": {"const": True}}), "deleted"),
    ("/jobs/{job_id}/report", "get"): ("200", _answer({
        "id": _STRING, "kind": {"enum": list(KINDS)}, "state": {"enum": list(STATES)}, "rows_done": _COUNT,
        "rows_total": _COUNT, "rows_short": {"type": "array", "items": {"type": "object"}},
        "rows_skipped": {"type": "array", "items": {"type": "object"}}, "notes": _STRINGS}), "the report"),
}
JOB_ERRORS = {
    400: "malformed_form: the body is not multipart/form-data",
    404: "not_found: no job has this id",
    413: "body_too_large: the file is over --max-file-bytes",
    422: "the file or a field is invalid: file_invalid, invalid_parameter, labels_invalid, text_too_long, "
         "work_too_large, engine_unavailable (field names which)",
    500: ERROR_CODES[500],
    503: "needs_mt5: classify or the label check asked of the lexical engine alone; store_unavailable: the job "
         "store under --data-dir cannot be read or written (the server's to fix)",
}
NOT_READY = _answer({"status": {"enum": ["loading", "unavailable", "draining"]}, "reason": _NULLABLE_STRING})


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    return {"description": description, "headers": {**REQUEST_ID_HEADER, **(headers or {})},
            "content": {"application/json": {"schema": schema}}}


def _error(status: int, codes: dict[int, str] = ERROR_CODES) -> dict:
    return _json(ERROR_BODY, codes[status], RETRY_AFTER_HEADER if status == 503 else None)


def _not_null(schema: dict) -> dict:
    """A nullable field's schema without null: a form field is a string, sent or not."""
    kind = schema.get("type")
    schema = {**schema, "type": [t for t in kind if t != "null"][0]} if isinstance(kind, list) else dict(schema)
    if "enum" in schema:
        schema["enum"] = [value for value in schema["enum"] if value is not None]
    return schema


def _declare_job_route(path: str, method: str, operation: dict, form: dict) -> None:
    if path == "/jobs" and method == "post":
        operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": form}}}
        errors = (400, 413, 422, 500, 503)
    elif path == "/jobs":
        errors = (500, 503)
    else:
        errors = (404, 422, 500, 503) if path.endswith("/result") else (404, 500, 503)
    if path.endswith("/result"):
        for parameter in operation["parameters"]:
            if parameter["name"] == "format":
                parameter["schema"] = {"enum": list(OUTPUT_FORMATS), "default": "csv"}
        status = "200"
        answer = {"description": "the output, streamed: the rows done so far while the job runs (X-Job-State)",
                  "headers": {**REQUEST_ID_HEADER, "X-Job-State": {"required": True,
                                                                   "schema": {"enum": list(STATES)}}},
                  "content": {MEDIA_TYPES[format].split(";")[0]: {"schema": {"type": "string"}}
                              for format in OUTPUT_FORMATS}}
    else:
        status, schema, description = JOB_ANSWERS[(path, method)]
        answer = _json(schema, description)
    operation["responses"] = {status: answer, **{str(code): _error(code, JOB_ERRORS) for code in errors}}


def _declare(schema: dict, settings: Settings, service: Service) -> None:
    bodies = _Schemas(settings, service)
    requests = {"/augment": bodies.augment(True), "/augment_batch": bodies.augment(False),
                "/classify": bodies.classify(True), "/classify_batch": bodies.classify(False),
                "/generate": bodies.generate()}
    form = bodies.job_form()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/jobs"):
                _declare_job_route(path, method, operation, form)
                continue
            responses = {"200": _json(ANSWERS[path], "the answer")}
            if path in requests:
                operation["requestBody"] = {"required": True,
                                            "content": {"application/json": {"schema": requests[path]}}}
                responses.update({str(status): _error(status) for status in ERROR_CODES})
            elif path == "/readyz":
                responses["503"] = _json(NOT_READY, "not ready: loading, unavailable (reason) or draining")
            operation["responses"] = responses
    schema.get("components", {}).pop("schemas", None)  # the pydantic models' own, replaced above
    _declare_access(schema, settings)


def _declare_access(schema: dict, settings: Settings) -> None:
    """With API keys on: how to send one, and the 401 of every route but the probes; with a rate limit, its 429."""
    keyed = settings.keyed
    if keyed:
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API 密钥>"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    for path, operations in schema["paths"].items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            if keyed:
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                operation["responses"]["401"] = _json(ERROR_BODY, "unauthorized: no API key, or a wrong one")
            if settings.rate_limit:
                operation["responses"]["429"] = _json(ERROR_BODY, "rate_limited: over --rate-limit; Retry-After says "
                                                                  "when to come back", RETRY_AFTER_HEADER)


def install_openapi(app: FastAPI, settings: Settings, service: Service) -> None:
    """Serve the schema built afresh from what is loaded now (engines load after the server starts)."""

    def openapi() -> dict:
        schema = get_openapi(title="dpp", version="1", routes=app.routes,
                             servers=[{"url": settings.root_path}] if settings.root_path else None,
                             description="中文文本增强与零样本分类 REST API；错误统一为 {error: {code, message, field}, request_id}")
        _declare(schema, settings, service)
        return schema

    app.openapi = openapi
