"""Dynamic batching: one worker per engine runs every engine call, coalescing concurrent requests.

Requests whose generation parameters match (and that carry no seed) are joined into one
`generate` call of at most `max_items` prompts. The worker takes what is queued as soon as the
engine is free, and waits at most `max_wait_s` for company only while the batch is short.
A seeded request always runs alone, so its output depends on its own prompts and seed only.
When a joined call fails, each request in it is retried alone: a bad neighbour fails only itself.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from app.engines import Engine
from app.errors import DppError, EngineContractError, Overloaded, RequestCancelled, RequestTimeout
from app.params import GenerationParams

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class Ticket:
    """One request's pass to the engine: its deadline, its hang-up signal, and whether the queue has
    admitted it. An admitted request's later calls (more chunks, more sampling rounds) are never
    refused for a full queue: what was accepted is finished."""

    deadline: float
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    admitted: bool = False


@dataclasses.dataclass(eq=False)
class _Job:
    run: Callable[[Engine], Any] | None  # a call that must run alone (scoring)
    prompts: list[str]
    params: GenerationParams | None
    ticket: Ticket
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    @property
    def key(self) -> object:
        """Jobs with equal keys may share one engine call."""
        if self.run is not None or self.params.seed is not None:
            return self
        return self.params

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Batcher:
    """Owns one engine: every call to it goes through `generate` or `call`, from any thread."""

    def __init__(self, engine: Engine, *, max_items: int, max_wait_s: float, max_queue: int,
                 coalesce: bool = True) -> None:
        self.engine = engine
        self._max_items = max_items
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._coalesce = coalesce
        self._queue: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition()
        self._call_seconds = 1.0  # moving average, for Retry-After
        threading.Thread(target=self._work, name=f"dpp-batcher-{engine.name}", daemon=True).start()

    def generate(self, prompts: list[str], params: GenerationParams, ticket: Ticket) -> list[list[str]]:
        """The engine's outputs for `prompts`, possibly computed together with other requests'."""
        return self._submit(_Job(None, prompts, params, ticket))

    def call(self, run: Callable[[Engine], Any], ticket: Ticket) -> Any:
        """Run `run(engine)` on the worker, alone, in queue order."""
        return self._submit(_Job(run, [], None, ticket))

    def _submit(self, job: _Job) -> Any:
        ticket = job.ticket
        with self._ready:
            if not ticket.admitted and len(self._queue) >= self._max_queue:
                wait = math.ceil(self._call_seconds * (len(self._queue) + 1))
                raise Overloaded(f"排队的请求已满（{self._max_queue} 个），请 {wait} 秒后重试", retry_after=wait)
            ticket.admitted = True
            self._queue.append(job)
            self._ready.notify()
        while not job.done.wait(timeout=0.05):
            if ticket.cancelled.is_set() or time.monotonic() > ticket.deadline:
                with self._ready:
                    if job in self._queue:  # not started: free its place at once
                        self._queue.remove(job)
                if ticket.cancelled.is_set():
                    raise RequestCancelled("客户端已断开")
                raise RequestTimeout("等待模型超时，请稍后重试")
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[_Job]:
        """Wait for work; return the oldest job and the queued jobs that may join it."""
        with self._ready:
            while not self._queue:
                self._ready.wait()
            first = self._queue[0]
            if first.key is first or not self._coalesce:  # runs alone: no reason to wait
                return [self._queue.popleft()]
            until = time.monotonic() + self._max_wait_s
            while True:
                batch, items = [], 0
                for job in self._queue:
                    if job.key == first.key and (not batch or items + len(job.prompts) <= self._max_items):
                        batch.append(job)
                        items += len(job.prompts)
                left = until - time.monotonic()
                if items >= self._max_items or left <= 0:
                    break
                self._ready.wait(left)
            for job in batch:
                self._queue.remove(job)
            return batch

    def _work(self) -> None:
        while True:
            batch = [job for job in self._take() if not job.ticket.cancelled.is_set()]
            if not batch:
                continue
            started = time.monotonic()
            if len(batch) == 1:
                self._run_alone(batch[0])
            else:
                self._run_together(batch)
            self._call_seconds = 0.8 * self._call_seconds + 0.2 * (time.monotonic() - started)

    def _run_alone(self, job: _Job) -> None:
        try:
            if job.run is not None:
                job.finish(job.run(self.engine))
            else:
                job.finish(self._generate(job.prompts, job.params))
        except Exception as exc:  # noqa: BLE001 - the error belongs to this request; the worker goes on
            if not isinstance(exc, DppError):
                log.exception("engine %s failed on a request", self.engine.name)
            job.finish(error=exc)

    def _run_together(self, batch: list[_Job]) -> None:
        prompts = [prompt for job in batch for prompt in job.prompts]
        try:
            outputs = self._generate(prompts, batch[0].params)
        except Exception:  # noqa: BLE001 - find whose request it was: each runs alone
            log.warning("a joined call of %d requests failed; running them one by one", len(batch))
            for job in batch:
                self._run_alone(job)
            return
        log.debug("one engine call served %d requests (%d prompts)", len(batch), len(prompts))
        start = 0
        for job in batch:
            job.finish(outputs[start:start + len(job.prompts)])
            start += len(job.prompts)

    def _generate(self, prompts: list[str], params: GenerationParams) -> list[list[str]]:
        outputs = self.engine.generate(prompts, params)
        if len(outputs) != len(prompts):
            raise EngineContractError(self.engine.name, len(prompts), len(outputs))
        return outputs
