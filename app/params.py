"""Validated, frozen generation parameters: checked once at the edge, then trusted."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from app.errors import InvalidParameter

NUM_RETURN_SEQUENCES_RANGE = (1, 10)
MAX_LENGTH_RANGE = (8, 512)
TEMPERATURE_RANGE = (0.1, 2.0)
TOP_K_RANGE = (0, 1000)
TOP_P_RANGE = (0.05, 1.0)
SEED_RANGE = (0, 2**32 - 1)


_KIND_NAMES = {int: "整数", (int, float): "数字"}


def _within(name: str, value: object, bounds: tuple, kind: type) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidParameter(f"{name} 必须是{_KIND_NAMES[kind]}（收到 {value!r}）", field=name)
    low, high = bounds
    if not low <= value <= high:
        raise InvalidParameter(f"{name} 必须在 {low} 到 {high} 之间（收到 {value}）", field=name)


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """Sampling parameters of one request; `max_length` counts new tokens."""

    num_return_sequences: int = 3
    max_length: int = 128
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    seed: int | None = None
    do_sample: bool = True
    min_new_tokens: int = 0
    # A number may change how it is written (三天 <-> 3天, 百分之二十 <-> 20%), never its value: the lexical
    # engine proposes such edits, and the gate takes either form of a protected amount as kept.
    number_forms: bool = False

    def __post_init__(self) -> None:
        _within("num_return_sequences", self.num_return_sequences, NUM_RETURN_SEQUENCES_RANGE, int)
        _within("max_length", self.max_length, MAX_LENGTH_RANGE, int)
        _within("temperature", self.temperature, TEMPERATURE_RANGE, (int, float))
        _within("top_k", self.top_k, TOP_K_RANGE, int)
        _within("top_p", self.top_p, TOP_P_RANGE, (int, float))
        if self.seed is not None:
            _within("seed", self.seed, SEED_RANGE, int)
        _within("min_new_tokens", self.min_new_tokens, (0, self.max_length), int)
        for name in ("do_sample", "number_forms"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidParameter(f"{name} 必须是布尔值（true 或 false）", field=name)

    @property
    def tokens_per_prompt(self) -> int:
        """The most tokens one prompt may cost: its outputs times their length."""
        return (self.num_return_sequences if self.do_sample else 1) * self.max_length

    def with_changes(self, **changes: object) -> "GenerationParams":
        return replace(self, **changes)

    def as_log(self) -> dict:
        return asdict(self)


PUBLIC_FIELDS = ("num_return_sequences", "max_length", "temperature", "top_k", "top_p", "seed", "number_forms")
WHOLE_FIELDS = ("num_return_sequences", "max_length", "top_k", "seed")
DEFAULTS = GenerationParams()


def _whole(value: object) -> object:
    """3.0 is the integer 3 (JSON has one number type; sliders send floats); 3.5 stays, to be refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _sent(values: dict) -> dict:
    """The public fields a client sent, integers as integers; None means 'use the default'."""
    return {k: _whole(v) if k in WHOLE_FIELDS else v for k, v in values.items()
            if k in PUBLIC_FIELDS and v is not None}


def params_from(values: dict) -> GenerationParams:
    """Build params from the public fields a client sent."""
    return GenerationParams(**_sent(values))


SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "seed")


def task_params(values: dict) -> GenerationParams:
    """Decoding for the card's prompt tasks: greedy (one output, the same every time) unless the
    client asks for variety with more than one output or any of temperature, top_k, top_p, seed."""
    sent = _sent(values)
    params = GenerationParams(**{"num_return_sequences": 1, **sent})
    if params.num_return_sequences > 1 or any(name in sent for name in SAMPLING_FIELDS):
        return params
    return params.with_changes(do_sample=False)
