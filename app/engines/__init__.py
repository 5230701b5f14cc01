"""Engines behind one small protocol; `load_engine` loads one of them by name."""

from __future__ import annotations

import functools
from collections.abc import Callable

from app.engines.base import Engine
from app.settings import Settings

__all__ = ["Engine", "engine_loaders", "engines_to_load", "load_engine"]


def engine_loaders(settings: Settings) -> dict[str, Callable[[], Engine]]:
    """What `Service.load` takes: each engine of `settings` to load, in order of preference, with its loader."""
    return {name: functools.partial(load_engine, settings, name) for name in engines_to_load(settings)}


def engines_to_load(settings: Settings) -> tuple[str, ...]:
    """The engines to load, in order of preference: the first that loads serves by default.

    auto: on CPU the CTranslate2 model when `python -m bundle.convert --ct2` made one, else the
    transformers engine; the lexical engine besides, for a machine without weights.
    """
    if settings.engine != "auto":
        return (settings.engine,)
    if (settings.ct2_dir / "model.bin").is_file() and not _cuda_wanted(settings.effective_device):
        return ("mt5-ct2", "lexical")
    return ("mt5", "lexical")


def _cuda_wanted(device: str) -> bool:
    if device != "auto":
        return device.startswith("cuda")
    try:  # CTranslate2 answers without importing torch
        import ctranslate2
    except ImportError:
        return False
    return ctranslate2.get_cuda_device_count() > 0


def load_engine(settings: Settings, name: str) -> Engine:
    """Load engine `name`; raises ModelUnavailable with the reason when it cannot serve."""
    # Each engine's heavy imports (torch, jieba) are paid only when that engine is wanted.
    if name == "mt5":
        from app.engines.hf import HFEngine

        return HFEngine(settings.model_dir, device=settings.effective_device, dtype=settings.dtype,
                        max_input_tokens=settings.max_input_tokens, decoder=settings.decoder)
    if name == "mt5-ct2":
        from app.engines.ct2 import CT2Engine

        device = "cuda" if _cuda_wanted(settings.effective_device) else "cpu"
        return CT2Engine(settings.ct2_dir, device=device, max_input_tokens=settings.max_input_tokens)
    if name == "lexical":
        from app.engines.lexical import LexicalEngine
        from app.engines.lexicon import LexiconError
        from app.errors import ModelUnavailable

        try:
            return LexicalEngine.from_settings(settings)
        except LexiconError as exc:
            raise ModelUnavailable(f"同义词词表无法加载：{exc}") from exc
    raise ValueError(f"unknown engine {name!r}")
