"""The engine protocol: every engine answers `generate` and `score` on whole batches."""

from __future__ import annotations

from typing import Protocol

from app.params import GenerationParams


class Engine(Protocol):
    name: str
    can_score: bool
    wants_raw_text: bool  # True: gets the texts themselves, not prompts built from templates
    batch_size: int  # prompts per call that keep it efficient, unless --max-batch-size says otherwise
    # A model engine also counts the tokens it has generated, `generated_tokens: int`, for the metrics.

    def info(self) -> dict:
        """Model path, device, dtype and load time, for /readyz and the page banner."""

    def generate(self, prompts: list[str], params: GenerationParams) -> list[list[str]]:
        """Return, per prompt and in order, up to `num_return_sequences` decoded outputs."""

    def score(self, prompt: str, candidates: list[str]) -> list[float]:
        """Return the log-probability of each candidate as the output for `prompt`."""

    def score_batch(self, items: list[tuple[str, list[str]]]) -> list[list[float]]:
        """`score` for many (prompt, candidates) pairs at once, in order: what the service calls."""
