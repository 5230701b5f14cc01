"""`python -m app.jobs` as users run it: a subprocess on real files with the tiny mT5, no server. A run killed
midway and resumed with --resume writes the same file as a run straight through; bad input exits 2 with
the reason."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import openpyxl
import pytest

from app.jobs.store import JobStore
from tests.conftest import ROOT, server_env
from tests.test_jobs import labelled

RUN_TIMEOUT_S = 300
ROWS = 900


def cli(*args, tiny, tmp_path, wait=True):
    command = [sys.executable, "-m", "app.jobs", *map(str, args), "--model-dir", str(tiny),
               "--data-dir", str(tmp_path / "data"), "--log-dir", str(tmp_path / "logs")]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=server_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=ROOT, env=server_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "训练集.csv"
    with open(path, "w", encoding="gb18030", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label", "note"])
        writer.writerows(labelled(ROWS))
    return path


AUGMENT = ("--text-col", "text", "--label-col", "label", "--seed", "5", "--max-length", "8",
           "--num-return-sequences", "2", "--engine", "mt5")


def test_a_run_writes_every_row_with_its_label_a_report_and_no_state_left(tiny_models, tmp_path, source):
    out = tmp_path / "增强.xlsx"
    done = cli("augment", source, "-o", out, *AUGMENT, tiny=tiny_models["huggingface"], tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"done: {ROWS} rows" in done.stdout and "行" in done.stderr  # the tqdm bar counts rows
    table = list(openpyxl.load_workbook(out, read_only=True).active.iter_rows(values_only=True))
    header, rows = table[0], [dict(zip(table[0], row)) for row in table[1:]]
    assert header[:4] == ("id", "text", "label", "note") and "source_row" in header and "variant" in header
    assert sorted({row["source_row"] for row in rows}) == list(range(1, ROWS + 1))
    source_rows = labelled(ROWS)
    assert all(row["label"] == source_rows[row["source_row"] - 1][2] for row in rows)
    originals = [row for row in rows if row["variant"] == 0]
    assert [row["text"] for row in originals] == [text for _, text, _, _ in source_rows]
    report = json.loads((tmp_path / "增强.report.json").read_text("utf-8"))
    assert {"rows_short", "rows_skipped"} <= set(report)
    assert not (tmp_path / "增强.xlsx.dpp-job").exists() and not (tmp_path / "增强.xlsx.part").exists()


def test_a_run_killed_midway_resumes_and_writes_what_a_straight_run_writes(tiny_models, tmp_path, source):
    tiny = tiny_models["huggingface"]
    straight = tmp_path / "straight.jsonl"
    assert cli("augment", source, "-o", straight, *AUGMENT, tiny=tiny, tmp_path=tmp_path).returncode == 0

    out = tmp_path / "resumed.jsonl"
    running = cli("augment", source, "-o", out, *AUGMENT, tiny=tiny, tmp_path=tmp_path, wait=False)
    store, deadline = JobStore(tmp_path / "data"), time.monotonic() + RUN_TIMEOUT_S
    while True:
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        ours = [job for job in store.list() if job.state == "running" and job.rows_done]
        if ours:
            break
        time.sleep(0.05)
    running.send_signal(signal.SIGKILL)
    running.communicate(timeout=30)
    killed_at = ours[0].rows_done
    assert 0 < killed_at < ROWS and not out.exists()

    again = cli("augment", source, "-o", out, *AUGMENT, tiny=tiny, tmp_path=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr  # an unfinished run is never started over silently
    resumed = cli("augment", source, "-o", out, *AUGMENT, "--resume", tiny=tiny, tmp_path=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == straight.read_bytes()
    lines = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert sorted({line["source_row"] for line in lines}) == list(range(1, ROWS + 1))


@pytest.mark.parametrize(("args", "words"), [
    (("--text-col", "正文"), "正文"),  # no such column
    (("--text-col", "text", "--temperature", "0"), "temperature"),
    (("--text-col", "text", "--labels", "好"), "labels"),
])
def test_bad_input_exits_2_naming_the_problem(tiny_models, tmp_path, source, args, words):
    out = tmp_path / "out.csv"
    kind = "classify" if "--labels" in args else "augment"
    failed = cli(kind, source, "-o", out, *args, tiny=tiny_models["huggingface"], tmp_path=tmp_path)
    assert failed.returncode == 2 and words in failed.stderr and "Traceback" not in failed.stderr
    assert not out.exists() and not list(tmp_path.glob("out.csv*"))


def test_an_unknown_output_format_a_resume_of_nothing_or_a_missing_file_exits_2(tiny_models, tmp_path, source):
    tiny = tiny_models["huggingface"]
    wrong = cli("augment", source, "-o", tmp_path / "out.txt", "--text-col", "text", tiny=tiny, tmp_path=tmp_path)
    assert wrong.returncode == 2 and ".csv" in wrong.stderr
    nothing = cli("augment", source, "-o", tmp_path / "out.csv", "--text-col", "text", "--resume", tiny=tiny,
                  tmp_path=tmp_path)
    assert nothing.returncode == 2 and "--resume" in nothing.stderr
    missing = cli("augment", tmp_path / "没有这个文件.csv", "-o", tmp_path / "out.csv", "--text-col", "text",
                  tiny=tiny, tmp_path=tmp_path)
    assert missing.returncode == 2 and "没有这个文件.csv" in missing.stderr and "Traceback" not in missing.stderr


def test_a_lexical_run_with_number_forms_rewrites_amounts_and_the_report_says_why_rows_are_short(tiny_models, tmp_path):
    source = tmp_path / "numbers.csv"
    source.write_text("text,label\n快递三天就到了，比预计快了2天。,物流\nOK 123 ABC！,其他\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    done = cli("augment", source, "-o", output, "--text-col", "text", "--label-col", "label", "--engine", "lexical",
               "--number-forms", "--num-return-sequences", "5", "--seed", "1", "--exclude-original",
               tiny=tiny_models["huggingface"], tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in output.read_text("utf-8").splitlines()]
    texts = [row["text"] for row in rows]
    assert texts and all(row["source_row"] == 1 and row["label"] == "物流" for row in rows)
    assert any("3天" in text or "两天" in text for text in texts)
    assert all("4天" not in text and ("三天" in text or "3天" in text) for text in texts)
    report = json.loads(output.with_name("out.report.json").read_text("utf-8"))
    short = {entry["source_row"]: entry["reason"] for entry in report["rows_short"]}
    assert short[2] == "no_rewritable_words" and short.get(1) in (None, "few_rewritable_words")


def test_a_data_directory_that_cannot_be_written_exits_1_naming_it(tiny_models, tmp_path, source):
    occupied = tmp_path / "occupied"
    occupied.write_text("a file where the data directory should be", "utf-8")
    command = [sys.executable, "-m", "app.jobs", "augment", str(source), "-o", str(tmp_path / "out.csv"), *AUGMENT,
               "--model-dir", str(tiny_models["huggingface"]), "--data-dir", str(occupied / "data"),
               "--log-dir", str(tmp_path / "logs")]
    failed = subprocess.run(command, cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert failed.returncode == 1 and "--data-dir" in failed.stderr and "Traceback" not in failed.stderr
    assert not (tmp_path / "out.csv").exists()
