"""The Gradio API's named endpoints (/augment, /augment_report, /augment_batch, /classify) for gradio_client: the REST
contract's parameters and defaults, through the same service and the same admission as every request."""

from __future__ import annotations

import gradio as gr

from app.errors import InvalidParameter
from app.params import DEFAULTS, PUBLIC_FIELDS
from app.gate import GATE_FIELDS, GateParams
from app.service import AugmentResult, Service
from app.ui.controls import ui_params
from app.ui.events import SessionWork, event, in_api_words


def _checked_strings(values: object, field: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidParameter(f"{field} 应为字符串列表（收到 {repr(values)[:80]}）", field=field)
    return values


def _checked_string(value: object, field: str) -> list[str]:
    """One text as the one-item batch the service takes."""
    if not isinstance(value, str):
        raise InvalidParameter(f"{field} 应为字符串（收到 {repr(value)[:80]}）", field=field)
    return [value]


def _quality(service: Service, values: dict) -> GateParams:
    return service.gate_defaults.with_sent(values)


async def _augmented(service: Service, texts: list[str], field_name: str, text_labels: list | None, params: dict,
                     gated: dict) -> AugmentResult:
    engine, labels = gated.pop("engine"), gated.pop("labels")
    return await service.augment(texts, ui_params(**params), engine=engine, field_name=field_name,
                                 quality=_quality(service, gated), labels=labels, text_labels=text_labels)


async def augment(service: Service, text: str, num_return_sequences: int = DEFAULTS.num_return_sequences,
                  max_length: int = DEFAULTS.max_length, temperature: float = DEFAULTS.temperature,
                  top_k: int = DEFAULTS.top_k, top_p: float = DEFAULTS.top_p, seed: int | None = None,
                  engine: str | None = None, quality: str | None = None, min_similarity: float | None = None,
                  max_similarity: float | None = None, min_length_ratio: float | None = None,
                  max_length_ratio: float | None = None, labels: list[str] | str | None = None,
                  label: str | None = None, min_label_prob: float | None = None,
                  number_forms: bool = False) -> list[str]:
    """Return distinct augmented variants of one text, each through the quality gate (see /augment_report
    for the gate's figures)."""
    params, gated = _split(locals())
    result = await _augmented(service, _checked_string(text, "text"), "text", _one_label(label), params, gated)
    return result.variants[0]


async def augment_report(service: Service, text: str, num_return_sequences: int = DEFAULTS.num_return_sequences,
                         max_length: int = DEFAULTS.max_length, temperature: float = DEFAULTS.temperature,
                         top_k: int = DEFAULTS.top_k, top_p: float = DEFAULTS.top_p, seed: int | None = None,
                         engine: str | None = None, quality: str | None = None, min_similarity: float | None = None,
                         max_similarity: float | None = None, min_length_ratio: float | None = None,
                         max_length_ratio: float | None = None, labels: list[str] | str | None = None,
                         label: str | None = None, min_label_prob: float | None = None,
                         return_rejected: bool = False, number_forms: bool = False) -> dict:
    """/augment's variants with the quality gate's figures, as REST's /augment answers them: variants (text,
    similarity, label_probability), dropped (by reason), rejected (with return_rejected)."""
    params, gated = _split(locals())
    result = await _augmented(service, _checked_string(text, "text"), "text", _one_label(label), params, gated)
    outcome = result.outcomes[0]
    report = {"augmented_texts": outcome.texts, **outcome.report(return_rejected), "engine": result.engine}
    return report


async def augment_batch(service: Service, texts: list[str], num_return_sequences: int = DEFAULTS.num_return_sequences,
                        max_length: int = DEFAULTS.max_length, temperature: float = DEFAULTS.temperature,
                        top_k: int = DEFAULTS.top_k, top_p: float = DEFAULTS.top_p, seed: int | None = None,
                        engine: str | None = None, quality: str | None = None, min_similarity: float | None = None,
                        max_similarity: float | None = None, min_length_ratio: float | None = None,
                        max_length_ratio: float | None = None, labels: list[str] | str | None = None,
                        text_labels: list[str | None] | None = None,
                        min_label_prob: float | None = None, number_forms: bool = False) -> list[list[str]]:
    """Return, per text and in input order, its augmented variants, each through the quality gate."""
    params, gated = _split(locals())
    texts = _checked_strings(texts, "texts")
    return (await _augmented(service, texts, "texts", text_labels, params, gated)).variants


def _split(values: dict) -> tuple[dict, dict]:
    """A handler's arguments as generation params and the gate's (with engine and labels)."""
    params = {name: values[name] for name in PUBLIC_FIELDS}
    gated = {name: values.get(name) for name in (*GATE_FIELDS, "engine", "labels")}
    return params, gated


def _one_label(label: object) -> list | None:
    return None if label is None else [label]


async def classify(service: Service, text: str, labels: list[str] | str, mode: str = "constrained",
                   multi_label: bool = False, threshold: float | None = None, engine: str | None = None) -> dict:
    """Classify one text into the candidate labels: label, scores, raw_output, in_labels."""
    texts = _checked_string(text, "text")
    result = await service.classify(texts, labels, mode=mode, multi_label=multi_label, threshold=threshold,
                                    engine=engine, field_name="text")
    return {**result.items[0].as_dict(), "engine": result.engine}


def register(service: Service, sessions: SessionWork) -> None:
    """Named endpoints whose errors name the fields their clients sent."""
    for handler in (augment, augment_report, augment_batch, classify):
        gr.api(event(handler, service, sessions, in_api_words), api_name=handler.__name__)
