"""Zero-shot classification and the card's prompt tasks in the service, on the tiny real mT5."""

import json
import math

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.classify import PARTNER_LABELS, match_labels, softmax
from app.engines.hf import HFEngine
from app.engines.lexical import LexicalEngine
from app.errors import InvalidParameter, LabelsInvalid, NeedsMT5, TextEmpty, TextTooLong
from app.params import GenerationParams, task_params
from app.service import Service
from app.settings import Settings
from app.tasks import load_templates
from tests.conftest import run

TEXT = "物流速度很快，包装也完好，但是客服回复有点慢。"
LABELS = ["物流", "价格", "客服", "质量"]


@pytest.fixture(scope="module")
def tiny_engine(tiny_models):
    return HFEngine(tiny_models["huggingface"], device="cpu")


def make_service(engine, **overrides) -> Service:
    settings = Settings(**overrides)
    service = Service(settings, load_templates(settings.templates_file))
    service.load({engine.name: lambda: engine})
    return service


@pytest.fixture(scope="module")
def service(tiny_engine):
    return make_service(tiny_engine)


# Short label-like strings: CJK, Latin and digits, inner spaces allowed, no separators or spaces at the ends.
label_text = st.text(st.sampled_from("物流价格客服质量包装售后退款外观尺寸味道好差ab cXYZ09"), min_size=1,
                     max_size=8).map(str.strip).filter(bool)
label_sets = st.lists(label_text, min_size=2, max_size=12, unique=True)


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=label_sets, text=st.sampled_from([TEXT, "太贵了", "这件衣服的尺码偏小，颜色和图片一样。"]))
def test_constrained_answer_is_a_label_and_probabilities_sum_to_one(service, labels, text):
    result = run(service.classify([text], labels))
    item = result.items[0]
    assert result.labels == labels
    # Typed as one string, with spaces and a repeat, the same labels come out trimmed and counted once.
    assert run(service.classify([text], " , ".join([*labels, labels[0]]))).labels == labels
    assert item.label in labels and item.in_labels and item.raw_output is None
    assert list(item.scores) == labels
    assert all(math.isfinite(p) and 0 <= p <= 1 for p in item.scores.values())
    assert math.fsum(item.scores.values()) == pytest.approx(1, abs=1e-6)
    assert item.scores[item.label] == max(item.scores.values())
    assert run(service.classify([text], labels)).items[0] == item


def test_probabilities_are_the_softmax_of_the_sequence_log_probabilities(service, tiny_engine):
    prompt = service._templates.render("classification", labels=",".join(LABELS), text=TEXT)
    logprobs = tiny_engine.score(prompt, LABELS)
    scores = run(service.classify([TEXT], LABELS)).items[0].scores
    total = math.fsum(math.exp(lp) for lp in logprobs)
    assert list(scores.values()) == pytest.approx([math.exp(lp) / total for lp in logprobs], rel=1e-9)


def test_softmax_survives_very_unlikely_labels():
    probabilities = softmax([-2000.0, -2001.0, -5000.0])
    assert probabilities[0] > probabilities[1] > probabilities[2] >= 0
    assert math.fsum(probabilities) == pytest.approx(1, abs=1e-12)


@pytest.mark.parametrize("budget", [None, 1])
def test_scoring_many_prompts_at_once_gives_each_its_own_scores(tiny_engine, monkeypatch, budget):
    """One pass over prompts of different lengths and candidate counts, some candidates shared between
    prompts (their prefixes must not be confused), or, with a budget of 1 byte, one pass per prompt."""
    from app.engines import hf

    if budget is not None:
        monkeypatch.setattr(hf, "SCORE_BUDGET_BYTES", budget)
    items = [(f"情感分析：{TEXT}", ["积极", "消极"]),
             (f"文本分类。\n候选标签：{','.join(LABELS)}。\n文本内容：太贵了", LABELS),
             ("好", ["积极", "消极", "物流慢", "物流"]),
             (f"文本分类。\n候选标签：{','.join(LABELS)}。\n文本内容：{TEXT}", LABELS)]
    together = tiny_engine.score_batch(items)
    assert [len(scores) for scores in together] == [len(candidates) for _, candidates in items]
    for (prompt, candidates), scores in zip(items, together):
        assert scores == pytest.approx(tiny_engine.score(prompt, candidates), abs=1e-4)
        assert all(value < 0 for value in scores)
    # Different prompts give the same candidates different scores.
    assert together[0] != pytest.approx(tiny_engine.score("好", ["积极", "消极"]), abs=1e-3)


class CountingEngine:
    """The tiny engine, with a record of the score_batch calls the service makes."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []
        self.name, self.can_score, self.wants_raw_text, self.batch_size = engine.name, True, False, 16

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def score_batch(self, items):
        self.calls.append(len(items))
        return self.engine.score_batch(items)


def test_a_batch_and_multi_label_share_engine_calls(tiny_engine):
    counting = CountingEngine(tiny_engine)
    service = make_service(counting, max_batch_size=0)
    run(service.classify([TEXT, "太贵了", "好"], LABELS))
    run(service.classify([TEXT, "太贵了"], LABELS, multi_label=True))
    assert counting.calls == [3, 2 * len(LABELS)]
    counting.calls.clear()
    # At most 3 × max_batch_size (prompt, label) pairs a call, so that others get turns: 8 items of 2 pairs.
    run(make_service(counting, max_batch_size=5).classify([TEXT, "太贵了"], LABELS, multi_label=True))
    assert counting.calls == [7, 1]
    counting.calls.clear()
    many = [f"标签{i}" for i in range(20)]  # one text with more labels than a call holds goes alone
    run(make_service(counting, max_batch_size=5).classify([TEXT, "太贵了"], many))
    assert counting.calls == [1, 1]


def test_a_batch_is_classified_in_input_order(service):
    texts = [TEXT, "太贵了", TEXT]
    batch = run(service.classify(texts, LABELS)).items
    alone = [run(service.classify([t], LABELS)).items[0].scores for t in texts]
    # A batch runs its prompts through the model together, padded: the same arithmetic to float32 rounding.
    for together, by_itself in zip(batch, alone):
        assert list(together.scores) == list(by_itself) == LABELS
        assert list(together.scores.values()) == pytest.approx(list(by_itself.values()), abs=1e-5)
    assert list(batch[0].scores.values()) == pytest.approx(list(batch[2].scores.values()), abs=1e-9)


def test_multi_label_asks_each_label_against_a_partner(service, tiny_engine):
    item = run(service.classify([TEXT], LABELS, multi_label=True, threshold=0.3)).items[0]
    for label in LABELS:
        prompt = service._templates.render("classification", labels=f"{label},{PARTNER_LABELS[0]}", text=TEXT)
        own = softmax(tiny_engine.score(prompt, [label, PARTNER_LABELS[0]]))[0]
        assert item.scores[label] == pytest.approx(own, abs=1e-5)  # scored beside the other labels' prompts
    assert item.labels == sorted((l for l in LABELS if item.scores[l] >= 0.3), key=item.scores.get, reverse=True)
    assert item.label == max(LABELS, key=item.scores.get) and item.in_labels


def test_multi_label_threshold_bounds(service):
    everything = run(service.classify([TEXT], LABELS, multi_label=True, threshold=0)).items[0]
    assert sorted(everything.labels) == sorted(LABELS)
    assert run(service.classify([TEXT], LABELS, multi_label=True, threshold=1)).items[0].labels == \
        [label for label in LABELS if everything.scores[label] == 1]


def test_a_label_named_like_the_partner_gets_another_partner(service):
    item = run(service.classify([TEXT], ["物流", "其他"], multi_label=True)).items[0]
    assert set(item.scores) == {"物流", "其他"} and all(0 < p < 1 for p in item.scores.values())


def test_generate_mode_reports_the_free_answer_and_whether_it_is_a_label(service):
    item = run(service.classify([TEXT], LABELS, mode="generate")).items[0]
    assert isinstance(item.raw_output, str) and item.scores is None
    hits, only = match_labels(item.raw_output, LABELS, False)
    assert item.in_labels == (bool(hits) and only)
    assert item.label == (hits[0] if hits else None)
    assert run(service.classify([TEXT], LABELS, mode="generate")).items[0] == item


@pytest.mark.parametrize("raw, multi, hits, only", [
    ("物流", False, ["物流"], True),
    (" 物 流。", False, ["物流"], True),
    ("Price", False, ["price"], True),
    ("物流,客服", False, [], False),
    ("物流,客服", True, ["物流", "客服"], True),
    ("物流、快递", True, ["物流"], False),
    ("快递", False, [], False),
])
def test_free_answers_are_matched_to_labels(raw, multi, hits, only):
    assert match_labels(raw, ["物流", "客服", "price"], multi) == (hits, only)


@pytest.mark.parametrize("labels, expected", [
    ("物流,价格，客服、质量", ["物流", "价格", "客服", "质量"]),
    ("物流 , 物流,价格", ["物流", "价格"]),
    (" 物流\n、 价格 ", ["物流", "价格"]),
    (["物流", "价 格"], ["物流", "价 格"]),
])
def test_a_string_of_labels_is_split_trimmed_and_deduplicated_a_list_taken_as_sent(service, labels, expected):
    assert service.checks.labels(labels) == expected


@pytest.mark.parametrize("labels, field, words", [
    ("物流", "labels", "2 到 50"),
    ("物流,物流", "labels", "至少 2 个不同"),
    (["物流", " 物流 "], "labels[1]", "首尾有空白"),
    (["物流", "价格", "物流"], "labels[2]", "与第 1 个重复"),
    ([], "labels", "收到 0 个"),
    ("  ", "labels", "为空"),
    ("物流,,价格", "labels", "第 2 个标签为空"),
    (["物流", " "], "labels[1]", "第 2 个标签为空"),
    (["物流", "价格,客服"], "labels[1]", "逗号或顿号"),
    (["物流", "价\n格"], "labels[1]", "换行"),
    (["物流", "长" * 31], "labels[1]", "上限 30 字"),
    ([f"标签{i}" for i in range(51)], "labels", "收到 51 个"),
    (5, "labels", "标签列表"),
    (["物流", 3], "labels", "标签列表"),
])
def test_bad_labels_are_refused_naming_the_field(service, labels, field, words):
    with pytest.raises(LabelsInvalid, match=words) as caught:
        run(service.classify([TEXT], labels))
    assert caught.value.field == field and caught.value.status == 422


def test_label_limits_follow_the_settings(tiny_engine):
    service = make_service(tiny_engine, max_labels=3, max_label_chars=4)
    with pytest.raises(LabelsInvalid, match="2 到 3"):
        service.checks.labels("a,b,c,d")
    with pytest.raises(LabelsInvalid, match="上限 4 字"):
        service.checks.labels("物流,售后服务好")


@pytest.mark.parametrize("options, field", [
    ({"mode": "free"}, "mode"),
    ({"multi_label": True, "threshold": 1.5}, "threshold"),
    ({"multi_label": True, "threshold": "high"}, "threshold"),
])
def test_bad_options_are_refused_naming_the_field(service, options, field):
    with pytest.raises(InvalidParameter) as caught:
        run(service.classify([TEXT], LABELS, **options))
    assert caught.value.field == field


def test_an_engine_that_cannot_score_says_classification_needs_mt5():
    service = make_service(LexicalEngine.from_settings())
    for call in (lambda: run(service.classify([TEXT], LABELS)),
                 lambda: run(service.classify([TEXT], LABELS, mode="generate")),
                 lambda: run(service.run_task("sentiment", {"text": TEXT}, task_params({}))),
                 lambda: run(service.run_task("title", {"text": TEXT}, task_params({})))):
        with pytest.raises(NeedsMT5, match="mT5") as caught:
            call()
        assert caught.value.status == 503 and caught.value.code == "needs_mt5"


# The card's prompts, written out as ARCHITECTURE.md documents them.
CARD_PROMPTS = {
    "sentiment": ({"text": TEXT}, f"情感分析：{TEXT}"),
    "keywords": ({"text": TEXT}, f"抽取关键词：\n{TEXT}"),
    "title": ({"text": TEXT}, f"为以下的文本生成标题：\n{TEXT}"),
    "summary": ({"text": TEXT}, f"为下面的文章生成摘要：\n{TEXT}"),
    "aspect": ({"text": TEXT}, f"评价对象抽取：{TEXT}"),
    "translation": ({"text": TEXT}, f"翻译成英文：{TEXT}"),
    "question_generation": ({"passage": "北京是中国的首都。", "answer": "北京"},
                            "根据给定的段落和答案生成对应的问题。\n段落：北京是中国的首都。\n答案：北京"),
}


def test_every_card_task_is_served_with_its_fields(service):
    served = {task.name: task.fields for task in service.tasks()}
    assert served == {name: tuple(fields) for name, (fields, _) in CARD_PROMPTS.items()}


@pytest.mark.parametrize("task", CARD_PROMPTS)
def test_every_task_builds_the_documented_prompt(service, task):
    fields, prompt = CARD_PROMPTS[task]
    result = run(service.run_task(task, fields, task_params({"max_length": 8})))
    assert result.prompt == prompt and result.task == task and result.engine == "mt5"
    assert all(isinstance(output, str) and output for output in result.outputs)


def test_sentiment_is_scored_over_its_two_labels(service, tiny_engine):
    result = run(service.run_task("sentiment", {"text": TEXT}, task_params({})))
    assert set(result.scores) == {"积极", "消极"}
    assert math.fsum(result.scores.values()) == pytest.approx(1, abs=1e-6)
    assert result.outputs == [max(result.scores, key=result.scores.get)]
    expected = softmax(tiny_engine.score(f"情感分析：{TEXT}", ["积极", "消极"]))
    assert list(result.scores.values()) == pytest.approx(expected, rel=1e-9)


def test_generative_tasks_are_greedy_unless_asked_to_sample(service):
    greedy = task_params({"max_length": 12})
    assert not greedy.do_sample and greedy.num_return_sequences == 1
    first = run(service.run_task("title", {"text": TEXT}, greedy))
    assert len(first.outputs) <= 1 and first.scores is None
    assert run(service.run_task("title", {"text": TEXT}, greedy)).outputs == first.outputs
    sampled = task_params({"num_return_sequences": 3, "max_length": 12, "seed": 5})
    assert sampled.do_sample
    outputs = run(service.run_task("title", {"text": TEXT}, sampled)).outputs
    assert 1 <= len(outputs) <= 3 and len(set(outputs)) == len(outputs)
    assert task_params({"temperature": 0.5}).do_sample


@pytest.mark.parametrize("task, fields, error, field", [
    ("poem", {"text": TEXT}, InvalidParameter, "task"),
    ("augment", {"text": TEXT}, InvalidParameter, "task"),
    ("classification", {"text": TEXT, "labels": "a,b"}, InvalidParameter, "task"),
    ("question_generation", {"passage": TEXT}, InvalidParameter, "answer"),
    ("question_generation", {"passage": TEXT, "answer": 3}, InvalidParameter, "answer"),
    ("title", {"text": TEXT, "passage": TEXT}, InvalidParameter, "passage"),
    ("title", {"text": "  "}, TextEmpty, "text"),
    ("summary", {"text": "长" * 1001}, TextTooLong, "text"),
])
def test_task_fields_are_checked_naming_the_field(service, task, fields, error, field):
    with pytest.raises(error) as caught:
        run(service.run_task(task, fields, task_params({})))
    assert caught.value.field == field and caught.value.status == 422


def test_a_task_added_to_the_template_file_is_served(tiny_engine, tmp_path):
    shipped = json.loads(Settings().templates_file.read_text("utf-8"))
    path = tmp_path / "templates.json"
    path.write_text(json.dumps({**shipped, "spam": {"title": "垃圾信息识别", "template": "判断是否垃圾信息：{text}",
                                                    "labels": ["垃圾", "正常"]},
                                "rewrite": "用更礼貌的语气改写：{text}"}, ensure_ascii=False), "utf-8")
    service = make_service(tiny_engine, templates_file=path)
    assert [task.name for task in service.tasks()][-2:] == ["spam", "rewrite"]
    spam = run(service.run_task("spam", {"text": TEXT}, task_params({})))
    assert spam.prompt == f"判断是否垃圾信息：{TEXT}" and spam.outputs[0] in {"垃圾", "正常"}
    rewrite = run(service.run_task("rewrite", {"text": TEXT}, GenerationParams(num_return_sequences=2, max_length=8)))
    assert rewrite.prompt == f"用更礼貌的语气改写：{TEXT}" and rewrite.scores is None
