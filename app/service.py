"""The one request path: validation against limits, batching, post-processing, timing, logging."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.batcher import Batcher, Ticket
from app.engines import Engine
from app.errors import (
    BatchTooLarge,
    DppError,
    EngineContractError,
    EngineUnavailable,
    InvalidParameter,
    LabelsInvalid,
    ModelUnavailable,
    NeedsMT5,
    NotReady,
    TextEmpty,
    TextTooLong,
)
from app.params import SEED_RANGE, GenerationParams
from app.settings import ENGINES, Settings
from app.tasks import Task, Templates

log = logging.getLogger(__name__)

MODES = ("constrained", "generate")
LABEL_SEPARATORS = re.compile(r"[,，、]")
# multi_label asks about each label on its own, against a catch-all partner label.
PARTNER_LABELS = ("其他", "无关")
# Generate mode: room for a label (or several, with multi_label) and its end token.
CLASSIFY_GENERATE_TOKENS = 64


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


@dataclass(frozen=True)
class Classification:
    label: str | None  # constrained: always one of the labels; generate: the matched label or None
    scores: dict[str, float] | None  # constrained only, in the order the labels were given
    raw_output: str | None  # generate only
    in_labels: bool
    labels: list[str] | None = None  # multi_label only: every label that passed, most probable first

    def as_dict(self) -> dict:
        shown = {"label": self.label, "scores": self.scores, "raw_output": self.raw_output,
                 "in_labels": self.in_labels}
        if self.labels is not None:
            shown["labels"] = self.labels
        return shown


@dataclass(frozen=True)
class ClassifyResult:
    texts: list[str]
    labels: list[str]
    items: list[Classification]
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


def softmax(values: list[float]) -> list[float]:
    """Probabilities from log-probabilities, computed in float64 so they sum to 1."""
    top = max(values)
    weights = [math.exp(value - top) for value in values]
    total = math.fsum(weights)
    return [weight / total for weight in weights]


def _label_key(text: str) -> str:
    return "".join(text.split()).strip("。.！!；;").casefold()


def match_labels(raw: str, labels: list[str], multi_label: bool) -> tuple[list[str], bool]:
    """The labels a free-generated answer names, and whether it names nothing else."""
    keys = {_label_key(label): label for label in labels}
    parts = LABEL_SEPARATORS.split(raw) if multi_label else [raw]
    found = [keys.get(_label_key(part)) for part in parts]
    hits = list(dict.fromkeys(label for label in found if label is not None))
    return hits, all(label is not None for label in found)


def _check_encodable(text: str, name: str, error: type[DppError]) -> None:
    """Refuse a lone surrogate (JSON allows "\\ud800" with no pair, UTF-8 and the tokenizer do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{name} 第 {exc.start + 1} 个字符 U+{ord(text[exc.start]):04X} 是不成对的代理码位，"
                    "不是有效的 Unicode 字符（请检查 JSON 里的 \\u 转义）", field=name) from None


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
        # One worker per engine makes every call to it, one at a time (mT5 sampling seeds torch's
        # global generator, and a CPU has no spare cores for a second call), and joins concurrent
        # requests into shared calls. Engines do not wait for each other.
        self._batchers: dict[str, Batcher] = {}

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
        settings = self.settings
        self._batchers = {
            name: Batcher(engine, max_items=self._batch_size(engine), max_wait_s=settings.batch_wait_ms / 1000,
                          max_queue=settings.max_queue, coalesce=not settings.no_coalescing)
            for name, engine in engines.items()
        }
        self._engines, self._unavailable = engines, unavailable
        if not engines:
            self._readiness = Readiness(False, "unavailable", "；".join(unavailable.values()))
            return
        self._readiness = Readiness(True, "ready")

    def engine_names(self) -> list[str]:
        """Loaded engines, the default first."""
        return list(self._engines)

    def readiness(self) -> Readiness:
        if not self._readiness.ready:
            return self._readiness
        # The default engine's details are read at each call: what changes while it serves (GPU memory,
        # the decoder it fell back to) must show.
        default = next(iter(self._engines.values()))
        info = {**default.info(), "engines": list(self._engines)}
        if self._unavailable:
            info["unavailable"] = self._unavailable
        return Readiness(True, "ready", None, info)

    def check_texts(self, texts: list[str], field_name: str) -> list[str]:
        """Refuse an empty or oversized batch and empty or over-long texts; return them stripped."""
        limit = self.settings.max_batch_texts
        if not texts:
            raise InvalidParameter(f"{field_name} 至少需要一条文本", field=field_name)
        if len(texts) > limit:
            raise BatchTooLarge(f"一次最多 {limit} 条文本（收到 {len(texts)} 条）", field=field_name)
        return [self.check_text(text, field_name if field_name == "text" else f"{field_name}[{index}]")
                for index, text in enumerate(texts)]

    def check_text(self, text: str, name: str) -> str:
        clean = text.strip()
        _check_encodable(clean, name, InvalidParameter)
        if not clean:
            raise TextEmpty(f"{name} 为空或只有空白", field=name)
        if len(clean) > self.settings.max_text_chars:
            raise TextTooLong(f"{name} 共 {len(clean)} 字，超过上限 {self.settings.max_text_chars} 字", field=name)
        return clean

    def check_labels(self, raw: str | list[str]) -> list[str]:
        """Labels from a list, or from one string split on , ， 、: trimmed, deduplicated, checked."""
        from_string = isinstance(raw, str)
        if not from_string and not (isinstance(raw, list) and all(isinstance(label, str) for label in raw)):
            raise LabelsInvalid("labels 应为标签列表，或用逗号、顿号分隔的一个字符串", field="labels")
        if from_string and not raw.strip():
            raise LabelsInvalid("labels 为空：至少需要 2 个标签", field="labels")
        labels: list[str] = []
        for index, piece in enumerate(LABEL_SEPARATORS.split(raw) if from_string else raw):
            name, label = ("labels" if from_string else f"labels[{index}]"), piece.strip()
            where = f"第 {index + 1} 个标签"
            if not label:
                raise LabelsInvalid(f"{where}为空", field=name)
            _check_encodable(label, name, LabelsInvalid)
            if not from_string and LABEL_SEPARATORS.search(label):
                raise LabelsInvalid(f"{where}“{label[:30]}”含有逗号或顿号：每个标签请单独作为一项", field=name)
            if "\n" in label or "\r" in label:
                raise LabelsInvalid(f"{where}含有换行", field=name)
            if len(label) > self.settings.max_label_chars:
                raise LabelsInvalid(f"{where}共 {len(label)} 字，超过上限 {self.settings.max_label_chars} 字",
                                    field=name)
            if label not in labels:
                labels.append(label)
        if not 2 <= len(labels) <= self.settings.max_labels:
            raise LabelsInvalid(f"需要 2 到 {self.settings.max_labels} 个不同的标签（收到 {len(labels)} 个）",
                                field="labels")
        return labels

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

    @staticmethod
    def _require_prompts(engine: Engine, what: str) -> None:
        if not engine.can_score or engine.wants_raw_text:
            raise NeedsMT5(f"{what}需要 mT5 模型权重；当前引擎 {engine.name} 只能做同义词替换"
                           "（见 README「安装模型权重」）")

    def _ticket(self, started: float, cancelled: threading.Event | None) -> Ticket:
        return Ticket(started + self.settings.request_timeout_s, cancelled or threading.Event())

    def augment(self, texts: list[str], params: GenerationParams, *, engine: str | None = None,
                field_name: str = "texts", cancelled: threading.Event | None = None) -> AugmentResult:
        """Return up to `num_return_sequences` distinct variants per text, in input order.

        `cancelled`, once set (the client hung up), ends the request at its next engine call."""
        started = time.monotonic()
        ticket = self._ticket(started, cancelled)
        clean = self.check_texts(texts, field_name)
        chosen = self._ready_engine(engine)
        if chosen.wants_raw_text:
            prompts = clean
        else:
            prompts = [self._templates.render("augment", text=text) for text in clean]
        # A copy of the input is no variant.
        seen = [{_same_text_key(text)} for text in clean]
        variants = self._distinct_outputs(chosen, prompts, seen, params, ticket)
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("augment engine=%s items=%d variants=%d ms=%.0f params=%s",
                 chosen.name, len(texts), sum(map(len, variants)), elapsed_ms, params.as_log())
        log.debug("augment texts=%s variants=%s", clean, variants)
        return AugmentResult(list(texts), variants, chosen.name, elapsed_ms)

    def classify(self, texts: list[str], labels: str | list[str], *, mode: str = "constrained",
                 multi_label: bool = False, threshold: float | None = None, engine: str | None = None,
                 field_name: str = "texts", cancelled: threading.Event | None = None) -> ClassifyResult:
        """Classify each text into the candidate labels, in input order.

        constrained: every label's whole token sequence is scored under the classification prompt
        and the probabilities are a softmax over those sequence log-probabilities (no length
        normalisation), so the answer is always one of the labels. With multi_label, each label
        is instead scored on its own against a catch-all partner label, and every label whose own
        probability reaches the threshold is returned. generate: the model's free greedy answer.
        """
        started = time.monotonic()
        ticket = self._ticket(started, cancelled)
        if mode not in MODES:
            raise InvalidParameter(f"mode 只能是 constrained 或 generate（收到 {str(mode)[:40]!r}）", field="mode")
        if threshold is None:
            threshold = self.settings.multi_label_threshold
        elif isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise InvalidParameter(f"threshold 必须是 0 到 1 之间的数（收到 {threshold!r}）", field="threshold")
        clean = self.check_texts(texts, field_name)
        candidates = self.check_labels(labels)
        chosen = self._ready_engine(engine)
        self._require_prompts(chosen, "零样本分类")
        joined = ",".join(candidates)
        prompts = [self._templates.render("classification", labels=joined, text=text) for text in clean]
        if mode == "generate":
            items = self._classify_by_generation(chosen, prompts, candidates, multi_label, ticket)
        elif multi_label:
            items = self._classify_each_label(chosen, clean, candidates, threshold, ticket)
        else:
            items = [Classification(max(scores, key=scores.__getitem__), scores, None, True)
                     for scores in self._scores(chosen, [(prompt, candidates) for prompt in prompts], ticket)]
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("classify engine=%s mode=%s multi_label=%s items=%d labels=%d ms=%.0f",
                 chosen.name, mode, multi_label, len(clean), len(candidates), elapsed_ms)
        log.debug("classify texts=%s labels=%s answers=%s", clean, candidates, [item.label for item in items])
        return ClassifyResult(list(texts), candidates, items, chosen.name, elapsed_ms)

    def _scores(self, engine: Engine, items: list[tuple[str, list[str]]], ticket: Ticket) -> list[dict[str, float]]:
        """Per (prompt, labels) item, the labels' probabilities: a softmax over their log-probabilities.
        Engine calls take up to the batch size's prompts each, so that other requests get turns."""
        size = self._batch_size(engine)
        batcher = self._batchers[engine.name]
        probabilities = []
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            logprobs = batcher.call(lambda e, chunk=chunk: e.score_batch(chunk), ticket)
            expected, got = sum(len(labels) for _, labels in chunk), sum(map(len, logprobs))
            if len(logprobs) != len(chunk) or got != expected:
                raise EngineContractError(engine.name, expected, got)
            probabilities.extend(dict(zip(labels, softmax(values))) for (_, labels), values in zip(chunk, logprobs))
        return probabilities

    def _classify_each_label(self, engine: Engine, texts: list[str], labels: list[str], threshold: float,
                             ticket: Ticket) -> list[Classification]:
        """multi_label: each label on its own against a catch-all partner, all pairs in shared engine calls."""
        items = []
        for text in texts:
            for label in labels:
                partner = next(p for p in PARTNER_LABELS if p != label)
                prompt = self._templates.render("classification", labels=f"{label},{partner}", text=text)
                items.append((prompt, [label, partner]))
        scores = iter(self._scores(engine, items, ticket))
        classifications = []
        for _ in texts:
            own = {label: next(scores)[label] for label in labels}
            passed = sorted((label for label in labels if own[label] >= threshold), key=own.__getitem__, reverse=True)
            classifications.append(Classification(max(own, key=own.__getitem__), own, None, True, passed))
        return classifications

    def _classify_by_generation(self, engine: Engine, prompts: list[str], labels: list[str], multi_label: bool,
                                ticket: Ticket) -> list[Classification]:
        greedy = GenerationParams(do_sample=False, num_return_sequences=1, max_length=CLASSIFY_GENERATE_TOKENS)
        items = []
        for outputs in self._generate(engine, prompts, greedy, ticket):
            raw = _clean(outputs[0]) if outputs else ""
            hits, only_labels = match_labels(raw, labels, multi_label)
            label = hits[0] if hits else None
            items.append(Classification(label, None, raw, bool(hits) and only_labels,
                                        hits if multi_label else None))
        return items

    def tasks(self) -> list[Task]:
        """The tasks /generate serves."""
        return self._templates.generation_tasks()

    def run_task(self, task: str, fields: dict[str, object], params: GenerationParams, *,
                 engine: str | None = None, cancelled: threading.Event | None = None) -> TaskResult:
        """Build the task's prompt from its fields and answer it: scored tasks pick one of their
        labels, the others return up to `num_return_sequences` distinct generated outputs."""
        started = time.monotonic()
        ticket = self._ticket(started, cancelled)
        spec = self._task(task)
        values = self._task_fields(spec, fields)
        chosen = self._ready_engine(engine)
        self._require_prompts(chosen, f"任务“{spec.title}”")
        prompt = self._templates.render(spec.name, **values)
        scores = None
        if spec.scored:
            [scores] = self._scores(chosen, [(prompt, list(spec.labels))], ticket)
            outputs = [max(scores, key=scores.__getitem__)]
        else:
            outputs = self._distinct_outputs(chosen, [prompt], [set()], params, ticket)[0]
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("generate task=%s engine=%s outputs=%d ms=%.0f params=%s",
                 spec.name, chosen.name, len(outputs), elapsed_ms, params.as_log())
        log.debug("generate task=%s fields=%s outputs=%s", spec.name, values, outputs)
        return TaskResult(spec.name, prompt, outputs, scores, chosen.name, elapsed_ms)

    def _task(self, name: object) -> Task:
        served = {task.name: task for task in self.tasks()}
        if name not in served:
            raise InvalidParameter(f"没有名为 {str(name)[:40]!r} 的任务；可选：{', '.join(served)}", field="task")
        return served[name]

    def _task_fields(self, spec: Task, fields: dict[str, object]) -> dict[str, str]:
        for name in fields:
            if name not in spec.fields:
                raise InvalidParameter(f"任务 {spec.name} 没有字段 {name}（需要：{', '.join(spec.fields)}）",
                                       field=name)
        values = {}
        for name in spec.fields:
            value = fields.get(name)
            if value is None:
                raise InvalidParameter(f"任务 {spec.name} 缺少字段 {name}", field=name)
            if not isinstance(value, str):
                raise InvalidParameter(f"{name} 应为字符串（收到 {repr(value)[:80]}）", field=name)
            values[name] = self.check_text(value, name)
        return values

    def _distinct_outputs(self, engine: Engine, prompts: list[str], seen: list[set[str]],
                          params: GenerationParams, ticket: Ticket) -> list[list[str]]:
        """Sample, drop empty outputs, repeats and those in `seen`, and sample again if short."""
        want = params.num_return_sequences
        outputs: list[list[str]] = [[] for _ in prompts]
        seen = [set(keys) for keys in seen]
        pending = list(range(len(prompts)))
        round_params = params
        for round_index in range(self.settings.resample_rounds + 1):
            answers = self._generate(engine, [prompts[i] for i in pending], round_params, ticket)
            for i, candidates in zip(pending, answers):
                for candidate in map(_clean, candidates):
                    key = _same_text_key(candidate)
                    if candidate and key not in seen[i] and len(outputs[i]) < want:
                        seen[i].add(key)
                        outputs[i].append(candidate)
            pending = [i for i in pending if len(outputs[i]) < want]
            if not pending or not params.do_sample:
                break
            # A seeded request stays reproducible: each extra round uses the next seed.
            next_seed = None if params.seed is None else (params.seed + round_index + 1) % (SEED_RANGE[1] + 1)
            round_params = params.with_changes(
                num_return_sequences=max(want - len(outputs[i]) for i in pending), seed=next_seed
            )
        return outputs

    def _batch_size(self, engine: Engine) -> int:
        return self.settings.max_batch_size or engine.batch_size

    def _generate(self, engine: Engine, prompts: list[str], params: GenerationParams,
                  ticket: Ticket) -> list[list[str]]:
        size = self._batch_size(engine)
        batcher = self._batchers[engine.name]
        outputs: list[list[str]] = []
        for start in range(0, len(prompts), size):
            outputs.extend(batcher.generate(prompts[start:start + size], params, ticket))
        return outputs
