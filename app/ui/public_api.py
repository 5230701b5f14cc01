"""The Gradio API's named endpoints (/augment, /augment_batch, /classify) for gradio_client: the REST
contract's parameters and defaults, through the same service and the same admission as every request."""

from __future__ import annotations

import gradio as gr

from app.errors import InvalidParameter
from app.params import DEFAULTS
from app.service import Service
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


async def augment(service: Service, text: str, num_return_sequences: int = DEFAULTS.num_return_sequences,
                  max_length: int = DEFAULTS.max_length, temperature: float = DEFAULTS.temperature,
                  top_k: int = DEFAULTS.top_k, top_p: float = DEFAULTS.top_p, seed: int | None = None,
                  engine: str | None = None) -> list[str]:
    """Return distinct augmented variants of one text."""
    params = ui_params(num_return_sequences, temperature, max_length, top_k, top_p, seed)
    texts = _checked_string(text, "text")
    return (await service.augment(texts, params, engine=engine, field_name="text")).variants[0]


async def augment_batch(service: Service, texts: list[str], num_return_sequences: int = DEFAULTS.num_return_sequences,
                        max_length: int = DEFAULTS.max_length, temperature: float = DEFAULTS.temperature,
                        top_k: int = DEFAULTS.top_k, top_p: float = DEFAULTS.top_p, seed: int | None = None,
                        engine: str | None = None) -> list[list[str]]:
    """Return, per text and in input order, its augmented variants."""
    params = ui_params(num_return_sequences, temperature, max_length, top_k, top_p, seed)
    texts = _checked_strings(texts, "texts")
    return (await service.augment(texts, params, engine=engine, field_name="texts")).variants


async def classify(service: Service, text: str, labels: list[str] | str, mode: str = "constrained",
                   multi_label: bool = False, threshold: float | None = None, engine: str | None = None) -> dict:
    """Classify one text into the candidate labels: label, scores, raw_output, in_labels."""
    texts = _checked_string(text, "text")
    result = await service.classify(texts, labels, mode=mode, multi_label=multi_label, threshold=threshold,
                                    engine=engine, field_name="text")
    return {**result.items[0].as_dict(), "engine": result.engine}


def register(service: Service, sessions: SessionWork) -> None:
    """Named endpoints whose errors name the fields their clients sent."""
    for handler in (augment, augment_batch, classify):
        gr.api(event(handler, service, sessions, in_api_words), api_name=handler.__name__)
