"""File jobs in-process: submission checks, the store's chunk commits, the runner on real engines (the tiny
mT5 and the lexical engine), resume after a stop, the output's rows and the report."""

from __future__ import annotations

import asyncio
import csv
import json

import pytest

from app.engines import load_engine
from app.errors import DppError
from app.jobs.manager import Jobs
from app.service import Service
from app.settings import Settings
from app.tasks import load_templates
from tests.conftest import run

SENTENCES = ["这家餐厅的菜很好吃，服务也很周到。", "快递三天才到，包装还破了。", "手机电池很耐用，充一次电能用两天。",
             "客服态度很差，问题一直没解决。", "这本书的内容很有启发，推荐大家看看。", "房间很干净，就是隔音不太好。",
             "价格便宜，质量也不错，会回购的。", "等了一个小时还没上菜，太慢了。"]


def make_jobs(tmp_path, engines=("mt5", "lexical"), model_dir=None, **overrides) -> Jobs:
    settings = Settings(**{"quality": "off", "data_dir": tmp_path / "data", **overrides,
                           **({"model_dir": model_dir} if model_dir else {})})
    service = Service(settings, load_templates(settings.templates_file))
    service.load({name: (lambda name=name: load_engine(settings, name)) for name in engines})
    return Jobs(service, settings)


def write_csv(path, rows, header=("id", "text", "label", "note"), encoding="utf-8"):
    with open(path, "w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def labelled(n):
    return [(f"r{i}", SENTENCES[i % len(SENTENCES)] + ("" if i < len(SENTENCES) else f"第{i}条。"),
             "正面" if i % 3 else "负面", f"备注{i}") for i in range(n)]


def finished(jobs: Jobs, job):
    return run(jobs.runner.run(job))


def output(jobs: Jobs, job) -> tuple[list[str], list[dict]]:
    _, columns, rows = jobs.output(job.id)
    return columns, list(rows)


def test_an_augment_job_keeps_every_row_its_columns_and_its_label(tmp_path):
    jobs = make_jobs(tmp_path, engines=("lexical",), quality="on")
    source = write_csv(tmp_path / "train.csv", labelled(40))
    job = jobs.submit(source, "train.csv", {"kind": "augment", "text_col": "text", "label_col": "label", "seed": 3,
                                            "label_check": "off"})
    assert job.state == "queued" and job.rows_total == 40
    job = finished(jobs, job)
    assert job.state == "done" and job.rows_done == 40
    columns, rows = output(jobs, job)
    assert columns == ["id", "text", "label", "note", "source_row", "variant", "similarity"]
    originals = {r["id"]: r for r in csv.DictReader(open(source, encoding="utf-8"))}
    by_row: dict[int, list[dict]] = {}
    for row in rows:
        by_row.setdefault(row["source_row"], []).append(row)
    assert sorted(by_row) == list(range(1, 41))  # every row, in file order
    for number, group in by_row.items():
        first, variants = group[0], group[1:]
        original = originals[f"r{number - 1}"]
        assert first["variant"] == 0 and {k: first[k] for k in original} == original
        assert [v["variant"] for v in variants] == list(range(1, len(variants) + 1)) and len(variants) <= 3
        for variant in variants:  # the row's own id, label and other columns, a new text, its figure
            assert {k: variant[k] for k in ("id", "label", "note")} == {k: original[k] for k in ("id", "label", "note")}
            assert variant["text"] != original["text"] and 0 <= variant["similarity"] <= 1
    counts = job.counts
    assert counts["variants"] == len(rows) - 40 and counts["rows_skipped"] == 0
    report = jobs.report(job.id)
    assert len(report["rows_short"]) == counts["rows_short"]
    for short in report["rows_short"]:
        assert short["got"] == len(by_row[short["source_row"]]) - 1 < short["asked"] == 3


def test_empty_texts_are_skipped_counted_and_listed_never_dropped(tmp_path):
    jobs = make_jobs(tmp_path, engines=("lexical",))
    rows = labelled(5)
    rows[1] = ("r1", "   ", "正面", "空的")
    rows[3] = ("r3", "", "负面", "也是空的")
    job = finished(jobs, jobs.submit(write_csv(tmp_path / "t.csv", rows), "t.csv",
                                     {"kind": "augment", "text_col": "text", "seed": 1}))
    assert job.counts["rows_skipped"] == 2
    report = jobs.report(job.id)
    assert [(r["source_row"], r["reason"]) for r in report["rows_skipped"]] == [(2, "text_empty"), (4, "text_empty")]
    assert json.loads("".join(jobs.report_chunks(job.id))) == report  # what REST and the CLI stream
    assert report["rows_short"] and all(r["got"] < r["asked"] for r in report["rows_short"])
    _, out = output(jobs, job)
    assert {r["source_row"] for r in out if r["variant"] == 0} == {1, 2, 3, 4, 5}  # the originals all stay
    assert not [r for r in out if r["source_row"] in (2, 4) and r["variant"] != 0]


def test_a_seeded_job_stopped_midway_and_resumed_equals_one_run_straight_through(tiny_models, tmp_path):
    options = {"kind": "augment", "text_col": "text", "label_col": "label", "seed": 11, "max_length": 12,
               "label_check": "off"}
    source = write_csv(tmp_path / "t.csv", labelled(100))
    straight = make_jobs(tmp_path / "a", model_dir=tiny_models["huggingface"], job_chunk_rows=8)
    reference = finished(straight, straight.submit(source, "t.csv", options))
    assert reference.state == "done"

    stopped = make_jobs(tmp_path / "b", model_dir=tiny_models["huggingface"], job_chunk_rows=8)
    job = stopped.submit(source, "t.csv", options)

    async def stop_after_three_chunks():
        task = asyncio.ensure_future(stopped.runner.run(job))
        while (now := stopped.store.get(job.id)).chunks_done < 3:
            await asyncio.sleep(0.01)
        task.cancel()  # as a process that dies: no chance to tidy up
        with pytest.raises(asyncio.CancelledError):
            await task
        return now

    partial = run(stop_after_three_chunks())
    left = stopped.store.get(job.id)
    assert left.state == "running" and 3 <= left.chunks_done < left.chunks_total
    # A new process on the same data directory takes it up from its first unfinished chunk.
    again = make_jobs(tmp_path / "b", model_dir=tiny_models["huggingface"], job_chunk_rows=8)
    resumed = run(again.runner.run(again.store.next_job()))
    assert resumed.state == "done" and resumed.rows_done == 100 and partial.chunks_done >= 3
    assert output(again, resumed) == output(straight, reference)  # row for row
    assert resumed.counts == reference.counts


def test_a_chunk_is_written_once_and_never_after_the_job_stopped(tmp_path):
    jobs = make_jobs(tmp_path, engines=("lexical",))
    job = jobs.submit(write_csv(tmp_path / "t.csv", labelled(3)), "t.csv", {"kind": "augment", "text_col": "text"})
    store = jobs.store
    assert store.start(job.id, [])
    result = [(1, {"skipped": "text_empty"})]
    assert store.commit_chunk(job.id, 0, result, {"n": 1})
    assert not store.commit_chunk(job.id, 0, result, {"n": 2})  # the same chunk again: refused, nothing written
    assert store.finish(job.id, "cancelled")
    assert not store.commit_chunk(job.id, 1, [(2, {"skipped": "text_empty"})], {"n": 3})
    job = store.get(job.id)
    assert (job.rows_done, job.chunks_done, job.counts) == (1, 1, {"n": 1})
    assert [r for _, _, r in store.results(job.id)] == [{"skipped": "text_empty"}, None, None]


def test_finished_jobs_expire_and_unfinished_ones_stay(tmp_path):
    jobs = make_jobs(tmp_path, engines=("lexical",))
    source = write_csv(tmp_path / "t.csv", labelled(2))
    done = finished(jobs, jobs.submit(source, "t.csv", {"kind": "augment", "text_col": "text"}))
    waiting = jobs.submit(source, "t.csv", {"kind": "augment", "text_col": "text"})
    assert jobs.store.expire(3600) == []
    assert jobs.store.expire(-1) == [done.id]
    assert jobs.store.get(done.id) is None and list(jobs.store.results(done.id)) == []
    assert jobs.store.get(waiting.id).state == "queued"


def test_the_runner_outlives_a_store_that_fails_for_a_while(tmp_path, monkeypatch):
    jobs = make_jobs(tmp_path, engines=("lexical",))
    job = jobs.submit(write_csv(tmp_path / "t.csv", labelled(3)), "t.csv", {"kind": "augment", "text_col": "text"})
    monkeypatch.setattr("app.jobs.runner.STORE_RETRY_S", 0.01)
    failures = {"next_job": 1, "commit_chunk": 1}

    def failing(name):
        real = getattr(jobs.store, name)

        def call(*args):
            if failures[name]:
                failures[name] -= 1
                raise OSError(f"{name}: disk full")
            return real(*args)
        return call

    for name in failures:
        monkeypatch.setattr(jobs.store, name, failing(name))

    async def until_done():
        runner = asyncio.create_task(jobs.runner.run_forever(3600))
        while jobs.store.get(job.id).state != "done":
            await asyncio.sleep(0.02)
        runner.cancel()

    run(asyncio.wait_for(until_done(), 30))
    assert failures == {"next_job": 0, "commit_chunk": 0}
    assert jobs.store.get(job.id).rows_done == 3


def test_a_classify_job_has_a_label_and_a_probability_per_candidate(tiny_models, tmp_path):
    jobs = make_jobs(tmp_path, model_dir=tiny_models["huggingface"])
    source = write_csv(tmp_path / "t.csv", labelled(20))
    job = finished(jobs, jobs.submit(source, "t.csv", {"kind": "classify", "text_col": "text",
                                                       "labels": "物流, 价格、服务"}))
    assert job.state == "done"
    columns, rows = output(jobs, job)
    assert columns[-5:] == ["source_row", "predicted_label", "prob_物流", "prob_价格", "prob_服务"]
    assert len(rows) == 20
    for row in rows:
        probs = {label: row[f"prob_{label}"] for label in ("物流", "价格", "服务")}
        assert abs(sum(probs.values()) - 1) < 1e-3 and row["predicted_label"] == max(probs, key=probs.get)
    assert sum(job.counts["labels"].values()) == 20


def test_the_label_check_scores_each_variant_against_its_rows_label(tiny_models, tmp_path):
    jobs = make_jobs(tmp_path, model_dir=tiny_models["huggingface"], quality="on", min_similarity=0.0,
                     max_length_ratio=100.0, min_length_ratio=0.0)
    source = write_csv(tmp_path / "t.csv", labelled(12))
    job = finished(jobs, jobs.submit(source, "t.csv", {"kind": "augment", "text_col": "text", "label_col": "label",
                                                       "engine": "lexical", "seed": 5}))
    assert job.state == "done" and job.spec.labels == ["负面", "正面"] and job.notes == []
    columns, rows = output(jobs, job)
    assert columns[-1] == "label_probability"
    originals = [r for r in rows if r["variant"] == 0]
    assert all(0 <= r["label_probability"] <= 1 for r in originals)  # each text's own, reported
    for variant in (r for r in rows if r["variant"]):
        assert variant["label_probability"] >= 0.5  # kept: its row's label won (two labels)
    kept_and_dropped = job.counts["variants"] + job.counts["dropped"]["label_changed"]
    assert kept_and_dropped > 0


def test_without_a_scoring_engine_the_automatic_label_check_is_skipped_with_a_note(tmp_path):
    jobs = make_jobs(tmp_path, engines=("lexical",), quality="on")
    job = finished(jobs, jobs.submit(write_csv(tmp_path / "t.csv", labelled(4)), "t.csv",
                                     {"kind": "augment", "text_col": "text", "label_col": "label"}))
    assert job.state == "done" and any("标签检查未进行" in note for note in job.notes)
    with pytest.raises(DppError) as caught:
        jobs.submit(tmp_path / "t.csv", "t.csv", {"kind": "augment", "text_col": "text", "label_col": "label",
                                                  "label_check": "on"})
    assert caught.value.code == "needs_mt5"


@pytest.mark.parametrize(("options", "rows", "field", "words"), [
    ({"text_col": "正文"}, None, "text_col", "没有名为“正文”的列"),
    ({"text_col": "text", "label_col": "类别"}, None, "label_col", "类别"),
    ({"text_col": "text", "kind": "classify"}, None, "labels", "候选标签"),
    ({"text_col": "text", "num_return_sequences": 11}, None, "num_return_sequences", "num_return_sequences"),
    ({"text_col": "text", "min_similarity": 0.9, "max_similarity": 0.5}, None, "min_similarity", "不能大于"),
    ({"text_col": "text", "kind": "translate"}, None, "kind", "kind"),
    ({"text_col": "text", "engine": "gpt"}, None, "engine", "gpt"),
    ({"text_col": "text", "colour": "red"}, None, "colour", "colour"),
    ({"text_col": "text"}, [("r0", "长" * 1001, "正面", "")], "file", "第 1 行数据的文本共 1001 字"),
    ({"text_col": "text"}, [("r0", " ", "正面", "")], "text_col", "全部为空"),
    ({"text_col": "text"}, [], "file", "没有数据行"),
])
def test_a_bad_submission_is_refused_naming_the_field_and_stores_nothing(tmp_path, options, rows, field, words):
    jobs = make_jobs(tmp_path, engines=("lexical",))
    source = write_csv(tmp_path / "t.csv", labelled(3) if rows is None else rows)
    with pytest.raises(DppError) as caught:
        jobs.submit(source, "t.csv", {"kind": "augment", **options})
    assert caught.value.status == 422 and caught.value.field == field and words in caught.value.message
    assert jobs.list() == []


def test_a_file_with_a_column_the_output_adds_is_refused(tmp_path):
    jobs = make_jobs(tmp_path, engines=("lexical",))
    source = write_csv(tmp_path / "t.csv", [("1", "今天天气很好。")], header=("variant", "text"))
    with pytest.raises(DppError) as caught:
        jobs.submit(source, "t.csv", {"kind": "augment", "text_col": "text"})
    assert caught.value.field == "file" and "variant" in caught.value.message


def test_a_job_is_stored_with_its_options_and_survives_a_new_process(tmp_path):
    jobs = make_jobs(tmp_path, engines=("lexical",))
    job = jobs.submit(write_csv(tmp_path / "t.csv", labelled(70)), "t.csv",
                      {"kind": "augment", "text_col": "text", "num_return_sequences": 2, "seed": 9,
                       "min_similarity": 0.3})
    later = make_jobs(tmp_path, engines=("lexical",)).store.get(job.id)
    assert later.spec == job.spec and later.spec.chunk_rows == 50 and later.chunks_total == 2
    assert later.spec.params == {"num_return_sequences": 2, "seed": 9} and later.spec.quality == {"min_similarity": 0.3}
    view = jobs.view(later)
    assert json.loads(json.dumps(view)) == view and view["state"] == "queued" and view["rows_total"] == 70
