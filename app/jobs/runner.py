"""The runner: jobs one after another, each in chunks through the same `Service` every request uses.

A chunk is one `Service.augment` or `Service.classify` call, so a job takes its turns at the model like
any client: the batcher gives the next engine call to whoever has had the least engine time, and an
interactive request waits behind at most one engine call of a job. A chunk's results and the job's
progress are stored together (`JobStore.commit_chunk`); a job stopped at any point (drain, kill -9)
resumes at its first unfinished chunk. The server runs one runner on its event loop; the CLI runs
one job with it, in-process.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
import time
from dataclasses import dataclass

from app import gate
from app.errors import DppError, NotReady, Overloaded, RequestTimeout
from app.jobs.cluster import NOTE as CLUSTER_NOTE
from app.jobs.cluster import ClusterUnavailable, RayCluster
from app.jobs.spec import JobSpec
from app.jobs.store import Job, JobStore
from app.service import Service

log = logging.getLogger(__name__)

TIMEOUT_RETRIES = 2
IDLE_WAKE_S = 3600.0  # with nothing to do, the runner still wakes hourly to delete expired jobs
NOT_READY_WAIT_S = 1.0
STORE_RETRY_S = 30.0
EMPTY = "text_empty"


class JobStopped(Exception):
    """The runner stops between chunks: the server drains, or the job was cancelled or deleted."""


@dataclass
class Progress:
    """The running job's pace in this process: rows done since it (re)started here, and when."""

    job_id: str
    since: float
    rows_at_start: int

    def pace(self, rows_done: int, rows_total: int) -> tuple[float | None, float | None]:
        """(rows per second, seconds left), None until a chunk has finished here."""
        done, elapsed = rows_done - self.rows_at_start, time.monotonic() - self.since
        if done <= 0 or elapsed <= 0:
            return None, None
        rate = done / elapsed
        return rate, (rows_total - rows_done) / rate


def text_of(values: dict, column: str) -> str:
    """A row's text as the model reads it: the cell as a string, stripped ("" when missing)."""
    value = values.get(column)
    return "" if value is None else str(value).strip()


def label_of(values: dict, column: str | None) -> str | None:
    if column is None:
        return None
    return text_of(values, column) or None


class JobRunner:
    def __init__(self, service: Service, store: JobStore, cluster: RayCluster | None = None) -> None:
        self.service = service
        self.store = store
        self.cluster = cluster  # --job-executor ray: chunks run there, not on this process's engines
        self.progress: Progress | None = None
        self._wake = asyncio.Event()
        self._chunk: asyncio.Task | None = None
        self._stop: set[str] = set()  # jobs cancelled or deleted while running here

    def wake(self) -> None:
        """A job was queued: look now rather than at the next hourly wake."""
        self._wake.set()

    def stop_job(self, job_id: str) -> None:
        """Stop `job_id` now if it runs here: its chunk in flight is cancelled and nothing more is stored."""
        if self.progress is not None and self.progress.job_id == job_id:
            self._stop.add(job_id)
            if self._chunk is not None:
                self._chunk.cancel()

    async def run_forever(self, retention_s: float) -> None:
        """Run jobs as they come, until the server drains; expired jobs are deleted on the way."""
        while not self.service.in_flight.draining:
            try:
                expired = await asyncio.to_thread(self.store.expire, retention_s)
                job = await asyncio.to_thread(self.store.next_job)
            except Exception:  # the store unreadable for now (a full disk, a lock held too long): not the end
                log.exception("the job store could not be read; trying again in %.0f s", STORE_RETRY_S)
                await asyncio.sleep(STORE_RETRY_S)
                continue
            if expired:
                log.info("jobs expired and deleted: %s", ", ".join(expired))
            if job is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), IDLE_WAKE_S)
                except TimeoutError:
                    pass
                continue
            try:
                await self.run(job)
            except JobStopped:
                continue
            except ClusterUnavailable as exc:
                log.warning("job %s waits for its cluster (%s); trying again in %.0f s", job.id, exc, STORE_RETRY_S)
                await asyncio.sleep(STORE_RETRY_S)
            except Exception:  # the store failed under the job: it stays unfinished and is tried again
                log.exception("job %s could not be stored; trying again in %.0f s", job.id, STORE_RETRY_S)
                await asyncio.sleep(STORE_RETRY_S)

    async def run(self, job: Job) -> Job:
        """Run `job` from its first unfinished chunk to its end; the job as stored afterwards."""
        await self._until_ready()
        notes = list(job.notes)
        check = self._label_check(job, notes)
        if self.cluster is not None:
            where = await asyncio.to_thread(self.cluster.describe)
            notes = [note for note in notes if not note.startswith(CLUSTER_NOTE)] + [where]
        if not await asyncio.to_thread(self.store.start, job.id, notes):
            raise JobStopped(job.id)
        log.info("job %s %s: rows %d-%d of %d", job.id, "resumes" if job.chunks_done else "starts",
                 job.rows_done + 1, job.rows_total, job.rows_total)
        self.progress = Progress(job.id, time.monotonic(), job.rows_done)
        counts = job.counts or empty_counts(job.spec)
        try:
            chunks = self._local_chunks(job, check) if self.cluster is None else self._cluster_chunks(job, check)
            async for chunk, results in chunks:
                add_counts(counts, job.spec, results)
                if not await asyncio.to_thread(self.store.commit_chunk, job.id, chunk, results, counts):
                    raise JobStopped(job.id)
            if self.cluster is not None:  # where the chunks ran, this (re)start: one count per node
                ran = "、".join(str(count) for count in sorted(self.cluster.nodes_used.values(), reverse=True))
                notes[-1] += f"；本次各节点完成的块数：{ran or 0}"
                await asyncio.to_thread(self.store.set_notes, job.id, notes)
            await asyncio.to_thread(self.store.finish, job.id, "done")
            log.info("job %s done: %d rows", job.id, job.rows_total)
        except (JobStopped, asyncio.CancelledError):
            if job.id in self._stop or self.service.in_flight.draining:
                log.info("job %s stopped", job.id)
                raise JobStopped(job.id) from None
            raise
        except (sqlite3.Error, OSError, ClusterUnavailable):
            raise  # the store or the cluster failed, not the job: it stays unfinished, and run_forever tries again
        except DppError as exc:
            log.warning("job %s failed: %s", job.id, exc.message)
            await asyncio.to_thread(self.store.finish, job.id, "failed", exc.message)
        except Exception:
            log.exception("job %s failed", job.id)
            await asyncio.to_thread(self.store.finish, job.id, "failed", "内部错误：任务中止（详见服务日志）")
        finally:
            self._stop.discard(job.id)
            self.progress = None
        return await asyncio.to_thread(self.store.get, job.id) or job

    async def _until_ready(self) -> None:
        while not self.service.readiness().ready:
            if self.service.in_flight.draining:
                raise JobStopped("draining")
            await asyncio.sleep(NOT_READY_WAIT_S)

    def _label_check(self, job: Job, notes: list[str]) -> bool:
        """Whether the label check runs: asked (on), or possible (auto: a scoring engine is loaded)."""
        spec = job.spec
        if spec.kind != "augment" or spec.label_check == "off" or not spec.labels or not spec.label_col:
            return False
        if not spec.gate(self.service.gate_defaults).on:
            return False
        if spec.label_check == "auto" and not self.service.engine_names(scoring=True):
            note = "标签检查未进行：没有可以打分的 mT5 引擎（只有同义词替换引擎）"
            if note not in notes:
                notes.append(note)
            return False
        return True

    async def _local_chunks(self, job: Job, check: bool):
        """(chunk, results) for each unfinished chunk, through this process's service."""
        for chunk in range(job.chunks_done, job.chunks_total):
            first = chunk * job.spec.chunk_rows + 1
            rows = await asyncio.to_thread(self.store.input_rows, job.id, first, first + job.spec.chunk_rows - 1)
            yield chunk, await self._chunk_results(job, chunk, rows, check)

    async def _cluster_chunks(self, job: Job, check: bool):
        """(chunk, results) for each unfinished chunk, from the Ray cluster; stop_job cancels the wait."""
        stream = self.cluster.chunks(job, check, self.store)
        try:
            while True:
                self._stopping(job)
                self._chunk = asyncio.ensure_future(anext(stream, None))
                try:
                    item = await self._chunk
                finally:
                    self._chunk = None
                if item is None:
                    return
                yield item
        finally:
            await stream.aclose()

    def _stopping(self, job: Job) -> None:
        if job.id in self._stop:
            raise JobStopped(job.id)
        if self.service.in_flight.draining:
            raise JobStopped("draining")

    async def _chunk_results(self, job: Job, chunk: int, rows: list[tuple[int, dict]],
                             check: bool) -> list[tuple[int, dict]]:
        """One chunk through the service (cancellable), retried while the model is busy or briefly away."""
        timeouts = 0
        while True:
            self._stopping(job)
            self._chunk = asyncio.ensure_future(ask(self.service, job.spec, chunk, rows, check))
            try:
                return await self._chunk
            except Overloaded as exc:
                if self.service.in_flight.draining:
                    raise JobStopped("draining") from None
                await asyncio.sleep(exc.retry_after)
            except NotReady:
                await asyncio.sleep(NOT_READY_WAIT_S)
            except RequestTimeout:
                timeouts += 1
                if timeouts > TIMEOUT_RETRIES:
                    raise
            finally:
                self._chunk = None


async def ask(service: Service, spec: JobSpec, chunk: int, rows: list[tuple[int, dict]],
              check: bool) -> list[tuple[int, dict]]:
    """One chunk's results (row number, result), from one call to `service` (the local runner's, or an actor's on
    a Ray cluster)."""
    texts = [text_of(values, spec.text_col) for _, values in rows]
    asked = [i for i, text in enumerate(texts) if text]
    results: list[dict] = [{"skipped": EMPTY} for _ in rows]
    if not asked:
        return [(row, result) for (row, _), result in zip(rows, results)]
    if spec.kind == "augment":
        labels = None
        if check:
            labels = [label if label in spec.labels else None
                      for label in (label_of(rows[i][1], spec.label_col) for i in asked)]
        answer = await service.augment(
            [texts[i] for i in asked], spec.chunk_params(chunk), engine=spec.engine,
            quality=spec.gate(service.gate_defaults), labels=spec.labels if check else None,
            text_labels=labels if check else None)
        for i, outcome in zip(asked, answer.outcomes):
            results[i] = outcome.report(False)
    else:
        answer = await service.classify([texts[i] for i in asked], spec.labels, multi_label=spec.multi_label,
                                        threshold=spec.threshold, engine=spec.engine)
        for i, item in zip(asked, answer.items):
            results[i] = {"label": item.label, "labels": item.labels, "scores": item.scores}
    return [(row, result) for (row, _), result in zip(rows, results)]


def empty_counts(spec: JobSpec) -> dict:
    if spec.kind == "augment":
        return {"rows_skipped": 0, "rows_short": 0, "variants": 0, "dropped": dict.fromkeys(gate.REASONS, 0)}
    return {"rows_skipped": 0, "labels": dict.fromkeys(spec.labels or [], 0)}


def add_counts(counts: dict, spec: JobSpec, results: list[tuple[int, dict]]) -> None:
    """Add one chunk's results to the job's running counts."""
    want = spec.generation().num_return_sequences
    for _, result in results:
        if "skipped" in result:
            counts["rows_skipped"] += 1
        elif spec.kind == "augment":
            counts["variants"] += len(result["variants"])
            counts["rows_short"] += len(result["variants"]) < want
            dropped = collections.Counter(counts["dropped"]) + collections.Counter(result["dropped"])
            counts["dropped"] = {reason: dropped[reason] for reason in gate.REASONS}
        else:
            for label in result["labels"] if result["labels"] is not None else [result["label"]]:
                counts["labels"][label] = counts["labels"].get(label, 0) + 1
