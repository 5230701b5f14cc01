"""File jobs through REST on a real server (tiny mT5): real files in every format, results in every format,
cancel and delete, errors, and a job that survives kill -9."""

from __future__ import annotations

import csv
import io
import json
import signal
import time

import openpyxl
import pytest
import requests

from tests.conftest import start_server
from tests.test_jobs import labelled

DONE_WITHIN_S = 240


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("jobs"), "--model-dir", str(tiny_models["huggingface"]))
    yield live
    live.stop()


def submit(url, path, **options):
    with open(path, "rb") as handle:
        return requests.post(url + "/jobs", files={"file": (path.name, handle)},
                             data={k: str(v) for k, v in options.items()}, timeout=60)


def wait_done(url, job_id, timeout=DONE_WITHIN_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{url}/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished in {timeout}s: {job}")


def result(url, job_id, fmt):
    response = requests.get(f"{url}/jobs/{job_id}/result", params={"format": fmt}, timeout=60)
    assert response.status_code == 200, response.text
    return response


def csv_rows(response):
    assert response.content.startswith(b"\xef\xbb\xbf")  # UTF-8 with BOM: Excel reads it as UTF-8
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))


def gbk_file(tmp_path, n=12):
    path = tmp_path / "评论.csv"
    with open(path, "w", encoding="gbk", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["编号", "评论", "情感", "公式"])
        for i, (_, text, label, _) in enumerate(labelled(n)):
            writer.writerow([i, text, label, "=1+1" if i == 0 else f"备注{i}"])
    return path


def test_a_gbk_csv_with_labels_and_extra_columns_comes_back_in_every_format(server, tmp_path):
    response = submit(server.url, gbk_file(tmp_path), kind="augment", text_col="评论", label_col="情感", seed=4,
                      max_length=12, num_return_sequences=2, quality="on")  # the server's default is off
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["state"] in ("queued", "running") and job["rows_total"] == 12 and job["filename"] == "评论.csv"
    job = wait_done(server.url, job["id"])
    assert job["state"] == "done" and job["rows_done"] == 12 and job["error"] is None, job

    rows = csv_rows(result(server.url, job["id"], "csv"))
    assert list(rows[0]) == ["编号", "评论", "情感", "公式", "source_row", "variant", "similarity",
                             "label_probability"], json.dumps(job, ensure_ascii=False)
    originals = [r for r in rows if r["variant"] == "0"]
    assert [r["编号"] for r in originals] == [str(i) for i in range(12)]
    assert originals[0]["公式"] == "'=1+1"  # written so that Excel shows it and never runs it
    for row in rows:
        source = labelled(12)[int(row["source_row"]) - 1]
        assert row["情感"] == source[2]  # every variant carries its row's label

    sheet = openpyxl.load_workbook(io.BytesIO(result(server.url, job["id"], "xlsx").content)).active
    table = list(sheet.iter_rows(values_only=True))
    assert table[0][:4] == ("编号", "评论", "情感", "公式") and len(table) == len(rows) + 1
    formula = sheet.cell(row=2, column=4)
    assert formula.value == "=1+1" and formula.data_type == "s"  # text, not a formula

    lines = result(server.url, job["id"], "jsonl").content.decode("utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(rows) and records[0]["source_row"] == 1 and records[0]["公式"] == "=1+1"
    assert all(r["情感"] == labelled(12)[r["source_row"] - 1][2] for r in records)

    disposition = result(server.url, job["id"], "csv").headers["content-disposition"]
    assert "attachment" in disposition and "filename*=UTF-8''" in disposition


def test_an_xlsx_with_two_sheets_is_read_from_the_sheet_asked_for(server, tmp_path):
    book = openpyxl.Workbook()
    book.active.title = "说明"
    book.active.append(["这一页不是数据"])
    data = book.create_sheet("数据")
    data.append(["text", "label"])
    for _, text, label, _ in labelled(5):
        data.append([text, label])
    path = tmp_path / "two.xlsx"
    book.save(path)
    job = wait_done(server.url, submit(server.url, path, kind="classify", text_col="text", sheet="数据",
                                       labels="正面,负面").json()["id"])
    assert job["state"] == "done"
    rows = csv_rows(result(server.url, job["id"], "csv"))
    assert [r["text"] for r in rows] == [text for _, text, _, _ in labelled(5)]
    assert all(r["predicted_label"] in ("正面", "负面") for r in rows)
    assert all(abs(float(r["prob_正面"]) + float(r["prob_负面"]) - 1) < 1e-3 for r in rows)
    missing = submit(server.url, path, kind="classify", text_col="text", sheet="第三页", labels="正面,负面")
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "sheet"


def test_a_jsonl_file_with_a_bad_line_is_refused_naming_the_line(server, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "今天天气很好。"}\n{"text": "物流很快。"}\n[1, 2]\n', "utf-8")
    response = submit(server.url, path, text_col="text")
    body = response.json()
    assert response.status_code == 422 and body["error"]["code"] == "file_invalid"
    assert "第 3 行" in body["error"]["message"] and body["error"]["field"] == "file"
    assert all(job["filename"] != "bad.jsonl" for job in requests.get(server.url + "/jobs", timeout=10).json()["jobs"])


@pytest.mark.parametrize(("data", "field"), [
    ({"text_col": "text", "num_return_sequences": "三"}, "num_return_sequences"),
    ({"text_col": "text", "temperature": "9"}, "temperature"),
    ({"kind": "augment"}, "text_col"),
    ({"text_col": "text", "unknown_option": "1"}, "unknown_option"),
])
def test_bad_options_are_a_422_naming_the_field(server, tmp_path, data, field):
    path = tmp_path / "ok.csv"
    path.write_text("text\n今天天气很好。\n", "utf-8")
    with open(path, "rb") as handle:
        response = requests.post(server.url + "/jobs", files={"file": ("ok.csv", handle)}, data=data, timeout=30)
    assert response.status_code == 422 and response.json()["error"]["field"] == field, response.text


def test_a_request_without_a_file_is_a_422_naming_it(server):
    response = requests.post(server.url + "/jobs", data={"text_col": "text"}, timeout=30)
    assert response.status_code == 422 and response.json()["error"]["field"] == "file"


def test_jobs_are_listed_cancelled_and_deleted(server, tmp_path):
    path = tmp_path / "many.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([("text",), *((text,) for _, text, _, _ in labelled(2000))])
    job = submit(server.url, path, text_col="text", max_length=64).json()
    listed = requests.get(server.url + "/jobs", timeout=10).json()["jobs"]
    assert listed[0]["id"] == job["id"]  # newest first
    cancelled = requests.post(f"{server.url}/jobs/{job['id']}/cancel", timeout=10).json()
    assert cancelled["state"] == "cancelled"
    time.sleep(1)
    after = requests.get(f"{server.url}/jobs/{job['id']}", timeout=10).json()
    assert after["state"] == "cancelled" and after["rows_done"] < 2000  # it stopped, and stays stopped
    partial = csv_rows(result(server.url, job["id"], "csv"))
    assert len({r["source_row"] for r in partial}) == after["rows_done"]  # what it did is kept
    assert requests.delete(f"{server.url}/jobs/{job['id']}", timeout=10).json() == {"id": job["id"], "deleted": True}
    gone = requests.get(f"{server.url}/jobs/{job['id']}", timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert requests.get(f"{server.url}/jobs/{job['id']}/result", timeout=10).status_code == 404


def test_a_result_in_an_unknown_format_is_a_422(server, tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("text\n今天天气很好。\n", "utf-8")
    job = wait_done(server.url, submit(server.url, path, text_col="text", max_length=8).json()["id"])
    response = requests.get(f"{server.url}/jobs/{job['id']}/result", params={"format": "pdf"}, timeout=10)
    assert response.status_code == 422 and response.json()["error"]["field"] == "format"
    report = requests.get(f"{server.url}/jobs/{job['id']}/report", timeout=10).json()
    assert report["rows_done"] == 1 and report["rows_skipped"] == []


def test_a_file_over_the_limit_is_a_413(tiny_models, tmp_path):
    live = start_server(tmp_path, "--model-dir", str(tiny_models["huggingface"]), "--max-file-bytes", "2000",
                        "--engine", "lexical")
    try:
        path = tmp_path / "big.csv"
        path.write_text("text\n" + "今天天气很好。\n" * 2000, "utf-8")
        response = submit(live.url, path, text_col="text")
        assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
        assert "--max-file-bytes" in response.json()["error"]["message"]
        small = tmp_path / "small.csv"
        small.write_text("text\n" + "今天天气很好。\n" * 20, "utf-8")
        assert submit(live.url, small, text_col="text").status_code == 202
    finally:
        live.stop()


def test_a_job_killed_9_midway_resumes_on_restart_and_equals_an_uninterrupted_run(tiny_models, tmp_path):
    source = tmp_path / "big.csv"
    with open(source, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label"])
        writer.writerows((i, text, label) for i, (_, text, label, _) in enumerate(labelled(3000)))
    options = {"text_col": "text", "label_col": "label", "seed": 21, "max_length": 8, "num_return_sequences": 2}
    data = tmp_path / "data"
    flags = ("--model-dir", str(tiny_models["huggingface"]), "--engine", "mt5", "--data-dir", str(data))
    first = start_server(tmp_path, *flags)
    try:
        job = submit(first.url, source, **options).json()
        deadline = time.monotonic() + DONE_WITHIN_S
        while (now := requests.get(f"{first.url}/jobs/{job['id']}", timeout=10).json())["rows_done"] < 600:
            assert now["state"] in ("queued", "running") and time.monotonic() < deadline
            time.sleep(0.05)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
    finally:
        first.stop()
    assert now["rows_done"] < 3000
    second = start_server(tmp_path, *flags)
    try:
        resumed = wait_done(second.url, job["id"])
        assert resumed["state"] == "done" and resumed["rows_done"] == 3000
        straight = wait_done(second.url, submit(second.url, source, **options).json()["id"])
        got, want = (result(second.url, j["id"], "jsonl").content for j in (resumed, straight))
        assert got == want and len(got.splitlines()) > 3000  # row for row, variants included
        assert resumed["counts"] == straight["counts"]
    finally:
        second.stop()


def test_a_data_directory_that_cannot_be_written_is_a_503_that_says_whom_to_ask(tiny_models, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.write_text("a file where the data directory should be", "utf-8")
    live = start_server(tmp_path, "--model-dir", str(tiny_models["huggingface"]), "--engine", "lexical",
                        "--data-dir", str(occupied / "data"))
    try:
        path = tmp_path / "small.csv"
        path.write_text("text\n今天天气很好。\n", "utf-8")
        response = submit(live.url, path, text_col="text")
        error = response.json()["error"]
        assert response.status_code == 503 and error["code"] == "store_unavailable"
        assert "--data-dir" in error["message"] and str(tmp_path) not in error["message"]
        assert requests.get(live.url + "/jobs", timeout=10).json() == {"jobs": []}
        assert requests.get(live.url + "/jobs/0123456789abcdef", timeout=10).status_code == 404
        assert requests.get(live.url + "/healthz", timeout=10).status_code == 200
        assert "the job store" in live.log_text() and "Traceback" not in live.log_text()
    finally:
        live.stop()
