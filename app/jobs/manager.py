"""`Jobs`: what REST, the page, the Gradio API and the CLI call to make, watch, stop and read file jobs.

A submission is checked in full before anything is stored: the options (named by their field), the file
(format, encoding, columns, each row's text), the label set. The input is then copied into the store
and the job is queued; the runner takes it from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from app.errors import (
    DppError,
    InvalidParameter,
    LabelsInvalid,
    NeedsMT5,
    NotFound,
    NotReady,
    StoreUnavailable,
    TextTooLong,
)
from app.jobs import results
from app.jobs.cluster import RayCluster
from app.jobs.formats import FileInvalid, Table, open_table, require_column
from app.jobs.runner import JobRunner, label_of, text_of
from app.jobs.spec import (
    AUGMENT_COLUMNS,
    CLASSIFY_COLUMNS,
    OPTION_FIELDS,
    PROBABILITY_PREFIX,
    STATES,
    JobSpec,
    split_options,
)
from app.jobs.store import Job, JobStore
from app.service import CLASSIFICATION, Service
from app.settings import Settings


log = logging.getLogger(__name__)

STORE_UNAVAILABLE = "文件任务暂不可用：任务存储无法读写（数据目录 --data-dir），请联系管理员查看服务日志"


class Jobs:
    def __init__(self, service: Service, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.store = JobStore(settings.data_dir)
        self.runner = JobRunner(service, self.store,
                                RayCluster(settings) if settings.job_executor == "ray" else None)
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's: the runner lives on it

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    # --- submitting ---------------------------------------------------------------------------------

    def submit(self, path: Path, filename: str, options: dict, owner: str | None = None,
               origin: str = "server") -> Job:
        """Check the options and the file, store the job with its rows, queue it. Blocking: call in a thread."""
        spec = self._spec(options)
        table = open_table(path, filename, sheet=spec.sheet, max_rows=self.settings.max_file_rows)
        require_column(table, spec.text_col, "text_col")
        if spec.label_col is not None:
            require_column(table, spec.label_col, "label_col")
        self._no_clash(table, spec)
        seen = _Seen(self.settings.max_labels, spec.labels)
        rows = self._checked_rows(table, spec, seen)

        def settle() -> tuple[JobSpec, list[str]]:
            if not seen.rows:
                raise FileInvalid("文件没有数据行", field="file")
            if not seen.texts:
                raise FileInvalid(f"文本列“{spec.text_col}”全部为空", field="text_col")
            return self._settled(spec, seen)

        job_id = secrets.token_hex(8)
        with self._store():
            job = self.store.create(job_id, spec, Path(filename).name[:200], table.columns, rows, owner, settle,
                                    origin)
        self.runner_wake()
        return job

    @contextlib.contextmanager
    def _store(self) -> Iterator[None]:
        """The store failing (an unwritable or full data directory, a damaged database) is the server's fault: a
        503 that says whom to ask, the cause in the log."""
        try:
            yield
        except (OSError, sqlite3.Error) as exc:
            log.error("the job store %s cannot be used: %s: %s", self.store.path, type(exc).__name__, exc)
            raise StoreUnavailable(STORE_UNAVAILABLE) from exc

    def runner_wake(self) -> None:
        """Tell the runner a job is queued (from any thread)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.runner.wake)

    def _spec(self, options: dict) -> JobSpec:
        rest, generation, quality = split_options(options)
        for name in ("text_col", "kind"):
            if not rest.get(name):
                raise InvalidParameter(f"缺少 {name}", field=name)
        unknown = set(rest) - OPTION_FIELDS
        if unknown:
            raise InvalidParameter(f"不认识的参数：{', '.join(sorted(unknown))}", field=sorted(unknown)[0])
        if rest.get("labels") is not None:
            rest["labels"] = self.service.checks.labels(rest["labels"])
        spec = JobSpec(**rest, params=generation, quality=quality)
        spec.gate(self.service.gate_defaults)  # refuses bad thresholds now, naming the field
        self._engine_ok(spec)
        if spec.kind == "augment":
            params = spec.generation()
            self.service.checks.work(1, params)
            fits = max(1, self.settings.max_request_tokens // params.tokens_per_prompt)
            rows = min(self.settings.job_chunk_rows, self.settings.max_batch_texts, fits)
        else:
            rows = min(self.settings.job_chunk_rows, self.settings.max_batch_texts)
        return JobSpec(**{**spec.as_dict(), "chunk_rows": rows})

    def _engine_ok(self, spec: JobSpec) -> None:
        """Refuse now what can never run, as a request would be: an unknown engine; once the engines are loaded,
        one not loaded, an engine that cannot classify, or the label check turned on with none that scores."""
        try:
            self.service.check_engine(spec.engine, CLASSIFICATION if spec.kind == "classify" else None)
        except NotReady:
            return  # still loading: the runner waits for it
        if spec.kind == "augment" and spec.label_check == "on" and not self.service.engine_names(scoring=True):
            raise NeedsMT5("标签检查要用 mT5 给每条结果分类；当前只有同义词替换引擎，请把 label_check 设为 off")

    @staticmethod
    def _no_clash(table: Table, spec: JobSpec) -> None:
        added = AUGMENT_COLUMNS if spec.kind == "augment" else (
            *CLASSIFY_COLUMNS, *(PROBABILITY_PREFIX + label for label in spec.labels or []))
        clash = [name for name in added if name in table.columns]
        if clash:
            raise FileInvalid(f"文件已有名为“{clash[0]}”的列，与结果要加的列重名；请在文件里改名", field="file")

    def _checked_rows(self, table: Table, spec: JobSpec, seen: "_Seen") -> Iterator[dict]:
        limit = self.settings.max_text_chars
        for number, values in enumerate(table.rows(), start=1):
            seen.rows += 1
            raw = values.get(spec.text_col)
            text = "" if raw is None else str(raw)
            if len(text) > limit:
                raise TextTooLong(f"第 {number} 行数据的文本共 {len(text)} 字，超过上限 {limit} 字（--max-text-chars）",
                                  field="file")
            if text_of(values, spec.text_col):
                seen.texts += 1
            seen.label(label_of(values, spec.label_col))
            yield values

    def _settled(self, spec: JobSpec, seen: "_Seen") -> tuple[JobSpec, list[str]]:
        """The label check's label set, now that the file has been read, and notes on what will not be checked."""
        notes: list[str] = []
        if spec.kind != "augment" or spec.label_col is None or spec.label_check == "off":
            return spec, notes
        if not spec.gate(self.service.gate_defaults).on:
            notes.append("标签检查未进行：质量过滤已关闭（quality=off）")
            return JobSpec(**{**spec.as_dict(), "labels": None}), notes
        if spec.labels is not None:
            if seen.outside:
                notes.append(f"{seen.outside} 行的标签不在 labels 里，这些行不做标签检查")
            return spec, notes
        try:
            if len(seen.labels) > self.settings.max_labels:
                raise LabelsInvalid(f"标签列“{spec.label_col}”的不同取值超过 {self.settings.max_labels} 个"
                                    "（--max-labels）", field="label_col")
            labels = self.service.checks.labels(list(seen.labels))
        except DppError as exc:
            if spec.label_check == "on":
                raise LabelsInvalid(f"标签列“{spec.label_col}”不能用作标签检查的标签集：{exc.message}",
                                    field="label_col") from None
            notes.append(f"标签检查未进行：标签列“{spec.label_col}”不能用作标签集（{exc.message}）")
            return JobSpec(**{**spec.as_dict(), "labels": None}), notes
        return JobSpec(**{**spec.as_dict(), "labels": labels}), notes

    # --- watching and stopping ----------------------------------------------------------------------

    def get(self, job_id: str, owner: str | None = None) -> Job:
        with self._store():
            job = self.store.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"没有编号为 {job_id[:40]} 的任务", field="id")
        return job

    def list(self, owner: str | None = None) -> list[Job]:
        with self._store():
            return self.store.list(owner)

    def counts(self) -> dict[str, int]:
        """Jobs by state, every state named (for the metrics); none when the store cannot be read (the log says
        why, once per scrape): a scrape never fails for it."""
        try:
            with self._store():
                found = self.store.counts()
        except StoreUnavailable:
            found = {}
        return {state: found.get(state, 0) for state in STATES}

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Stop a queued or running job; its results so far stay readable. A finished job is left as it is."""
        job = self.get(job_id, owner)
        with self._store():
            cancelled = self.store.finish(job.id, "cancelled", "已取消")
        if cancelled:
            self._stop(job.id)
        return self.get(job_id, owner)

    def delete(self, job_id: str, owner: str | None = None) -> None:
        job = self.get(job_id, owner)
        self._stop(job.id)
        with self._store():
            self.store.delete(job.id)

    def _stop(self, job_id: str) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.runner.stop_job, job_id)

    def view(self, job: Job) -> dict:
        """A job as every surface shows it."""
        rate = eta = None
        progress = self.runner.progress
        if job.state == "running" and progress is not None and progress.job_id == job.id:
            rate, eta = progress.pace(job.rows_done, job.rows_total)
        return {"id": job.id, "kind": job.kind, "state": job.state, "filename": job.filename,
                "rows_done": job.rows_done, "rows_total": job.rows_total,
                "rows_per_second": _rounded(rate, 2), "eta_seconds": _rounded(eta, 0), "counts": job.counts,
                "notes": job.notes, "error": job.error, "created_at": _iso(job.created),
                "started_at": _iso(job.started), "finished_at": _iso(job.finished),
                "options": job.spec.as_dict(), "columns": job.columns, "result_columns": results.columns(job)}

    def output(self, job_id: str, owner: str | None = None) -> tuple[Job, list[str], Iterator[dict]]:
        job = self.get(job_id, owner)
        return job, results.columns(job), results.rows(job, self.store)

    def report(self, job_id: str, owner: str | None = None) -> dict:
        return results.report(self.get(job_id, owner), self.store)

    def report_chunks(self, job_id: str, owner: str | None = None) -> Iterator[str]:
        """The report as JSON text, in pieces (the job is looked up now, the rows read as it is written)."""
        return results.report_chunks(self.get(job_id, owner), self.store)


class _Seen:
    """What reading a file found: rows, rows with text, and the label column's values: the distinct ones (up to
    one more than the limit), or, against a given label set, how many rows lie outside it."""

    def __init__(self, max_labels: int, allowed: list[str] | None) -> None:
        self.rows = self.texts = self.outside = 0
        self.labels: dict[str, None] = {}
        self._max, self._allowed = max_labels, allowed

    def label(self, label: str | None) -> None:
        if label is None:
            return
        if self._allowed is not None:
            self.outside += label not in self._allowed
        elif len(self.labels) <= self._max:
            self.labels[label] = None


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat(timespec="seconds")


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
