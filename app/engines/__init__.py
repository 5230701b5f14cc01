"""Engines behind one small protocol; `load_engine` loads one of them by name."""

from __future__ import annotations

from app.engines.base import Engine
from app.settings import Settings

__all__ = ["Engine", "load_engine"]


def load_engine(settings: Settings, name: str) -> Engine:
    """Load engine `name`; raises ModelUnavailable with the reason when it cannot serve."""
    # Each engine's heavy imports (torch, jieba) are paid only when that engine is wanted.
    if name == "mt5":
        from app.engines.hf import HFEngine

        return HFEngine(settings.model_dir, device=settings.effective_device, dtype=settings.dtype,
                        max_input_tokens=settings.max_input_tokens)
    if name == "lexical":
        from app.engines.lexical import LexicalEngine
        from app.engines.lexicon import LexiconError
        from app.errors import ModelUnavailable

        try:
            return LexicalEngine(settings.lexicon_file)
        except LexiconError as exc:
            raise ModelUnavailable(f"同义词词表无法加载：{exc}") from exc
    raise ValueError(f"unknown engine {name!r}")
