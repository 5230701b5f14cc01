"""The one request path: validation against limits, batching, post-processing, timing, logging."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.engines import Engine
from app.errors import (
    BatchTooLarge,
    EngineContractError,
    EngineUnavailable,
    InvalidParameter,
    ModelUnavailable,
    NotReady,
    RequestTimeout,
    TextEmpty,
    TextTooLong,
)
from app.params import SEED_RANGE, GenerationParams
from app.settings import ENGINES, Settings
from app.tasks import Templates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    status: str  # "ready", "loading" or "unavailable"
    reason: str | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AugmentResult:
    originals: list[str]
    variants: list[list[str]]
    engine: str
    elapsed_ms: float


def _clean(text: str) -> str:
    return " ".join(text.split())


def _same_text_key(text: str) -> str:
    return "".join(text.split())


class Service:
    """Facade over the engine: the API, the UI and the CLI call only this."""

    def __init__(self, settings: Settings, templates: Templates) -> None:
        self.settings = settings
        self._templates = templates
        self._engines: dict[str, Engine] = {}
        self._unavailable: dict[str, str] = {}
        self._readiness = Readiness(False, "loading", "模型加载中，请稍候")
        # One call at a time per engine: mT5 sampling seeds torch's global generator, and a CPU has
        # no spare cores for a second call. Engines do not wait for each other. Batching across
        # requests comes with the dynamic batcher.
        self._engine_locks: dict[str, threading.Lock] = {}

    def load(self, loaders: dict[str, Callable[[], Engine]]) -> None:
        """Load engines in order of preference; the first that loads serves by default.

        One that fails leaves its reason for `readiness`; the process stays up either way.
        """
        engines: dict[str, Engine] = {}
        unavailable: dict[str, str] = {}
        for name, loader in loaders.items():
            try:
                engines[name] = loader()
            except ModelUnavailable as exc:
                log.error("engine %s not loaded (%s): %s", name, type(exc).__name__, exc.message)
                unavailable[name] = exc.message
            except Exception as exc:  # noqa: BLE001 - any load failure must leave a serving process
                log.exception("engine %s failed to load", name)
                unavailable[name] = f"加载失败：{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        self._engine_locks = {name: threading.Lock() for name in engines}
        self._engines, self._unavailable = engines, unavailable
        if not engines:
            self._readiness = Readiness(False, "unavailable", "；".join(unavailable.values()))
            return
        default = next(iter(engines.values()))
        info = {**default.info(), "engines": list(engines)}
        if unavailable:
            info["unavailable"] = unavailable
        self._readiness = Readiness(True, "ready", None, info)

    def engine_names(self) -> list[str]:
        """Loaded engines, the default first."""
        return list(self._engines)

    def readiness(self) -> Readiness:
        return self._readiness

    def check_texts(self, texts: list[str], field_name: str) -> list[str]:
        """Refuse an empty or oversized batch and empty or over-long texts; return them stripped."""
        limit = self.settings.max_batch_texts
        if not texts:
            raise InvalidParameter(f"{field_name} 至少需要一条文本", field=field_name)
        if len(texts) > limit:
            raise BatchTooLarge(f"一次最多 {limit} 条文本（收到 {len(texts)} 条）", field=field_name)
        stripped = []
        for index, text in enumerate(texts):
            name = field_name if field_name == "text" else f"{field_name}[{index}]"
            clean = text.strip()
            if not clean:
                raise TextEmpty(f"{name} 为空或只有空白", field=name)
            if len(clean) > self.settings.max_text_chars:
                raise TextTooLong(
                    f"{name} 共 {len(clean)} 字，超过上限 {self.settings.max_text_chars} 字", field=name
                )
            stripped.append(clean)
        return stripped

    def _ready_engine(self, requested: str | None) -> Engine:
        if requested is not None and requested not in ENGINES:
            raise EngineUnavailable(f"没有名为 {requested!r} 的引擎；可选：{', '.join(ENGINES)}", field="engine")
        if self._readiness.status == "loading" or (requested is None and not self._engines):
            raise NotReady(self._readiness.reason or "模型未就绪")
        if requested is None:
            return next(iter(self._engines.values()))
        if requested not in self._engines:
            why = self._unavailable.get(requested, "未按设置加载（见 --engine）")
            raise EngineUnavailable(f"引擎 {requested} 未加载：{why}", field="engine")
        return self._engines[requested]

    def augment(self, texts: list[str], params: GenerationParams, *, engine: str | None = None,
                field_name: str = "texts") -> AugmentResult:
        """Return up to `num_return_sequences` distinct variants per text, in input order."""
        started = time.monotonic()
        clean = self.check_texts(texts, field_name)
        chosen = self._ready_engine(engine)
        if chosen.wants_raw_text:
            prompts = clean
        else:
            prompts = [self._templates.render("augment", text=text) for text in clean]
        variants = self._distinct_variants(chosen, clean, prompts, params, started)
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("augment engine=%s items=%d variants=%d ms=%.0f params=%s",
                 chosen.name, len(texts), sum(map(len, variants)), elapsed_ms, params.as_log())
        log.debug("augment texts=%s variants=%s", clean, variants)
        return AugmentResult(list(texts), variants, chosen.name, elapsed_ms)

    def _distinct_variants(self, engine: Engine, originals: list[str], prompts: list[str],
                           params: GenerationParams, started: float) -> list[list[str]]:
        """Sample, drop empty outputs, repeats and copies of the input, and sample again if short."""
        want = params.num_return_sequences
        variants: list[list[str]] = [[] for _ in prompts]
        seen = [{_same_text_key(text)} for text in originals]
        pending = list(range(len(prompts)))
        round_params = params
        for round_index in range(self.settings.resample_rounds + 1):
            outputs = self._generate(engine, [prompts[i] for i in pending], round_params, started)
            for i, candidates in zip(pending, outputs):
                for candidate in map(_clean, candidates):
                    key = _same_text_key(candidate)
                    if candidate and key not in seen[i] and len(variants[i]) < want:
                        seen[i].add(key)
                        variants[i].append(candidate)
            pending = [i for i in pending if len(variants[i]) < want]
            if not pending or not params.do_sample:
                break
            # A seeded request stays reproducible: each extra round uses the next seed.
            next_seed = None if params.seed is None else (params.seed + round_index + 1) % (SEED_RANGE[1] + 1)
            round_params = params.with_changes(
                num_return_sequences=max(want - len(variants[i]) for i in pending), seed=next_seed
            )
        return variants

    def _generate(self, engine: Engine, prompts: list[str], params: GenerationParams,
                  started: float) -> list[list[str]]:
        size = self.settings.max_batch_size
        lock = self._engine_locks[engine.name]
        outputs: list[list[str]] = []
        for start in range(0, len(prompts), size):
            chunk = prompts[start:start + size]
            wait = started + self.settings.request_timeout_s - time.monotonic()
            if wait <= 0 or not lock.acquire(timeout=wait):
                raise RequestTimeout(f"等待模型超过 {self.settings.request_timeout_s:.0f} 秒，请稍后重试")
            try:
                answer = engine.generate(chunk, params)
            finally:
                lock.release()
            if len(answer) != len(chunk):
                raise EngineContractError(engine.name, len(chunk), len(answer))
            outputs.extend(answer)
        return outputs
