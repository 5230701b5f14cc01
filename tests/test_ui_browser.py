"""The page as a user sees it: Debian's Chromium, driven by Playwright, against a real server."""

from __future__ import annotations

import csv
import functools
import io
import re
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("no chromium binary on PATH (Debian package 'chromium'); browser tests need it",
                allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
RUN_TIMEOUT_MS = 90_000
TEXT = "这款耳机的音质很好，佩戴也很舒适。"
BATCH_LINES = ["今天的天气非常好，适合出去散步。", "这家餐厅的服务态度很差，菜也不好吃。"]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def _open(browser, url: str, *, clipboard: bool = False) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 1600}, accept_downloads=True)
    if clipboard:
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page = context.new_page()
    page.set_default_timeout(RUN_TIMEOUT_MS)
    page.goto(url)
    return page


@pytest.fixture
def page(browser, live_server):
    page = _open(browser, live_server.url, clipboard=True)
    expect(banner(page)).to_contain_text("当前引擎")
    yield page
    page.context.close()


def banner(page: Page):
    return page.locator(".dpp-banner").first


def copyable_box(page: Page, name: str):
    # The label wraps a copy button too, so the textarea has no accessible name of its own.
    label = page.locator("label").filter(has=page.get_by_text(name, exact=True))
    return label.locator("textarea")


def result_box(page: Page, number: int):
    return copyable_box(page, f"结果 {number}")


def visible_button(page: Page, name: str):
    return page.get_by_role("button", name=name, exact=True).locator("visible=true")


def toast(page: Page):
    return page.get_by_test_id("toast-body")


def run_single(page: Page, text: str) -> list[str]:
    page.get_by_label("输入文本").fill(text)
    page.get_by_role("button", name="开始增强").click()
    status = page.get_by_text(re.compile(r"生成 \d+ 条不同的结果"))
    expect(status).to_be_visible()
    return [result_box(page, i).input_value() for i in range(1, 4)]


def read_clipboard(page: Page, differs_from: str, timeout_s: float = 10) -> str:
    """The page writes the clipboard without awaiting; poll until the value changes."""
    deadline = time.monotonic() + timeout_s
    value = page.evaluate("navigator.clipboard.readText()")
    while value == differs_from and time.monotonic() < deadline:
        page.wait_for_timeout(100)
        value = page.evaluate("navigator.clipboard.readText()")
    return value


def test_page_loads_with_all_tabs_and_engine_banner(page):
    for tab in ("单条增强", "批量增强", "零样本分类", "更多任务"):
        expect(page.get_by_role("tab", name=tab)).to_be_visible()
    expect(banner(page)).to_contain_text("mt5")
    expect(banner(page)).to_contain_text("设备 cpu")
    expect(banner(page)).to_contain_text("解码：自带解码循环")
    expect(page).to_have_title("dpp 中文文本增强")


def test_single_augment_shows_three_distinct_variants(page):
    variants = run_single(page, TEXT)
    expect(page.get_by_text(re.compile(r"^生成 3 条不同的结果（引擎 mt5，耗时 \d+ ms）$"))).to_be_visible()
    for number in (1, 2, 3):
        expect(result_box(page, number)).to_be_visible()
    expect(result_box(page, 4)).to_be_hidden()
    assert all(v.strip() for v in variants), variants
    assert all(v.strip() != TEXT for v in variants), variants
    assert len(set(variants)) == 3, variants


def test_empty_text_shows_readable_error_not_traceback(page):
    page.get_by_label("输入文本").fill("")
    page.get_by_role("button", name="开始增强").click()
    expect(toast(page)).to_contain_text("为空")
    expect(result_box(page, 1)).to_be_hidden()
    body = page.locator("body").inner_text()
    assert "Traceback" not in body
    assert 'File "' not in body


def test_non_integer_seed_shows_readable_error(page):
    page.get_by_label("输入文本").fill(TEXT)
    page.get_by_label("随机种子（可选）").locator("visible=true").fill("abc")
    page.get_by_role("button", name="开始增强").click()
    expect(toast(page)).to_contain_text("随机种子")
    expect(toast(page)).to_contain_text("abc")
    expect(result_box(page, 1)).to_be_hidden()
    assert "Traceback" not in page.locator("body").inner_text()


def test_batch_keeps_input_order_and_downloads_csv(page):
    page.get_by_role("tab", name="批量增强").click()
    page.get_by_label("每行一条文本").fill("\n".join(BATCH_LINES))
    visible_button(page, "批量增强").click()
    status = page.get_by_text(re.compile(r"^2 条文本共生成 (\d+) 条结果（引擎 mt5，耗时 \d+ ms）$"))
    expect(status).to_be_visible()
    found = int(re.search(r"共生成 (\d+) 条", status.inner_text()).group(1))
    assert found >= 2

    originals = page.locator('[role="gridcell"][aria-colindex="1"]')
    expect(originals).to_have_count(found)
    shown_originals = [cell.strip() for cell in originals.all_inner_texts()]
    shown_variants = [cell.strip() for cell in
                      page.locator('[role="gridcell"][aria-colindex="3"]').all_inner_texts()]
    assert set(shown_originals) == set(BATCH_LINES)
    # Input order: every row of the first line comes before any row of the second.
    assert shown_originals == sorted(shown_originals, key=BATCH_LINES.index)

    with page.expect_download() as download_info:
        visible_button(page, "下载 CSV").click()
    raw = Path(download_info.value.path()).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf"), raw[:16]
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert rows[0] == ["原文", "标签", "增强结果", "相似度", "说明"]
    body = rows[1:]
    assert len(body) == found
    assert all(len(row) == 5 and row[2].strip() and 0 <= float(row[3]) <= 1 for row in body), body
    assert [row[0] for row in body] == shown_originals
    assert [row[2] for row in body] == shown_variants
    assert download_info.value.suggested_filename.endswith(".csv")

    # 复制全部 on this tab copies the table, one tab-separated row per line.
    page.evaluate("navigator.clipboard.writeText('sentinel')")
    visible_button(page, "复制全部").click()
    copied = read_clipboard(page, differs_from="sentinel")
    assert copied == "\n".join("\t".join(row) for row in body)


def test_the_quality_gate_says_what_it_dropped_and_no_input_leaves_the_batch_table(page):
    """The tiny model answers noise: with the gate on (these servers start with it off), the noise is dropped,
    the status line counts it by reason, and each input keeps a row that says why it got nothing."""
    page.get_by_role("tab", name="批量增强").click()
    page.get_by_label("每行一条文本").fill("\n".join(BATCH_LINES))
    page.get_by_text("质量过滤", exact=True).locator("visible=true").click()
    page.get_by_label("启用质量过滤").locator("visible=true").check()
    visible_button(page, "批量增强").click()
    status = page.get_by_text(re.compile(r"^2 条文本共生成 0 条结果.*；过滤 \d+ 条：.*；2 条文本没有结果"))
    expect(status).to_be_visible()
    originals = page.locator('[role="gridcell"][aria-colindex="1"]')
    expect(originals).to_have_count(2)
    assert [cell.strip() for cell in originals.all_inner_texts()] == BATCH_LINES
    reasons = [cell.strip() for cell in page.locator('[role="gridcell"][aria-colindex="5"]').all_inner_texts()]
    assert all(reason.startswith("只生成 0 条（要 3 条）：其余候选没有通过质量过滤；过滤 ") for reason in reasons), reasons


def test_copy_buttons_put_variants_on_clipboard(page):
    # 127.0.0.1 is a secure context, so navigator.clipboard is there once permissions are granted.
    assert page.evaluate("window.isSecureContext")
    variants = run_single(page, TEXT)
    assert all(variants)

    page.evaluate("navigator.clipboard.writeText('sentinel')")
    visible_button(page, "复制全部").click()
    assert read_clipboard(page, differs_from="sentinel") == "\n".join(variants)

    page.evaluate("navigator.clipboard.writeText('sentinel')")
    visible_button(page, "复制为Markdown").click()
    expected = "\n".join([f"**原文**：{TEXT}", "", "**增强结果**：", "",
                          *(f"{i}. {v}" for i, v in enumerate(variants, 1))])
    assert read_clipboard(page, differs_from="sentinel") == expected


def test_banner_names_missing_model_directory(browser, server_without_model):
    state = server_without_model.settled_readiness().json()
    assert state["status"] == "unavailable", state

    missing = str((server_without_model.log_dir.parent / "missing-model").resolve())
    page = _open(browser, server_without_model.url)
    try:
        expect(banner(page)).to_contain_text("模型未就绪")
        expect(banner(page)).to_contain_text("模型目录 missing-model ")
        # The page is open to anyone: it names the directory, not where the server keeps it.
        assert missing not in banner(page).inner_text()
        assert "当前引擎" not in banner(page).inner_text()
    finally:
        page.context.close()


def test_without_weights_the_page_says_lexical_serves_and_why_and_it_works(browser, server_without_weights):
    page = _open(browser, server_without_weights.url)
    try:
        expect(banner(page)).to_contain_text("lexical")
        expect(banner(page)).to_contain_text("未加载")
        expect(banner(page)).to_contain_text("missing-model")
        expect(page.get_by_label("引擎").first).to_have_value("同义词替换（无需模型权重）")
        # The controls this engine does not read are hidden, not only described.
        expect(page.get_by_label("最大长度").first).to_be_hidden()
        expect(page.get_by_label("Top-K").first).to_be_hidden()
        expect(page.get_by_label("温度").first).to_be_visible()
        variants = run_single(page, "医生建议患者每天按时服用药物，如果症状没有缓解，请立即到医院就诊。")
        assert variants[0] and "引擎 lexical" in page.locator("body").inner_text()
        # A text with nothing to rewrite: the page says so in words.
        page.get_by_label("输入文本").fill("OK 123 ABC！")
        page.get_by_role("button", name="开始增强").click()
        expect(page.get_by_text(re.compile(r"只生成 0 条（要 3 条）：句中没有可改写的词语"))).to_be_visible()
    finally:
        page.context.close()


def test_with_weights_the_engine_selector_switches_to_lexical(page):
    expect(page.get_by_label("最大长度").first).to_be_visible()
    page.get_by_label("引擎").first.click()
    page.get_by_role("option", name="同义词替换（无需模型权重）").click()
    expect(page.get_by_label("最大长度").first).to_be_hidden()
    expect(page.get_by_label("Top-P").first).to_be_hidden()
    run_single(page, "医生建议患者每天按时服用药物，如果症状没有缓解，请立即到医院就诊。")
    expect(page.get_by_text(re.compile(r"引擎 lexical"))).to_be_visible()
    page.get_by_label("引擎").first.click()
    page.get_by_role("option", name="mT5 模型", exact=True).click()
    expect(page.get_by_label("最大长度").first).to_be_visible()


def classify_in_page(page: Page, text: str, tags: list[str]) -> None:
    """Open the classification tab, enter the text and each tag (typed, then Enter), and run."""
    page.get_by_role("tab", name="零样本分类").click()
    page.get_by_label("待分类文本").fill(text)
    box = page.get_by_label("候选标签（2 到 50 个）")
    for tag in tags:
        box.fill(tag)
        box.press("Enter")
    page.get_by_role("button", name="开始分类").click()


def test_classify_shows_a_bar_per_label_from_tags_and_separated_strings(page):
    classify_in_page(page, "物流很快，包装也很好，就是价格有点贵。", ["物流、价格，客服", "质量"])
    expect(page.get_by_text(re.compile(r"^答案：\S+（概率 [\d.]+%）（引擎 mt5，耗时 \d+ ms）$"))).to_be_visible()
    bars = page.locator("meter")
    expect(bars).to_have_count(4)
    shown = {bar.get_attribute("aria-label"): float(bar.get_attribute("value")) for bar in bars.all()}
    assert set(shown) == {"物流", "价格", "客服", "质量"}
    assert abs(sum(shown.values()) - 1) < 1e-6
    expect(page.get_by_test_id("label-output-value")).to_have_text(max(shown, key=shown.get))


def test_classify_with_one_label_shows_a_readable_error(page):
    classify_in_page(page, "物流很快", ["物流"])
    expect(toast(page)).to_contain_text("2 到 50")
    assert "Traceback" not in page.locator("body").inner_text()


def test_more_tasks_shows_the_fields_of_the_chosen_task_and_its_prompt(page):
    page.get_by_role("tab", name="更多任务").click()
    page.get_by_label("任务").click()
    page.get_by_role("option", name="问题生成").click()
    expect(page.get_by_label("段落")).to_be_visible()
    expect(page.get_by_label("答案", exact=True)).to_be_visible()
    page.get_by_label("段落").fill("北京是中国的首都。")
    page.get_by_label("答案", exact=True).fill("北京")
    page.get_by_role("button", name="运行任务").click()
    expect(page.get_by_text(re.compile(r"^\d 条结果（引擎 mt5，耗时 \d+ ms）$"))).to_be_visible()
    expect(page.get_by_label("实际发送给模型的提示词")).to_have_value(
        "根据给定的段落和答案生成对应的问题。\n段落：北京是中国的首都。\n答案：北京")

    page.get_by_label("任务").click()
    page.get_by_role("option", name="情感分析").click()
    expect(page.get_by_label("段落")).to_be_hidden()
    page.get_by_label("输入文本").locator("visible=true").fill("质量很好，下次还来买。")
    page.get_by_role("button", name="运行任务").click()
    expect(page.get_by_label("实际发送给模型的提示词")).to_have_value("情感分析：质量很好，下次还来买。")
    bars = page.locator("meter").locator("visible=true")
    expect(bars).to_have_count(2)
    assert {bar.get_attribute("aria-label") for bar in bars.all()} == {"积极", "消极"}
    expect(copyable_box(page, "结果（每行一条）")).to_have_value(re.compile("^(积极|消极)$"))


# --- under load: the page's work is counted, refused politely, stopped, and cancelled with its tab -------

PAUSE_S = 4  # each call of the slow echo engine


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """A real server whose engine call takes PAUSE_S seconds, with room for one waiting request."""
    from tests.conftest import start_server

    server = start_server(tmp_path_factory.mktemp("slow"), "--engine", "mt5", "--max-queue", "1",
                          program=("-m", "tests.slow_engine"), DPP_TEST_ENGINE_PAUSE_S=str(PAUSE_S))
    yield server
    server.stop()


def queue_of(server) -> dict:
    import requests

    return requests.get(server.url + "/readyz", timeout=5).json()["queue"]


def wait_for_queue(server, running: int, waiting: int, within_s: float) -> float:
    """Seconds until /readyz shows this queue; fails after `within_s`."""
    started = time.monotonic()
    while queue_of(server) != {"running": running, "waiting": waiting, "max_queue": 1}:
        assert time.monotonic() - started < within_s, queue_of(server)
        time.sleep(0.05)
    return time.monotonic() - started


def start_augment(page: Page, text: str) -> None:
    page.get_by_label("输入文本").fill(text)
    page.get_by_role("button", name="开始增强").click()


def test_the_stop_button_cancels_the_request_and_frees_its_place(browser, slow_server):
    page = _open(browser, slow_server.url)
    try:
        expect(banner(page)).to_contain_text("当前引擎")
        start_augment(page, "要停止的")
        wait_for_queue(slow_server, running=1, waiting=0, within_s=PAUSE_S * 2)
        visible_button(page, "停止").click()
        expect(page.get_by_text("已停止：本次请求已取消")).to_be_visible()
        assert wait_for_queue(slow_server, running=0, waiting=0, within_s=PAUSE_S) < PAUSE_S / 2
    finally:
        page.context.close()
    assert "augment engine=mt5 items=1" not in slow_server.log_text()


def test_closing_the_tab_cancels_its_work(browser, slow_server):
    page = _open(browser, slow_server.url)
    expect(banner(page)).to_contain_text("当前引擎")
    start_augment(page, "关掉页面")
    wait_for_queue(slow_server, running=1, waiting=0, within_s=PAUSE_S * 3)
    page.context.close()
    # Gone well before its engine call could have ended on its own.
    assert wait_for_queue(slow_server, running=0, waiting=0, within_s=PAUSE_S) < PAUSE_S / 2
    assert "a page was closed; 1 of its requests were cancelled" in slow_server.log_text()


def test_a_full_queue_refuses_the_page_in_the_same_words_as_rest(browser, slow_server):
    from concurrent.futures import ThreadPoolExecutor

    import requests

    page = _open(browser, slow_server.url)
    try:
        expect(banner(page)).to_contain_text("当前引擎")
        with ThreadPoolExecutor(2) as pool:
            post = functools.partial(requests.post, slow_server.url + "/augment", timeout=60)
            first = pool.submit(post, json={"text": "占用"})
            wait_for_queue(slow_server, running=1, waiting=0, within_s=PAUSE_S * 3)
            second = pool.submit(post, json={"text": "排队"})
            wait_for_queue(slow_server, running=1, waiting=1, within_s=PAUSE_S)
            start_augment(page, "页面的请求")
            expect(toast(page)).to_contain_text("服务繁忙：排队的请求已满（1 个）")
            refused = requests.post(slow_server.url + "/augment", json={"text": "REST 的请求"}, timeout=60)
            said = refused.json()["error"]["message"]
            assert refused.status_code == 503 and said.split("，请")[0] in toast(page).inner_text()
            assert first.result().status_code == second.result().status_code == 200
    finally:
        page.context.close()
