"""The page's handlers are plain functions: they call the service and format, testable without a browser."""

import asyncio
import csv

import pytest

from app import ui
from app.errors import InvalidParameter, ModelUnavailable, TextEmpty
from app.gate import Kept, Outcome
from app.jobs.manager import Jobs
from app.service import Service
from app.settings import Settings
from app.tasks import load_templates
from app.ui import augment_tab, classify_tab, controls, public_api, tasks_tab
from app.ui.events import SessionWork, event, in_api_words
from tests.conftest import run


def _service(**overrides) -> Service:
    settings = Settings(**overrides)
    return Service(settings, load_templates(settings.templates_file))


def _page(service: Service, tmp_path):
    return ui.build(service, Jobs(service, Settings(data_dir=tmp_path / "data")))


def test_gradio_starts_every_event_at_once_and_its_queue_is_bounded(tmp_path):
    """Page and Gradio API requests wait in the service's queue, where they are counted, not in Gradio's."""
    demo = _page(_service(max_queue=12), tmp_path)
    assert demo._queue.default_concurrency_limit is None
    assert all(fn.concurrency_limit == "default" for fn in demo.fns.values())
    assert demo._queue.max_size == demo._queue.max_thread_count == 4 * 12


def test_only_the_api_endpoints_are_public(tmp_path):
    demo = _page(_service(), tmp_path)
    public = sorted(fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public")
    assert public == ["augment", "augment_batch", "augment_report", "classify", "job_result", "job_status",
                      "job_submit"]


def test_slider_floats_become_integers_and_an_empty_seed_means_random():
    params = controls.ui_params(4.0, 0.7, 64.0, 10.0, 0.9, "")
    assert params.num_return_sequences == 4 and isinstance(params.num_return_sequences, int)
    assert params.max_length == 64 and params.temperature == 0.7 and params.seed is None
    assert controls.ui_params(3, 0.7, 64, 10, 0.9, " 12 ").seed == 12


def test_a_seed_that_is_not_a_number_is_a_readable_error():
    with pytest.raises(InvalidParameter, match="随机种子"):
        controls.ui_params(3, 0.7, 64, 10, 0.9, "abc")


def test_copy_formats():
    assert augment_tab.format_plain(["甲", "乙"]) == "甲\n乙"
    markdown = augment_tab.format_markdown("原句", ["甲", "乙"])
    assert markdown.startswith("**原文**：原句")
    assert "1. 甲\n2. 乙" in markdown


def _outcome(kept: int, requested: int, offered: int, exhausted: bool, dropped: int = 0) -> Outcome:
    outcome = Outcome(kept=[Kept(f"结果{i}", 0.8) for i in range(kept)])
    for i in range(dropped):
        outcome.drop(f"丢弃{i}", "too_close", 0.995)
    outcome.settle(requested, offered, exhausted)
    return outcome


def test_the_status_line_says_why_fewer_variants_came_than_asked():
    nothing = augment_tab.status_line(_outcome(0, 3, 0, True), "lexical", 12.0)
    assert "只生成 0 条（要 3 条）" in nothing and "没有可改写的词语" in nothing
    assert "可改写的词语不多" in augment_tab.status_line(_outcome(2, 3, 2, True), "lexical", 12.0)
    gated = augment_tab.status_line(_outcome(2, 3, 9, False, dropped=7), "mt5", 12.0)
    assert "过滤 7 条" in gated and "没有通过质量过滤" in gated
    assert "只生成" not in augment_tab.status_line(_outcome(3, 3, 3, False), "mt5", 12.0)


def test_the_batch_table_says_why_a_text_is_short_on_its_first_row():
    rows = augment_tab.table_rows(["甲句", "乙句"], [None, "正面"], [_outcome(2, 3, 2, True), _outcome(0, 3, 0, True)])
    assert [row[2] for row in rows] == ["结果0", "结果1", ""]
    assert "可改写的词语不多" in rows[0][4] and rows[1][4] == ""
    assert rows[2][:2] == ["乙句", "正面"] and "没有可改写的词语" in rows[2][4]


def test_batch_lines_keep_order_and_skip_blank_lines():
    assert augment_tab.batch_lines("甲\n\n  \n乙\r\n丙") == ["甲", "乙", "丙"]
    assert augment_tab.batch_lines(None) == []


def test_the_csv_opens_in_excel_with_chinese_intact():
    written = [["原文一", "正面", "结果一", "0.52", ""], ["原文一", "正面", "结果二,带逗号", "0.61", ""]]
    path = augment_tab.write_csv(written)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
    assert rows == [["原文", "标签", "增强结果", "相似度", "说明"], *written]


def test_the_banner_tells_loading_missing_draining_and_ready_apart(tmp_path):
    service = _service()
    assert "加载中" in controls.banner(service)
    service.load({"mt5": lambda: (_ for _ in ()).throw(ModelUnavailable(f"模型目录 {tmp_path} 不存在"))})
    shown = controls.banner(service)
    assert "模型未就绪" in shown and tmp_path.name in shown and str(tmp_path) not in shown
    service.in_flight.start_drain()
    assert "正在停止" in controls.banner(service)


def shown_error(handler, service, *args, words=None) -> str:
    """The message the page (or, with in_api_words, a Gradio API client) shows for a handler's failure."""
    wrapped = event(handler, service, SessionWork(), *([words] if words else []))
    with pytest.raises(Exception) as caught:
        run(wrapped(None, *args))
    assert type(caught.value).__name__ == "Error"
    return caught.value.message


def test_an_empty_batch_box_is_a_readable_error():
    assert "至少一行" in shown_error(augment_tab.on_augment_batch, _service(), "  \n ", None, 3, 0.8, 128, 50, 0.95, "")
    with pytest.raises(TextEmpty):
        run(augment_tab.on_augment_batch(_service(), "  \n ", None, 3, 0.8, 128, 50, 0.95, ""))


def test_an_unexpected_failure_shows_a_generic_message_with_the_request_id_and_logs_the_detail(caplog):
    async def broken(service, text):
        raise RuntimeError("CUDA out of memory at /srv/secret/path")

    message = shown_error(broken, _service(), "好")
    assert "服务器内部错误" in message and "请求编号" in message
    assert "CUDA" not in message and "/srv" not in message
    rid = message.split("请求编号 ")[1].split(" ")[0]
    logged = [record for record in caplog.records if "broken" in record.getMessage()]
    assert logged and logged[0].exc_info and "secret" in str(logged[0].exc_info[1])
    assert len(rid) == 16


def test_closing_a_tab_cancels_its_running_work():
    sessions = SessionWork()

    class Request:
        session_hash = "tab-1"

    async def slow(service, text):
        await asyncio.sleep(30)

    async def scenario():
        running = asyncio.ensure_future(event(slow, _service(), sessions)(Request(), "好"))
        other = asyncio.ensure_future(event(slow, _service(), sessions)(type("R", (), {"session_hash": "tab-2"})(),
                                                                        "好"))
        await asyncio.sleep(0.05)
        await sessions.closed(Request())
        await asyncio.sleep(0)
        cancelled = running.cancelled()
        other.cancel()
        return cancelled, other

    cancelled, _ = run(scenario())
    assert cancelled


@pytest.fixture(scope="module")
def served(tiny_models):
    from app.engines.hf import HFEngine

    service = _service()
    engine = HFEngine(tiny_models["huggingface"], device="cpu")
    service.load({"mt5": lambda: engine})
    return service


def test_classify_tags_may_each_hold_several_labels(served):
    scores, status = run(classify_tab.on_classify(served, "物流很快", ["物流、价格", "客服"], "constrained", False, 0.5))
    assert list(scores) == ["物流", "价格", "客服"]
    best = max(scores, key=scores.get)
    assert f"答案：**{best}**" in status and "引擎 mt5" in status


def test_classify_in_generate_mode_shows_the_raw_answer(served):
    shown, status = run(classify_tab.on_classify(served, "物流很快", ["物流", "价格"], "generate", False, 0.5))
    assert isinstance(shown, str) and f"模型原样输出：“{shown}”" in status


def test_classify_multi_label_status_names_what_passed(served):
    scores, status = run(classify_tab.on_classify(served, "物流很快", ["物流", "价格"], "constrained", True, 0.05))
    passed = [label for label in scores if scores[label] >= 0.05]
    assert passed and all(f"**{label}**" in status for label in passed)
    _, none_passed = run(classify_tab.on_classify(served, "物流很快", ["物流", "价格"], "constrained", True, 1.0))
    assert "没有标签的概率达到阈值" in none_passed


def test_classify_with_one_label_is_a_readable_error(served):
    assert "2 到 50" in shown_error(classify_tab.on_classify, served, "物流很快", ["物流"], "constrained", False, 0.5)


def test_choosing_a_task_shows_only_its_fields(served):
    names = ["text", "passage", "answer"]
    *boxes, hint = run(tasks_tab.task_field_updates(served, "question_generation", names))
    assert [box.visible for box in boxes] == [False, True, True]
    assert "段落" in hint
    *boxes, hint = run(tasks_tab.task_field_updates(served, "sentiment", names))
    assert [box.visible for box in boxes] == [True, False, False] and "积极 / 消极" in hint


def test_a_task_runs_from_the_page(served):
    names = ["text", "passage", "answer"]
    params = (3, 0.8, 8, 50, 0.95, "")
    output, scores, prompt, status = run(tasks_tab.on_task(served, "sentiment", False, "质量很好", "", "", *params,
                                                           names=names))
    assert output in ("积极", "消极") and scores.visible
    assert {shown["label"] for shown in scores.value["confidences"]} == {"积极", "消极"}
    assert prompt == "情感分析：质量很好" and "引擎 mt5" in status
    output, scores, prompt, _ = run(tasks_tab.on_task(served, "question_generation", True, "不用的文本", "北京是首都",
                                                      "北京", *params, names=names))
    assert prompt == "根据给定的段落和答案生成对应的问题。\n段落：北京是首都\n答案：北京"
    assert not scores.visible and len(output.splitlines()) <= 3
    wrapped = event(tasks_tab.on_task, served, SessionWork(), names=names)
    with pytest.raises(Exception) as caught:
        run(wrapped(None, "question_generation", False, "", "北京是首都", "", *params))
    assert caught.value.message.startswith("答案 为空")


def test_page_errors_name_the_page_controls_and_api_errors_the_fields(served):
    """The page says 输入文本 or 第 2 条文本 where the API says text or texts[1]; Gradio API clients keep
    the names they sent."""
    long_text = "长" * 1001
    params = (3, 0.8, 8, 50, 0.95, "")
    assert shown_error(augment_tab.on_augment, served, long_text, None, *params).startswith("输入文本 共 1001 字")
    assert shown_error(augment_tab.on_augment_batch, served, f"好\n\n{long_text}", None, *params).startswith(
        "第 2 条文本 共 1001 字")
    assert shown_error(classify_tab.on_classify, served, " ", ["物流", "价格"], "constrained", False, 0.5).startswith(
        "输入文本 为空")
    assert shown_error(classify_tab.on_classify, served, "物流很快", ["物流", "价格"], "constrained", True,
                       1.5).startswith("多标签阈值 必须")
    api = in_api_words
    assert shown_error(public_api.augment_batch, served, ["好", long_text], 3, 8, 0.8, 50, 0.95, None, None,
                       words=api).startswith("texts[1] 共 1001 字")
    assert shown_error(public_api.classify, served, " ", ["物流", "价格"], "constrained", False, 0.5, None,
                       words=api).startswith("text 为空")
    assert shown_error(public_api.augment, served, 5, 3, 8, 0.8, 50, 0.95, None, None,
                       words=api) == "text 应为字符串（收到 5）"
    assert shown_error(public_api.augment_batch, served, "好", 3, 8, 0.8, 50, 0.95, None, None,
                       words=api) == "texts 应为字符串列表（收到 '好'）"
