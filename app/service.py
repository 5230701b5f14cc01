"""The one request path: checks, admission at the door, batching, post-processing, timing, drain."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from app import classify as zero_shot
from app import gate
from app.answers import AugmentResult, ClassifyResult, LabelCheck, Readiness, TaskResult, without_paths
from app.batcher import Batcher, Ticket
from app.checks import InputChecks
from app.drain import InFlight
from app.engines import Engine
from app.errors import (
    EngineContractError,
    EngineUnavailable,
    InvalidParameter,
    ModelUnavailable,
    NeedsMT5,
    NotReady,
)
from app.params import SEED_RANGE, GenerationParams
from app.settings import ENGINES, Settings
from app.tasks import Task, Templates

if TYPE_CHECKING:
    from app.metrics import Metrics

log = logging.getLogger(__name__)

CLASSIFICATION = "零样本分类"  # what a classification asks of its engine, in its error

# Scoring one (prompt, label) pair is one encoder pass and a label's few decoder steps: on CPU about a third of
# what generating one prompt's 3 variants of 32 tokens costs (bench.jobs), a tenth at the default 128 tokens. A
# scoring call takes this many pairs per batch slot, so that it costs no more than a call of generation.
SCORED_PAIRS_PER_PROMPT = 3


def _follows_prompts(engine: Engine) -> bool:
    """Whether the engine answers prompts and scores labels: classification and the card's tasks need it."""
    return engine.can_score and not engine.wants_raw_text


def _clean(text: str) -> str:
    return " ".join(text.split())


def _cleaned(candidates: list[str]) -> list[str]:
    return [_clean(candidate) for candidate in candidates]


def _by_pairs(items: list[tuple[str, list[str]]], most: int) -> Iterator[list[tuple[str, list[str]]]]:
    """`items` in order, cut into runs of at most `most` (prompt, label) pairs each (at least one item a run)."""
    run: list[tuple[str, list[str]]] = []
    pairs = 0
    for item in items:
        if run and pairs + len(item[1]) > most:
            yield run
            run, pairs = [], 0
        run.append(item)
        pairs += len(item[1])
    if run:
        yield run


class Service:
    """Facade over the engines: the API, the UI and the CLI call only this, from the event loop.

    Each request is admitted once, when it has passed the checks (refused with 503 when its engine's
    queue is full or the server drains), and its timeout counts from `arrived`, when it reached us.
    A request that is cancelled (its client hung up, its tab closed) leaves the queue at once.
    """

    def __init__(self, settings: Settings, templates: Templates, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics  # engine calls and the gate's drops are counted there
        self.checks = InputChecks(settings)
        self.gate_defaults = gate.defaults(settings)
        self._templates = templates
        self._engines: dict[str, Engine] = {}
        self._unavailable: dict[str, str] = {}
        self._readiness = Readiness(False, "loading", "模型加载中，请稍候")
        # One worker per engine makes every call to it, one at a time (mT5 sampling seeds torch's
        # global generator, and a CPU has no spare cores for a second call), and joins concurrent
        # requests into shared calls. Engines do not wait for each other.
        self._batchers: dict[str, Batcher] = {}
        self.in_flight = InFlight()

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
                          max_queue=settings.max_queue, coalesce=not settings.no_coalescing,
                          on_call=self.metrics.engine_call if self.metrics else None)
            for name, engine in engines.items()
        }
        self._engines, self._unavailable = engines, unavailable
        if not engines:
            self._readiness = Readiness(False, "unavailable", "；".join(unavailable.values()))
            return
        self._readiness = Readiness(True, "ready")

    def engine_names(self, scoring: bool = False) -> list[str]:
        """Loaded engines, the default first; with `scoring`, those that follow prompts and score labels."""
        return [name for name, engine in self._engines.items()
                if not scoring or _follows_prompts(engine)]

    def readiness(self) -> Readiness:
        """What /readyz and the page banner say; no absolute server path, as anyone may read it."""
        if self.in_flight.draining:
            return Readiness(False, "draining", "服务正在停止，不再接受新请求")
        if not self._readiness.ready:
            reason = self._readiness.reason and without_paths(self._readiness.reason)
            return Readiness(False, self._readiness.status, reason)
        # The default engine's details are read at each call: what changes while it serves (GPU memory,
        # the decoder it fell back to) must show.
        default = next(iter(self._engines.values()))
        info = {**default.info(), "engines": list(self._engines), "queue": self.queue()}
        for key in ("model", "decoder_fallback"):
            if isinstance(info.get(key), str):
                info[key] = without_paths(info[key])
        if self._unavailable:
            info["unavailable"] = {name: without_paths(why) for name, why in self._unavailable.items()}
        return Readiness(True, "ready", None, info)

    def engines(self) -> dict[str, Engine]:
        """The loaded engines by name, the default first."""
        return dict(self._engines)

    def queue(self) -> dict[str, int]:
        """Admitted requests over all engines: in an engine call now, and waiting; and the bound."""
        loads = [batcher.load() for batcher in self._batchers.values()]
        return {"running": sum(load["running"] for load in loads), "waiting": sum(load["waiting"] for load in loads),
                "max_queue": self.settings.max_queue}

    @contextlib.contextmanager
    def _admitted(self, engine: Engine, arrived: float) -> Iterator[Ticket]:
        """Admit one request for its whole life, or refuse it now: 503 draining or overloaded."""
        with self.in_flight.track(), self._batchers[engine.name].admitted(arrived, self.settings.request_timeout_s) \
                as ticket:
            yield ticket

    # --- engines ----------------------------------------------------------------------------------

    def _ready_engine(self, requested: str | None) -> Engine:
        if requested is not None and requested not in ENGINES:
            raise EngineUnavailable(f"没有名为 {requested!r} 的引擎；可选：{', '.join(ENGINES)}", field="engine")
        if self._readiness.status == "loading" or (requested is None and not self._engines):
            raise NotReady(without_paths(self._readiness.reason or "模型未就绪"))
        if requested is None:
            return next(iter(self._engines.values()))
        if requested not in self._engines:
            why = without_paths(self._unavailable.get(requested, "未按设置加载（见 --engine）"))
            raise EngineUnavailable(f"引擎 {requested} 未加载：{why}", field="engine")
        return self._engines[requested]

    def check_engine(self, requested: str | None, needs_prompts: str | None = None) -> None:
        """Raise now what a request for `requested` would meet: an unknown or unloaded engine (422), the engines
        still loading (NotReady), or, when `needs_prompts` names what is asked, an engine that cannot do it."""
        engine = self._ready_engine(requested)
        if needs_prompts is not None:
            self._require_prompts(engine, needs_prompts)

    @staticmethod
    def _require_prompts(engine: Engine, what: str) -> None:
        if not _follows_prompts(engine):
            raise NeedsMT5(f"{what}需要 mT5 模型权重；当前引擎 {engine.name} 只能做同义词替换"
                           "（见 README「安装模型权重」）")

    def _batch_size(self, engine: Engine) -> int:
        return self.settings.max_batch_size or engine.batch_size

    # --- requests ---------------------------------------------------------------------------------

    async def augment(self, texts: list[str], params: GenerationParams, *, engine: str | None = None,
                      field_name: str = "texts", arrived: float | None = None, quality: gate.GateParams | None = None,
                      labels: str | list[str] | None = None,
                      text_labels: list[str | None] | None = None) -> AugmentResult:
        """Return up to `num_return_sequences` variants per text, in input order, each through the quality
        gate (`quality`, else the settings' thresholds); with `labels` and each text's label in
        `text_labels`, a variant must also keep its text's label."""
        started = time.monotonic() if arrived is None else arrived
        quality = quality or self.gate_defaults
        clean = self.checks.texts(texts, field_name)
        self.checks.work(len(clean), params)
        chosen = self._ready_engine(engine)
        check = self._label_check(labels, text_labels, field_name, len(clean), quality, chosen)
        if chosen.wants_raw_text:
            prompts = clean
        else:
            prompts = [self._templates.render("augment", text=text) for text in clean]
        gates = [gate.TextGate(text, quality, params.number_forms) for text in clean]
        with self._admitted(chosen, started) as ticket:
            await self._gated_outputs(chosen, prompts, gates, params, ticket, check)
        outcomes = [each.outcome for each in gates]
        elapsed_ms = (time.monotonic() - started) * 1000
        result = AugmentResult(list(texts), outcomes, chosen.name, elapsed_ms)
        dropped = result.dropped()
        if self.metrics:
            self.metrics.dropped(dropped)
        log.info("augment engine=%s items=%d variants=%d dropped=%s ms=%.0f params=%s quality=%s",
                 chosen.name, len(texts), sum(map(len, result.variants)),
                 {reason: n for reason, n in dropped.items() if n}, elapsed_ms, params.as_log(), quality)
        log.debug("augment texts=%s variants=%s", clean, result.variants)
        return result

    def _label_check(self, labels: str | list[str] | None, text_labels: list[str | None] | None, field_name: str,
                     count: int, quality: gate.GateParams, chosen: Engine) -> LabelCheck | None:
        """The label check a request asks for (its labels checked), and the engine that scores it."""
        asked = self.checks.text_labels(labels, text_labels, field_name, count)
        if asked is None or not quality.on or not any(asked[1]):
            return None
        scorer = chosen if _follows_prompts(chosen) else next(
            (self._engines[name] for name in self.engine_names(scoring=True)), None)
        if scorer is None:
            raise NeedsMT5("标签检查要用 mT5 给每条结果分类；当前只有同义词替换引擎（见 README「安装模型权重」），"
                           "请去掉 labels 和原文标签，或加载 mT5 权重")
        return LabelCheck(*asked, scorer)

    async def classify(self, texts: list[str], labels: str | list[str], *, mode: str = "constrained",
                       multi_label: bool = False, threshold: float | None = None, engine: str | None = None,
                       field_name: str = "texts", arrived: float | None = None) -> ClassifyResult:
        """Classify each text into the candidate labels, in input order.

        constrained: every label's whole token sequence is scored under the classification prompt
        and the probabilities are a softmax over those sequence log-probabilities (no length
        normalisation), so the answer is always one of the labels. With multi_label, each label
        is instead scored on its own against a catch-all partner label, and every label whose own
        probability reaches the threshold is returned. generate: the model's free greedy answer.
        """
        started = time.monotonic() if arrived is None else arrived
        if mode not in zero_shot.MODES:
            raise InvalidParameter(f"mode 只能是 constrained 或 generate（收到 {str(mode)[:40]!r}）", field="mode")
        if threshold is None:
            threshold = self.settings.multi_label_threshold
        elif isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise InvalidParameter(f"threshold 必须是 0 到 1 之间的数（收到 {threshold!r}）", field="threshold")
        clean = self.checks.texts(texts, field_name)
        candidates = self.checks.labels(labels)
        chosen = self._ready_engine(engine)
        self._require_prompts(chosen, CLASSIFICATION)
        prompts = [self._classification_prompt(candidates, text) for text in clean]
        with self._admitted(chosen, started) as ticket:
            if mode == "generate":
                answers = await self._generate(chosen, prompts, zero_shot.GREEDY_ANSWER, ticket)
                items = [zero_shot.from_answer(_clean(outputs[0]) if outputs else "", candidates, multi_label)
                         for outputs in answers]
            elif multi_label:
                pairs = zero_shot.pair_items(self._templates, clean, candidates)
                scores = iter(await self._scores(chosen, pairs, ticket))
                items = zero_shot.from_pairs(scores, clean, candidates, threshold)
            else:
                scores = await self._scores(chosen, [(prompt, candidates) for prompt in prompts], ticket)
                items = [zero_shot.best_label(each) for each in scores]
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("classify engine=%s mode=%s multi_label=%s items=%d labels=%d ms=%.0f",
                 chosen.name, mode, multi_label, len(clean), len(candidates), elapsed_ms)
        log.debug("classify texts=%s labels=%s answers=%s", clean, candidates, [item.label for item in items])
        return ClassifyResult(list(texts), candidates, items, chosen.name, elapsed_ms)

    def _classification_prompt(self, labels: list[str], text: str) -> str:
        return self._templates.render("classification", labels=",".join(labels), text=text)

    def tasks(self) -> list[Task]:
        """The tasks /generate serves."""
        return self._templates.generation_tasks()

    async def run_task(self, task: str, fields: dict[str, object], params: GenerationParams, *,
                       engine: str | None = None, arrived: float | None = None) -> TaskResult:
        """Build the task's prompt from its fields and answer it: scored tasks pick one of their
        labels, the others return up to `num_return_sequences` distinct generated outputs."""
        started = time.monotonic() if arrived is None else arrived
        spec = self._task(task)
        values = self._task_fields(spec, fields)
        if not spec.scored:
            self.checks.work(1, params)
        chosen = self._ready_engine(engine)
        self._require_prompts(chosen, f"任务“{spec.title}”")
        prompt = self._templates.render(spec.name, **values)
        scores = None
        with self._admitted(chosen, started) as ticket:
            if spec.scored:
                [scores] = await self._scores(chosen, [(prompt, list(spec.labels))], ticket)
                outputs = [max(scores, key=scores.__getitem__)]
            else:
                # The card's outputs (titles, keywords) have no input to be faithful to: repeats are removed.
                repeats = gate.TextGate(None, gate.GateParams(quality="off"))
                await self._gated_outputs(chosen, [prompt], [repeats], params, ticket)
                outputs = repeats.outcome.texts
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
            values[name] = self.checks.text(value, name)
        return values

    # --- engine calls -----------------------------------------------------------------------------

    async def _gated_outputs(self, engine: Engine, prompts: list[str], gates: list[gate.TextGate],
                             params: GenerationParams, ticket: Ticket, check: LabelCheck | None = None) -> None:
        """Sample, pass each output through its prompt's gate (and the label check), and sample again while
        some prompt is short and its engine has more to give: each gate's outcome holds what was kept, what was
        dropped and why, and why it is short. A candidate the gate judged in an earlier round is passed over
        (an engine that enumerates, like the lexical one, proposes it again): it is not a new variant."""
        want = params.num_return_sequences
        pending = list(range(len(prompts)))
        offered, exhausted = [0] * len(prompts), [False] * len(prompts)
        judged: list[set[str]] = [set() for _ in prompts]
        round_params = params
        for round_index in range(self.settings.resample_rounds + 1):
            answers = await self._generate(engine, [prompts[i] for i in pending], round_params, ticket)
            passed: list[tuple[int, str, float | None]] = []
            for i, candidates in zip(pending, map(_cleaned, answers)):
                offered[i] += len(candidates)
                exhausted[i] = len(candidates) < round_params.num_return_sequences
                room = want - len(gates[i].outcome.kept)
                earlier, judged[i] = judged[i], set(judged[i])
                for candidate in candidates:
                    if not room:
                        break
                    if candidate in earlier:
                        continue
                    judged[i].add(candidate)
                    reason, score = gates[i].check(candidate)
                    if reason is None:
                        passed.append((i, candidate, score))
                        room -= 1
                    else:
                        gates[i].outcome.drop(candidate, reason, score)
            if check is None:
                for i, text, score in passed:
                    gates[i].outcome.kept.append(gate.Kept(text, score))
            else:
                await self._check_labels(passed, gates, check, ticket, originals=round_index == 0)
            pending = [i for i in pending if len(gates[i].outcome.kept) < want and not exhausted[i]]
            if not pending or not params.do_sample:
                break
            # A seeded request stays reproducible: each extra round uses the next seed.
            next_seed = None if params.seed is None else (params.seed + round_index + 1) % (SEED_RANGE[1] + 1)
            round_params = params.with_changes(
                num_return_sequences=max(want - len(gates[i].outcome.kept) for i in pending), seed=next_seed
            )
        for i, each in enumerate(gates):
            each.outcome.settle(want, offered[i], exhausted[i])

    async def _check_labels(self, passed: list[tuple[int, str, float | None]], gates: list[gate.TextGate],
                            check: LabelCheck, ticket: Ticket, originals: bool) -> None:
        """Keep the outputs whose constrained classification is their text's label, in one batched scoring
        of them all (and, in the first round, of the texts themselves, which the answer reports)."""
        items = [(i, text) for i, text, _ in passed if check.of_text[i] is not None]
        if originals:
            items += [(i, gates[i].source) for i, label in enumerate(check.of_text) if label is not None]
        scores = await self._scores(check.scorer, [(self._classification_prompt(check.labels, text), check.labels)
                                                   for _, text in items], ticket)
        probability = {(i, text): each[check.of_text[i]] for (i, text), each in zip(items, scores)}
        verdict = {(i, text): gate.label_verdict(each, check.of_text[i], gates[i].params.min_label_prob)
                   for (i, text), each in zip(items, scores)}
        if originals:
            for i, label in enumerate(check.of_text):
                if label is not None:
                    gates[i].outcome.label_probability = probability[i, gates[i].source]
        for i, text, score in passed:
            if check.of_text[i] is None:
                gates[i].outcome.kept.append(gate.Kept(text, score))
            elif verdict[i, text]:
                gates[i].outcome.kept.append(gate.Kept(text, score, probability[i, text]))
            else:
                gates[i].outcome.drop(text, "label_changed", score, probability[i, text])

    async def _generate(self, engine: Engine, prompts: list[str], params: GenerationParams,
                        ticket: Ticket) -> list[list[str]]:
        """The engine's outputs, in calls no bigger than a full batch of default requests: a cancelled or
        timed-out request stops costing the engine within one, and others get turns between them."""
        batcher = self._batchers[engine.name]
        size = batcher.prompts_per_call(params)
        outputs: list[list[str]] = []
        for start in range(0, len(prompts), size):
            outputs.extend(await batcher.generate(prompts[start:start + size], params, ticket))
        return outputs

    async def _scores(self, engine: Engine, items: list[tuple[str, list[str]]],
                      ticket: Ticket) -> list[dict[str, float]]:
        """Per (prompt, labels) item, the labels' probabilities: a softmax over their log-probabilities.
        An engine call scores up to SCORED_PAIRS_PER_PROMPT × the batch size (prompt, label) pairs (an item with
        more labels goes alone), so that other requests get turns however many labels each text has."""
        batcher = self._batchers[engine.name]
        probabilities = []
        for chunk in _by_pairs(items, SCORED_PAIRS_PER_PROMPT * self._batch_size(engine)):
            logprobs = await batcher.call(lambda e, chunk=chunk: e.score_batch(chunk), ticket)
            expected, got = sum(len(labels) for _, labels in chunk), sum(map(len, logprobs))
            if len(logprobs) != len(chunk) or got != expected:
                raise EngineContractError(engine.name, expected, got)
            probabilities.extend(dict(zip(labels, zero_shot.softmax(values)))
                                 for (_, labels), values in zip(chunk, logprobs))
        return probabilities
