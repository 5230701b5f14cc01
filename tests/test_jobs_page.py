"""File jobs on the page and through the Gradio API, on a real server (tiny mT5): gradio_client's /job_submit,
/job_status and /job_result; the 文件任务 tab in Chromium from upload to download; uploads as large as a job's
file while other bodies keep the small limit; and the tab's handlers in-process."""

from __future__ import annotations

import csv
import io
import json
import re
import time
import urllib.parse
from pathlib import Path

import openpyxl
import pytest
import requests

from app.errors import InvalidParameter
from app.ui import jobs_tab
from app.ui.files import uploaded
from app.ui.jobs_view import progress_markdown
from tests.conftest import run, start_server
from tests.test_jobs import labelled
from tests.test_jobs_api import gbk_file

DONE_WITHIN_S = 240
UPLOAD_LIMIT = 3_000_000  # the server's --max-file-bytes: three times its 1 MiB limit on other bodies
GBK_COLUMNS = ["编号", "评论", "情感", "公式"]


# --- the tab's handlers, in-process ---------------------------------------------------------------------

@pytest.fixture
def upload_folder(tmp_path, monkeypatch) -> Path:
    """Gradio's upload folder for this test: the handlers take files from there only."""
    folder = tmp_path / "gradio"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


def test_an_xlsx_upload_offers_its_sheets_and_previews_the_one_chosen(upload_folder):
    book = openpyxl.Workbook()
    book.active.title = "说明"
    book.active.append(["这一页不是数据"])
    data = book.create_sheet("数据")
    data.append(["id", "text", "label"])
    for number, text, label, _ in labelled(8):
        data.append([number, text, label])
    path = upload_folder / "two.xlsx"
    book.save(path)

    _, sheet, _, _, words = run(jobs_tab.on_file(None, str(path)))
    assert sheet.visible is True and [value for _, value in sheet.choices] == ["说明", "数据"] and sheet.value == "说明"
    assert "格式 XLSX" in words
    shown, sheet, text_col, label_col, words = run(jobs_tab.on_file(None, str(path), "数据"))
    assert sheet.value == "数据" and "工作表 数据" in words
    assert shown.value["headers"] == ["id", "text", "label"]
    assert [row[1] for row in shown.value["data"]] == [text for _, text, _, _ in labelled(8)[:jobs_tab.PREVIEW_ROWS]]
    assert text_col.value == "text"  # the column with the most text
    assert [value for _, value in label_col.choices] == [jobs_tab.NONE_LABEL, "id", "text", "label"]
    assert label_col.value == jobs_tab.NONE_LABEL


def test_a_file_outside_the_upload_folder_is_never_read(upload_folder, tmp_path):
    elsewhere = tmp_path / "secret.csv"
    elsewhere.write_text("text\n机密\n", "utf-8")
    with pytest.raises(InvalidParameter, match="重新上传"):
        uploaded(str(elsewhere))
    with pytest.raises(InvalidParameter, match="重新上传"):
        uploaded(str(upload_folder / ".." / "secret.csv"))
    with pytest.raises(InvalidParameter, match="请先上传文件"):
        uploaded(None)


def _options(**changes):
    values = dict(kind="augment", text_col="text", label_col=jobs_tab.NONE_LABEL, sheet=None, engine="mt5", n=2,
                  temperature=0.8, max_length=16, top_k=50, top_p=0.95, seed="7", number_forms=False, include_original=True,
                  quality_on=False, label_check="auto", labels="", multi_label=False, threshold=0.5)
    return jobs_tab.job_options(**{**values, **changes})


def test_the_controls_become_the_options_rest_takes():
    augment = _options()
    assert augment["label_col"] is None and augment["seed"] == 7 and augment["num_return_sequences"] == 2
    assert augment["quality"] == "off" and "labels" not in augment
    assert _options(label_col="label")["label_col"] == "label"
    classify = _options(kind="classify", labels="正面，负面", multi_label=True, threshold=0.3)
    assert classify["labels"] == "正面，负面" and classify["threshold"] == 0.3 and "seed" not in classify
    with pytest.raises(InvalidParameter, match="请选择文本列"):
        _options(text_col=None)
    with pytest.raises(InvalidParameter, match="候选标签"):
        _options(kind="classify", labels="  ")
    with pytest.raises(InvalidParameter, match="随机种子"):
        _options(seed="abc")


def test_the_progress_says_the_state_pace_and_time_left_in_chinese():
    view = {"id": "abc", "kind": "augment", "state": "running", "filename": "评论.csv", "rows_done": 40,
            "rows_total": 100, "rows_per_second": 4.5, "eta_seconds": 133.0, "notes": ["说明一"], "error": None,
            "counts": {"variants": 80, "rows_short": 1, "rows_skipped": 2, "dropped": {"duplicate": 3}}}
    shown = progress_markdown(view)
    for words in ("`████████░░░░░░░░░░░░` 40%", "状态：**运行中**", "已完成 40 / 100 行", "4.5 行/秒",
                  "剩余时间 约 2 分 13 秒", "生成 80 条变体", "过滤 3 条", "跳过 2 行", "说明：说明一", "只含已完成的行"):
        assert words in shown, shown
    failed = progress_markdown({**view, "state": "failed", "error": "模型未就绪"})
    assert "状态：**失败**" in failed and "原因：模型未就绪" in failed and "行/秒" not in failed


# --- the Gradio API, through gradio_client on a real server ---------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("jobs-page"), "--model-dir", str(tiny_models["huggingface"]),
                        "--max-file-bytes", str(UPLOAD_LIMIT))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url + "/", verbose=False, download_files=False)


def submit(client, path: Path, **options) -> dict:
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/job_submit", **options)


def wait_done(client, job_id: str) -> dict:
    deadline = time.monotonic() + DONE_WITHIN_S
    while (job := client.predict(job_id, api_name="/job_status"))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def fetch(client, job_id: str, fmt: str) -> tuple[dict, bytes]:
    """/job_result's file, and its bytes as the server hands them out."""
    file = client.predict(job_id, fmt, api_name="/job_result")
    response = requests.get(file["url"], timeout=30)
    assert response.status_code == 200
    return file, response.content


def csv_rows(raw: bytes) -> list[dict]:
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 with BOM: Excel reads it as UTF-8
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))


def assert_labels_follow_their_rows(rows: list[dict], n: int) -> None:
    """Every source row is there with variants, and every variant carries its own row's label and columns."""
    source = labelled(n)
    assert sorted({int(r["source_row"]) for r in rows}) == list(range(1, n + 1))
    for row in rows:
        number = int(row["source_row"]) - 1
        assert row["情感"] == source[number][2] and row["编号"] == str(number), row
    assert len(rows) > n  # variants beside the originals


def test_a_gbk_csv_with_labels_goes_through_gradio_client_in_every_format(client, server, tmp_path):
    job = submit(client, gbk_file(tmp_path), text_col="评论", label_col="情感", seed=4, max_length=12,
                 num_return_sequences=2)
    assert job["state"] in ("queued", "running") and job["rows_total"] == 12 and job["filename"] == "评论.csv"
    assert job["columns"] == GBK_COLUMNS and job["options"]["params"]["seed"] == 4
    job = wait_done(client, job["id"])
    assert job["state"] == "done" and job["rows_done"] == 12 and job["error"] is None, job

    file, raw = fetch(client, job["id"], "csv")
    rows = csv_rows(raw)
    assert list(rows[0]) == [*GBK_COLUMNS, "source_row", "variant", "similarity"]
    assert_labels_follow_their_rows(rows, 12)
    assert all(len([r for r in rows if r["source_row"] == str(i)]) <= 3 for i in range(1, 13))  # itself + 2
    # The name every surface gives the result: REST's attachment says the same.
    assert file["orig_name"] == f"评论-augment-{job['id']}.csv"
    disposition = requests.get(f"{server.url}/jobs/{job['id']}/result", timeout=30).headers["content-disposition"]
    assert urllib.parse.quote(file["orig_name"]) in disposition

    _, raw = fetch(client, job["id"], "jsonl")
    records = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    assert len(records) == len(rows) and all(r["情感"] == labelled(12)[r["source_row"] - 1][2] for r in records)
    file, raw = fetch(client, job["id"], "xlsx")
    table = list(openpyxl.load_workbook(io.BytesIO(raw)).active.iter_rows(values_only=True))
    assert file["orig_name"].endswith(".xlsx") and len(table) == len(rows) + 1


@pytest.mark.parametrize(("options", "said"), [
    ({"text_col": "内容"}, "没有名为“内容”的列；文件的列：编号, 评论, 情感, 公式"),
    ({"text_col": "评论", "label_col": "类别"}, "没有名为“类别”的列"),
    ({"text_col": "评论", "multi_label": "是"}, "multi_label 应为布尔值"),
    ({"text_col": "评论", "num_return_sequences": 99}, "num_return_sequences 必须在 1 到 10 之间"),
    ({"text_col": "评论", "kind": "classify"}, "分类任务需要候选标签"),
])
def test_a_bad_submission_is_a_clear_chinese_error_and_stores_nothing(client, server, tmp_path, options, said):
    from gradio_client.exceptions import AppError

    before = len(requests.get(server.url + "/jobs", timeout=10).json()["jobs"])
    with pytest.raises(AppError, match=re.escape(said)):
        submit(client, gbk_file(tmp_path), **options)
    assert len(requests.get(server.url + "/jobs", timeout=10).json()["jobs"]) == before


def test_a_file_on_the_server_named_as_an_upload_is_refused(server, tmp_path):
    """A raw Gradio API call naming a server path instead of uploading: Gradio must not copy it in for us."""
    secret = tmp_path / "secret.csv"
    secret.write_text("text\n服务器上的文件\n", "utf-8")
    before = len(requests.get(server.url + "/jobs", timeout=10).json()["jobs"])
    data = [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}, "text"] + [None] * 21
    event = requests.post(server.url + "/gradio_api/call/job_submit", json={"data": data}, timeout=10).json()
    answer = requests.get(f"{server.url}/gradio_api/call/job_submit/{event['event_id']}", timeout=30).text
    assert answer.startswith("event: error"), answer
    assert len(requests.get(server.url + "/jobs", timeout=10).json()["jobs"]) == before


def test_an_upload_as_large_as_a_job_file_passes_while_other_bodies_keep_the_small_limit(client, server, tmp_path):
    big = tmp_path / "大文件.csv"
    with open(big, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "备注"])
        writer.writerows([["今天天气很好。", "长" * 500_000], ["物流很快。", "短"]])
    assert 1_048_576 < big.stat().st_size < UPLOAD_LIMIT
    job = submit(client, big, text_col="text", max_length=8)
    assert job["rows_total"] == 2 and job["filename"] == "大文件.csv"
    assert wait_done(client, job["id"])["state"] == "done"

    too_big = requests.post(server.url + "/augment", json={"text": "好" * 600_000}, timeout=30)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"
    over = requests.post(server.url + "/gradio_api/upload", files={"files": ("over.csv", b"x" * (UPLOAD_LIMIT + 1))},
                         timeout=30)
    assert over.status_code == 413


# --- the page, in Chromium ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ui_browser():
    """tests/test_ui_browser.py's helpers (it skips, saying why, where Chromium is missing)."""
    return pytest.importorskip("tests.test_ui_browser")


@pytest.fixture(scope="module")
def browser(ui_browser):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=ui_browser.CHROMIUM, args=ui_browser.LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, ui_browser, server):
    from playwright.sync_api import expect

    page = ui_browser._open(browser, server.url)
    expect(ui_browser.banner(page)).to_contain_text("当前引擎")
    page.get_by_role("tab", name="文件任务").click()
    yield page
    page.context.close()


def progress(page):
    return page.locator("#dpp-job-progress")


def upload(page, path: Path) -> None:
    from playwright.sync_api import expect

    page.locator("#dpp-job-file input[type=file]").set_input_files(str(path))
    expect(page.get_by_text(re.compile(r"^格式 CSV"))).to_be_visible()


def start_job(page, server, label_col: str | None = None, **numbers: str) -> str:
    """Pick the label column, set the numbers ("每行生成数量": "2"), press 开始; the new job's id, once the
    progress shows it."""
    from playwright.sync_api import expect

    known = {job["id"] for job in requests.get(server.url + "/jobs", timeout=10).json()["jobs"]}
    if label_col:
        page.get_by_label("标签列（可选）").click()
        page.get_by_role("option", name=label_col, exact=True).click()
    for name, value in numbers.items():
        page.get_by_label(f"number input for {name}").locator("visible=true").fill(value)
    page.get_by_role("button", name="开始", exact=True).click()
    deadline = time.monotonic() + 30
    while not (new := [job["id"] for job in requests.get(server.url + "/jobs", timeout=10).json()["jobs"]
                       if job["id"] not in known]):
        assert time.monotonic() < deadline, "no job was stored"
        time.sleep(0.1)
    expect(progress(page)).to_contain_text(f"编号 {new[0]}")
    return new[0]


@pytest.mark.browser
def test_the_page_runs_a_file_job_from_upload_to_download_and_lists_it_after_a_reload(page, server, tmp_path):
    from playwright.sync_api import expect

    upload(page, gbk_file(tmp_path))
    expect(page.get_by_text("格式 CSV · 编码 GB18030 · 4 列：编号、评论、情感、公式")).to_be_visible()
    cells = page.locator('[role="gridcell"]').locator("visible=true")
    expect(cells.filter(has_text=labelled(12)[0][1]).first).to_be_visible()  # the preview's first row
    expect(page.get_by_label("文本列")).to_have_value("评论")  # the column with the most text

    job_id = start_job(page, server, label_col="情感", 每行生成数量="2", 最大长度="12")
    expect(progress(page)).to_contain_text(f"评论.csv · 增强 · 编号 {job_id}")
    expect(progress(page)).to_contain_text("状态：已完成 · 已完成 12 / 12 行", timeout=DONE_WITHIN_S * 1000)
    assert "Traceback" not in page.locator("body").inner_text()

    page.get_by_role("button", name="导出 CSV").click()
    note = page.get_by_text(re.compile(r"^已导出 \d+ 行（CSV）"))
    expect(note).to_be_visible()
    with page.expect_download() as download:
        page.locator("#dpp-job-result a[download]").click()
    assert download.value.suggested_filename == f"评论-augment-{job_id}.csv"
    rows = csv_rows(Path(download.value.path()).read_bytes())
    assert len(rows) == int(re.search(r"已导出 (\d+) 行", note.inner_text())[1])
    assert_labels_follow_their_rows(rows, 12)

    page.reload()
    page.get_by_role("tab", name="文件任务").click()
    listed = page.locator('[role="gridcell"]').locator("visible=true")
    expect(listed.filter(has_text=job_id).first).to_be_visible()
    expect(progress(page)).to_contain_text(f"编号 {job_id}")  # the newest job is the current one again
    expect(progress(page)).to_contain_text("状态：已完成")


@pytest.mark.browser
def test_a_running_job_is_cancelled_from_the_page(page, server, tmp_path):
    from playwright.sync_api import expect

    path = tmp_path / "many.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([("text",), *((text,) for _, text, _, _ in labelled(2000))])
    upload(page, path)
    job_id = start_job(page, server, 最大长度="64")
    page.get_by_role("button", name="取消", exact=True).click()
    expect(progress(page)).to_contain_text("状态：已取消")
    expect(progress(page)).to_contain_text("导出的文件只含已完成的行")
    job = requests.get(f"{server.url}/jobs/{job_id}", timeout=10).json()
    assert job["state"] == "cancelled" and job["rows_done"] < 2000
