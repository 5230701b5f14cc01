"""The page's handlers are plain functions: they call the service and format, testable without a browser."""

import csv

import pytest

from app import ui
from app.errors import InvalidParameter, ModelUnavailable
from app.service import Service
from app.settings import Settings
from app.tasks import load_templates


def _service(**overrides) -> Service:
    settings = Settings(**overrides)
    return Service(settings, load_templates(settings.templates_file))


def test_the_page_is_not_serialised_behind_gradios_default_concurrency_of_one():
    demo = ui.build(_service(ui_concurrency=5))
    assert demo._queue.default_concurrency_limit == 5
    assert all(fn.concurrency_limit == "default" for fn in demo.fns.values())


def test_only_the_three_api_endpoints_are_public():
    demo = ui.build(_service())
    public = sorted(fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public")
    assert public == ["augment", "augment_batch", "classify"]


def test_slider_floats_become_integers_and_an_empty_seed_means_random():
    params = ui.ui_params(4.0, 64.0, 0.7, 10.0, 0.9, "")
    assert params.num_return_sequences == 4 and isinstance(params.num_return_sequences, int)
    assert params.seed is None
    assert ui.ui_params(3, 64, 0.7, 10, 0.9, " 12 ").seed == 12


def test_a_seed_that_is_not_a_number_is_a_readable_error():
    with pytest.raises(InvalidParameter, match="随机种子"):
        ui.ui_params(3, 64, 0.7, 10, 0.9, "abc")


def test_copy_formats():
    assert ui.format_plain(["甲", "乙"]) == "甲\n乙"
    markdown = ui.format_markdown("原句", ["甲", "乙"])
    assert markdown.startswith("**原文**：原句")
    assert "1. 甲\n2. 乙" in markdown


def test_the_status_line_says_when_fewer_variants_exist_than_asked():
    assert "只找到 2 条" in ui.status_line(2, 3, "mt5", 12.0)
    assert "凑数" in ui.status_line(2, 3, "lexical", 12.0)
    assert "只找到" not in ui.status_line(3, 3, "mt5", 12.0)


def test_batch_lines_keep_order_and_skip_blank_lines():
    assert ui.batch_lines("甲\n\n  \n乙\r\n丙") == ["甲", "乙", "丙"]
    assert ui.batch_lines(None) == []


def test_the_csv_opens_in_excel_with_chinese_intact():
    path = ui.write_csv([["原文一", "结果一"], ["原文一", "结果二,带逗号"]])
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
    assert rows == [["原文", "增强结果"], ["原文一", "结果一"], ["原文一", "结果二,带逗号"]]


def test_the_banner_tells_loading_missing_and_ready_apart(tmp_path):
    service = _service()
    assert "加载中" in ui.banner(service)
    service.load({"mt5": lambda: (_ for _ in ()).throw(ModelUnavailable(f"模型目录 {tmp_path} 不存在"))})
    assert "模型未就绪" in ui.banner(service) and str(tmp_path) in ui.banner(service)


def test_an_empty_batch_box_is_a_readable_error():
    with pytest.raises(Exception, match="至少一行") as caught:
        ui.on_augment_batch(_service(), "  \n ", None, 3, 0.8, 128, 50, 0.95, "")
    assert type(caught.value).__name__ == "Error"


@pytest.fixture(scope="module")
def served(tiny_models):
    from app.engines.hf import HFEngine

    service = _service()
    engine = HFEngine(tiny_models["huggingface"], device="cpu")
    service.load({"mt5": lambda: engine})
    return service


def test_classify_tags_may_each_hold_several_labels(served):
    scores, status = ui.on_classify(served, "物流很快", ["物流、价格", "客服"], "constrained", False, 0.5)
    assert list(scores) == ["物流", "价格", "客服"]
    best = max(scores, key=scores.get)
    assert f"答案：**{best}**" in status and "引擎 mt5" in status


def test_classify_in_generate_mode_shows_the_raw_answer(served):
    shown, status = ui.on_classify(served, "物流很快", ["物流", "价格"], "generate", False, 0.5)
    assert isinstance(shown, str) and f"模型原样输出：“{shown}”" in status


def test_classify_multi_label_status_names_what_passed(served):
    scores, status = ui.on_classify(served, "物流很快", ["物流", "价格"], "constrained", True, 0.05)
    passed = [label for label in scores if scores[label] >= 0.05]
    assert passed and all(f"**{label}**" in status for label in passed)
    _, none_passed = ui.on_classify(served, "物流很快", ["物流", "价格"], "constrained", True, 1.0)
    assert "没有标签的概率达到阈值" in none_passed


def test_classify_with_one_label_is_a_readable_error(served):
    with pytest.raises(Exception, match="2 到 50") as caught:
        ui.on_classify(served, "物流很快", ["物流"], "constrained", False, 0.5)
    assert type(caught.value).__name__ == "Error"


def test_choosing_a_task_shows_only_its_fields(served):
    names = ["text", "passage", "answer"]
    *boxes, hint = ui.task_field_updates(served, "question_generation", names)
    assert [box.visible for box in boxes] == [False, True, True]
    assert "段落" in hint
    *boxes, hint = ui.task_field_updates(served, "sentiment", names)
    assert [box.visible for box in boxes] == [True, False, False] and "积极 / 消极" in hint


def test_a_task_runs_from_the_page(served):
    names = ["text", "passage", "answer"]
    controls = (3, 0.8, 8, 50, 0.95, "")
    output, scores, prompt, status = ui.on_task(served, names, "sentiment", False, "质量很好", "", "", *controls)
    assert output in ("积极", "消极") and scores.visible
    assert {shown["label"] for shown in scores.value["confidences"]} == {"积极", "消极"}
    assert prompt == "情感分析：质量很好" and "引擎 mt5" in status
    output, scores, prompt, _ = ui.on_task(served, names, "question_generation", True, "不用的文本", "北京是首都",
                                           "北京", *controls)
    assert prompt == "根据给定的段落和答案生成对应的问题。\n段落：北京是首都\n答案：北京"
    assert not scores.visible and len(output.splitlines()) <= 3
    assert shown_error(ui.on_task, served, names, "question_generation", False, "", "北京是首都", "",
                       *controls).startswith("答案 为空")


def shown_error(handler, *args) -> str:
    """The message a handler's gr.Error puts in front of the user."""
    with pytest.raises(Exception) as caught:
        handler(*args)
    assert type(caught.value).__name__ == "Error"
    return caught.value.message


def test_page_errors_name_the_page_controls_and_api_errors_the_fields(served):
    """The page says 输入文本 or 第 2 条文本 where the API says text or texts[1]; Gradio API clients keep
    the names they sent."""
    long_text = "长" * 1001
    controls = (3, 0.8, 8, 50, 0.95, "")
    assert shown_error(ui.on_augment, served, long_text, None, *controls).startswith("输入文本 共 1001 字")
    assert shown_error(ui.on_augment_batch, served, f"好\n\n{long_text}", None, *controls).startswith(
        "第 2 条文本 共 1001 字")
    assert shown_error(ui.on_classify, served, " ", ["物流", "价格"], "constrained", False, 0.5).startswith(
        "输入文本 为空")
    assert shown_error(ui.on_classify, served, "物流很快", ["物流", "价格"], "constrained", True, 1.5).startswith(
        "多标签阈值 必须")
    assert shown_error(ui.api_augment_batch, served, ["好", long_text], 3, 8, 0.8, 50, 0.95, None,
                       None).startswith("texts[1] 共 1001 字")
    assert shown_error(ui.api_classify, served, " ", ["物流", "价格"], "constrained", False, 0.5,
                       None).startswith("text 为空")
    assert shown_error(ui.api_augment, served, 5, 3, 8, 0.8, 50, 0.95, None, None) == "text 应为字符串（收到 5）"
    assert shown_error(ui.api_augment_batch, served, "好", 3, 8, 0.8, 50, 0.95, None,
                       None) == "texts 应为字符串列表（收到 '好'）"
