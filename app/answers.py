"""What the service answers: readiness and the results of its requests, as every surface reads them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from app import classify as zero_shot
from app import gate
from app.engines import Engine

# An absolute path in a message, cut to its last part where anyone may read it (the page, /readyz).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s/'\"：，。；（）()]+/)*([^\s/'\"：，。；（）()]*)")


def without_paths(text: str) -> str:
    """`text` with every absolute path cut to its last part: the server's layout is the operator's."""
    return _ABSOLUTE_PATH.sub(lambda match: match[1] or "/", text)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    status: str  # "ready", "loading", "unavailable" or "draining"
    reason: str | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AugmentResult:
    originals: list[str]
    outcomes: list[gate.Outcome]  # per text: the variants kept (with their figures) and those dropped
    engine: str
    elapsed_ms: float

    @property
    def variants(self) -> list[list[str]]:
        return [outcome.texts for outcome in self.outcomes]

    def dropped(self) -> dict[str, int]:
        """Variants the gate dropped over all texts, by reason."""
        return {reason: sum(outcome.dropped[reason] for outcome in self.outcomes) for reason in gate.REASONS}


@dataclass(frozen=True)
class LabelCheck:
    """The gate's label check of one request: each text's label (None: not checked) among `labels`."""

    labels: list[str]
    of_text: list[str | None]
    scorer: Engine


@dataclass(frozen=True)
class ClassifyResult:
    texts: list[str]
    labels: list[str]
    items: list[zero_shot.Classification]
    engine: str
    elapsed_ms: float


@dataclass(frozen=True)
class TaskResult:
    task: str
    prompt: str
    outputs: list[str]
    scores: dict[str, float] | None  # scored tasks only
    engine: str
    elapsed_ms: float
