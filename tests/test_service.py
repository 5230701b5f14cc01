"""The service: validation against limits, post-processing, resampling, readiness and timeouts."""

import asyncio
import threading
import time

import pytest

from app.answers import without_paths
from app.engines.hf import HFEngine
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
    WorkTooLarge,
)
from app.params import GenerationParams
from app.service import Service
from app.settings import Settings
from app.tasks import load_templates
from tests.conftest import run

TEXTS = ["这款耳机的音质很好，佩戴也很舒适。", "物流速度很快", "请问怎么修改收货地址？"]


def make_service(engine=None, **overrides) -> Service:
    """A service around `engine`; the quality gate off unless asked (these doubles answer made-up strings, and
    the tests here are of resampling, batching and limits: tests/test_gate.py tests the gate)."""
    settings = Settings(**{"quality": "off", **overrides})
    service = Service(settings, load_templates(settings.templates_file))
    if engine is not None:
        service.load({engine.name: lambda: engine})
    return service


@pytest.fixture(scope="module")
def tiny_engine(tiny_models):
    return HFEngine(tiny_models["huggingface"], device="cpu")


class ScriptedEngine:
    """An engine double that answers each generate call from a script and records the calls."""

    name, can_score, wants_raw_text, batch_size = "mt5", True, False, 16

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def info(self):
        return {"engine": self.name, "device": "cpu"}

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(prompts, params) if callable(answer) else answer

    def score(self, prompt, candidates):
        return [0.0] * len(candidates)

    def score_batch(self, items):
        return [self.score(prompt, candidates) for prompt, candidates in items]


def test_variants_are_distinct_non_empty_and_never_the_input(tiny_engine):
    service = make_service(tiny_engine)
    result = run(service.augment(TEXTS, GenerationParams(num_return_sequences=4, max_length=12, seed=5)))
    assert result.originals == TEXTS
    assert len(result.variants) == len(TEXTS)
    for original, variants in zip(TEXTS, result.variants):
        assert 1 <= len(variants) <= 4
        assert len(set(variants)) == len(variants)
        assert all(v.strip() and v == v.strip() and v != original for v in variants)
        assert not any("<pad>" in v or "</s>" in v or "<extra_id" in v for v in variants)


def test_a_seeded_request_is_reproducible(tiny_engine):
    service = make_service(tiny_engine)
    params = GenerationParams(num_return_sequences=3, max_length=10, seed=7)
    assert run(service.augment(TEXTS, params)).variants == run(service.augment(TEXTS, params)).variants


def test_empty_outputs_repeats_and_copies_of_the_input_are_dropped_then_resampled():
    engine = ScriptedEngine(
        lambda prompts, p: [["", prompts[0], " 改写一 ", "改写一"]],
        lambda prompts, p: [["改写一", "改写二", "改写三"][: p.num_return_sequences + 1]],
    )
    service = make_service(engine)
    result = run(service.augment(["原文 句子"], GenerationParams(num_return_sequences=3, seed=10)))
    assert result.variants == [["改写一", "改写二", "改写三"]]
    assert len(engine.calls) == 2
    # The second round asks only for what is missing, with the next seed.
    assert engine.calls[1][1].num_return_sequences == 2
    assert engine.calls[1][1].seed == 11


def test_whitespace_variants_of_the_input_count_as_copies():
    engine = ScriptedEngine([["原文 句子", "原文句子", "新的句子"]])
    result = run(make_service(engine, resample_rounds=0).augment(["原文句子"], GenerationParams(num_return_sequences=3)))
    assert result.variants == [["新的句子"]]


def test_resampling_is_bounded_and_returns_what_exists_without_padding():
    engine = ScriptedEngine(lambda prompts, p: [[prompt] * p.num_return_sequences for prompt in prompts])
    service = make_service(engine, resample_rounds=2)
    result = run(service.augment(["只会复读"], GenerationParams(num_return_sequences=3)))
    assert result.variants == [[]]
    assert len(engine.calls) == 3


def test_only_prompts_still_short_are_resampled():
    engine = ScriptedEngine(
        lambda prompts, p: [["甲一", "甲二"], ["乙一", "乙一"]],
        lambda prompts, p: [["乙二"]],
    )
    result = run(make_service(engine).augment(["甲", "乙"], GenerationParams(num_return_sequences=2)))
    assert result.variants == [["甲一", "甲二"], ["乙一", "乙二"]]
    assert engine.calls[1][0] == ["乙"]


def test_prompts_are_sent_in_chunks_of_max_batch_size_in_order():
    engine = ScriptedEngine(lambda prompts, p: [[prompt + "改"] for prompt in prompts])
    texts = [f"第{i}句" for i in range(7)]
    result = run(make_service(engine, max_batch_size=3).augment(texts, GenerationParams(num_return_sequences=1)))
    assert [len(call[0]) for call in engine.calls] == [3, 3, 1]
    assert result.variants == [[text + "改"] for text in texts]


def test_without_max_batch_size_the_engine_says_how_many_prompts_a_call_takes():
    engine = ScriptedEngine(lambda prompts, p: [[prompt + "改"] for prompt in prompts])
    engine.batch_size = 2  # as the mt5 engine says 64 on a GPU
    run(make_service(engine).augment([f"第{i}句" for i in range(5)], GenerationParams(num_return_sequences=1)))
    assert [len(call[0]) for call in engine.calls] == [2, 2, 1]


def test_an_engine_that_breaks_the_contract_fails_loudly():
    engine = ScriptedEngine([["一"]])
    with pytest.raises(EngineContractError, match="1 outputs for 2 prompts"):
        run(make_service(engine).augment(["甲", "乙"], GenerationParams()))


@pytest.mark.parametrize("texts, error, field", [
    ([], InvalidParameter, "texts"),
    (["好", "   "], TextEmpty, "texts[1]"),
    (["好", "长" * 1001], TextTooLong, "texts[1]"),
    (["好"] * 51, BatchTooLarge, "texts"),
])
def test_texts_are_checked_against_the_limits(texts, error, field):
    service = make_service(ScriptedEngine([["x"]]))
    with pytest.raises(error) as caught:
        run(service.augment(texts, GenerationParams()))
    assert caught.value.field == field


def test_limits_come_from_settings():
    service = make_service(ScriptedEngine(lambda prompts, p: [["改"] for _ in prompts]),
                           max_text_chars=5, max_batch_texts=2)
    with pytest.raises(TextTooLong):
        run(service.augment(["六个字的句子"], GenerationParams(), field_name="text"))
    with pytest.raises(BatchTooLarge):
        run(service.augment(["一", "二", "三"], GenerationParams()))


def test_a_service_without_a_model_is_not_ready_and_says_why_without_server_paths(tmp_path):
    service = make_service()
    assert service.readiness().status == "loading"
    service.load({"mt5": lambda: (_ for _ in ()).throw(ModelUnavailable(f"模型目录 {tmp_path} 不存在"))})
    readiness = service.readiness()
    assert not readiness.ready and readiness.status == "unavailable"
    # Anyone may read /readyz and the page: the directory is named, the server's layout is not.
    assert tmp_path.name in readiness.reason and str(tmp_path) not in readiness.reason
    with pytest.raises(NotReady, match=tmp_path.name):
        run(service.augment(["好"], GenerationParams()))


@pytest.mark.parametrize("text, shown", [
    ("模型目录 /srv/models/mt5-base 不存在", "模型目录 mt5-base 不存在"),
    ("无法读取 /a/b/spiece.model：权限不足", "无法读取 spiece.model：权限不足"),
    ("见 https://modelscope.cn/models/damo/x 与 damo/nlp_mt5", "见 https://modelscope.cn/models/damo/x 与 damo/nlp_mt5"),
])
def test_absolute_paths_are_cut_to_their_last_part(text, shown):
    assert without_paths(text) == shown


def test_readiness_reads_the_engine_as_it_is_now():
    """What changes while serving (GPU memory, a decoder that fell back) shows in /readyz."""
    engine = ScriptedEngine([["改"]])
    service = make_service(engine)
    engine.info = lambda: {"engine": "mt5", "decoder": "fast", "model": "/srv/models/mt5"}
    assert service.readiness().info["decoder"] == "fast"
    engine.info = lambda: {"engine": "mt5", "decoder": "generate", "model": "/srv/models/mt5"}
    assert service.readiness().info == {"engine": "mt5", "decoder": "generate", "model": "mt5", "engines": ["mt5"],
                                        "queue": {"running": 0, "waiting": 0, "max_queue": 64}}


def test_an_unexpected_load_failure_still_leaves_a_reason():
    service = make_service()
    service.load({"mt5": lambda: (_ for _ in ()).throw(MemoryError("out of memory"))})
    assert "MemoryError" in service.readiness().reason


def test_asking_for_an_engine_that_is_not_loaded_is_a_clear_422():
    service = make_service(ScriptedEngine([["x"]]))
    with pytest.raises(EngineUnavailable) as caught:
        run(service.augment(["好"], GenerationParams(), engine="gpt"))
    assert caught.value.status == 422 and caught.value.field == "engine"


def test_a_request_over_the_work_budget_is_refused_naming_the_limit():
    engine = ScriptedEngine([["x"]])
    service = make_service(engine, max_request_tokens=1000)
    with pytest.raises(WorkTooLarge) as caught:
        run(service.augment(["甲", "乙"], GenerationParams(num_return_sequences=4, max_length=128)))
    assert caught.value.status == 422 and caught.value.code == "work_too_large"
    assert "2 条文本 × 4 条结果 × 128 token = 1024" in caught.value.message and "--max-request-tokens" in caught.value.message
    assert engine.calls == []
    run(service.augment(["甲"], GenerationParams(num_return_sequences=4, max_length=128)))  # 512: within it


def _busy(engine_class=None):
    """An engine double whose generate waits until the returned gate opens."""
    gate = threading.Event()
    engine = (engine_class or ScriptedEngine)(lambda prompts, p: gate.wait(10) and [["x"]] * len(prompts))
    return engine, gate


async def _occupied(service, **kwargs) -> asyncio.Task:
    """A request that holds the engine, running once this returns."""
    task = asyncio.ensure_future(service.augment(["先到"], GenerationParams(), **kwargs))
    while not service.queue()["running"]:
        await asyncio.sleep(0.01)
    return task


def test_a_request_that_cannot_reach_the_engine_in_time_gets_a_timeout():
    engine, gate = _busy()
    service = make_service(engine, request_timeout_s=0.3)

    async def scenario():
        first = await _occupied(service)
        started = time.monotonic()
        with pytest.raises(RequestTimeout) as caught:
            await service.augment(["好"], GenerationParams())
        gate.set()
        await asyncio.gather(first, return_exceptions=True)
        return caught.value, time.monotonic() - started

    error, waited = run(scenario())
    assert error.status == 504 and waited < 2


def test_the_timeout_counts_from_arrival():
    engine = ScriptedEngine([["改"]])
    service = make_service(engine, request_timeout_s=5)
    with pytest.raises(RequestTimeout):
        run(service.augment(["好"], GenerationParams(), arrived=time.monotonic() - 6))
    assert engine.calls == []


def test_concurrent_requests_each_get_their_own_variants():
    engine = ScriptedEngine(lambda prompts, p: [[prompt + "·改"] for prompt in prompts])
    service = make_service(engine)

    async def scenario():
        return await asyncio.gather(*(service.augment([f"第{i}条"], GenerationParams(num_return_sequences=1))
                                      for i in range(8)))

    assert [result.variants for result in run(scenario())] == [[[f"第{i}条·改"]] for i in range(8)]


def test_one_engine_busy_never_holds_up_another():
    class LexicalDouble(ScriptedEngine):
        name, wants_raw_text = "lexical", True

    busy, gate = _busy()
    service = make_service(request_timeout_s=0.5)
    service.load({"mt5": lambda: busy, "lexical": lambda: LexicalDouble([["改写"]])})

    async def scenario():
        first = await _occupied(service)
        assert (await service.augment(["好"], GenerationParams(), engine="lexical")).variants == [["改写"]]
        with pytest.raises(RequestTimeout):
            await service.augment(["好"], GenerationParams())
        gate.set()
        await asyncio.gather(first, return_exceptions=True)

    run(scenario())
