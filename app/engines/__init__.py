"""Engines behind one small protocol; `load_engine` picks and loads the one the settings ask for."""

from __future__ import annotations

from app.engines.base import Engine
from app.settings import Settings

__all__ = ["Engine", "load_engine"]


def load_engine(settings: Settings) -> Engine:
    """Load the mT5 engine from `settings.model_dir`; raises ModelUnavailable with the reason."""
    from app.engines.hf import HFEngine  # torch is imported only when an mT5 engine is wanted

    return HFEngine(
        settings.model_dir,
        device=settings.effective_device,
        dtype=settings.dtype,
        max_input_tokens=settings.max_input_tokens,
    )
