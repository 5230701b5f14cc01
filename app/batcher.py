"""Dynamic batching on the event loop: admission at the door, one engine thread, fair turns.

Each request is admitted once, on arrival, against `max_queue` (requests waiting for the engine,
whatever surface they came from) and then hands the batcher awaitables: a future per engine call
it asks for, resolved by the worker. Waiting holds no thread; the engine call is the only thing
that runs in one (a single thread per engine).

Requests whose generation parameters match (and that carry no seed) are joined into one
`generate` call that costs at most what a full batch of default requests costs. The worker takes
the next call as soon as the engine is free, and waits at most `max_wait_s` for company only while
the call is short. Turns are fair: the next call goes to the waiting request that has had the
least engine time, less the time it has waited, so one heavy client cannot starve short requests.
A seeded request always runs alone, so its output depends on its own prompts and seed only.
When a joined call fails, each request in it is retried alone: a bad neighbour fails only itself.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from app.engines import Engine
from app.errors import DppError, EngineContractError, Overloaded, RequestTimeout
from app.params import DEFAULTS, GenerationParams

log = logging.getLogger(__name__)

OVERLOAD_MESSAGE = "服务繁忙：排队的请求已满（{limit} 个），请 {wait} 秒后重试"


@dataclasses.dataclass(eq=False)
class Ticket:
    """One admitted request: its deadline (counted from its arrival) and the engine time it has had so far."""

    deadline: float
    served_s: float = 0.0


@dataclasses.dataclass(eq=False)
class _Job:
    run: Callable[[Engine], Any] | None  # a call that must run alone (scoring)
    prompts: list[str]
    params: GenerationParams | None
    ticket: Ticket
    future: asyncio.Future
    queued_at: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def key(self) -> object:
        """Jobs with equal keys may share one engine call."""
        if self.run is not None or self.params.seed is not None:
            return self
        return self.params

    def turn(self, now: float) -> float:
        """Lower goes first: engine time had, less time waited (short and patient requests first)."""
        return self.ticket.served_s - (now - self.queued_at)


class _EngineThread(concurrent.futures.Executor):
    """One daemon thread that makes the engine calls: unlike a ThreadPoolExecutor's, it does not hold the
    process at exit, so a drain that ran out of time ends the process within its bound."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def _run(self) -> None:
        while True:
            future, fn, args, kwargs = self._calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side, which decides
                future.set_exception(exc)


class Batcher:
    """Owns one engine: every call to it goes through `generate` or `call`, on one event loop."""

    def __init__(self, engine: Engine, *, max_items: int, max_wait_s: float, max_queue: int,
                 coalesce: bool = True, on_call: Callable[[str, float, int], None] | None = None) -> None:
        self.engine = engine
        self._on_call = on_call  # told each engine call's duration and prompts (the metrics)
        self._max_items = max_items
        # A call may cost what a full batch of default requests costs: a longer or wider request runs in
        # more calls, so that a cancelled one stops costing within one, and others get turns between them.
        self._call_tokens = max_items * DEFAULTS.tokens_per_prompt
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._coalesce = coalesce
        self._queue: collections.deque[_Job] = collections.deque()
        self._admitted: set[Ticket] = set()
        self._running: set[Ticket] = set()
        self._call_seconds = 1.0  # moving average, for Retry-After
        self._executor = _EngineThread(f"dpp-engine-{engine.name}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task | None = None
        self._wakeup: asyncio.Event | None = None

    # --- admission --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def admitted(self, arrived: float, timeout_s: float) -> Iterator[Ticket]:
        """Admit one request for its whole life (all its calls), or refuse it now with 503 overloaded."""
        waiting = self.load()["waiting"]
        if waiting >= self._max_queue:
            wait = max(1, math.ceil(self._call_seconds * (1 + waiting / self._max_items)))
            raise Overloaded(OVERLOAD_MESSAGE.format(limit=self._max_queue, wait=wait), retry_after=wait)
        ticket = Ticket(arrived + timeout_s)
        self._admitted.add(ticket)
        try:
            yield ticket
        finally:
            self._admitted.discard(ticket)

    def load(self) -> dict[str, int]:
        """Admitted requests: those in the running engine call, and those waiting."""
        running = len(self._running & self._admitted)
        return {"running": running, "waiting": len(self._admitted) - running}

    def prompts_per_call(self, params: GenerationParams) -> int:
        """Most prompts with these parameters that one engine call may take."""
        return max(1, min(self._max_items, self._call_tokens // params.tokens_per_prompt))

    # --- calls ------------------------------------------------------------------------------------

    async def generate(self, prompts: list[str], params: GenerationParams, ticket: Ticket) -> list[list[str]]:
        """The engine's outputs for `prompts`, possibly computed together with other requests'."""
        return await self._submit(None, prompts, params, ticket)

    async def call(self, run: Callable[[Engine], Any], ticket: Ticket) -> Any:
        """Run `run(engine)` on the engine thread, alone, in its turn."""
        return await self._submit(run, [], None, ticket)

    async def _submit(self, run, prompts, params, ticket: Ticket) -> Any:
        self._start_worker()
        job = _Job(run, prompts, params, ticket, self._loop.create_future())
        self._queue.append(job)
        self._wakeup.set()
        try:
            async with asyncio.timeout(ticket.deadline - time.monotonic()):
                return await job.future
        except TimeoutError:
            raise RequestTimeout("等待模型超时，请稍后重试") from None
        finally:
            # Cancelled, timed out or answered: a job still queued leaves at once (a running call's
            # answer is dropped when it comes).
            job.future.cancel()
            with contextlib.suppress(ValueError):
                self._queue.remove(job)

    def _start_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is not None and not self._worker.done():
            if self._loop is not loop:
                raise RuntimeError("a Batcher serves one event loop at a time")
            return
        self._loop, self._wakeup = loop, asyncio.Event()
        self._worker = loop.create_task(self._work(), name=f"dpp-batcher-{self.engine.name}")

    # --- the worker -------------------------------------------------------------------------------

    async def _take(self) -> list[_Job]:
        """Wait for work; return the job whose turn it is and the queued jobs that may join it."""
        while True:
            self._forget_answered()
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                self._forget_answered()
            now = time.monotonic()
            first = min(self._queue, key=lambda job: job.turn(now))
            if first.key is first or not self._coalesce:  # runs alone: no reason to wait
                self._queue.remove(first)
                return [first]
            limit = self.prompts_per_call(first.params)
            until = now + self._max_wait_s
            while True:
                batch, items = [first], len(first.prompts)
                for job in self._queue:
                    if job is not first and job.key == first.key and items + len(job.prompts) <= limit:
                        batch.append(job)
                        items += len(job.prompts)
                left = until - time.monotonic()
                if items >= limit or left <= 0 or first.future.done():
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), left)
            batch = [job for job in batch if not job.future.done()]
            for job in batch:
                self._queue.remove(job)
            if batch:
                return batch

    def _forget_answered(self) -> None:
        """Drop queued jobs whose future is already done. A cancelled request's future is cancelled at once, but
        the request leaves the queue only when its task next runs: chosen meanwhile, it would be chosen again
        and again without the loop ever getting to run that task."""
        if any(job.future.done() for job in self._queue):
            self._queue = collections.deque(job for job in self._queue if not job.future.done())

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            self._running = {job.ticket for job in batch}
            started = time.monotonic()
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run_batch, batch)
            finally:
                self._running = set()
            elapsed = time.monotonic() - started
            self._call_seconds = 0.8 * self._call_seconds + 0.2 * elapsed
            prompts = sum(max(1, len(job.prompts)) for job in batch)
            if self._on_call is not None:
                self._on_call(self.engine.name, elapsed, prompts)
            for job, (result, error) in zip(batch, outcomes):
                job.ticket.served_s += elapsed * max(1, len(job.prompts)) / prompts
                if job.future.done():  # its request was cancelled or timed out meanwhile
                    continue
                if error is not None:
                    job.future.set_exception(error)
                else:
                    job.future.set_result(result)

    # --- on the engine thread ---------------------------------------------------------------------

    def _run_batch(self, batch: list[_Job]) -> list[tuple[Any, BaseException | None]]:
        if len(batch) == 1:
            return [self._run_alone(batch[0])]
        prompts = [prompt for job in batch for prompt in job.prompts]
        try:
            outputs = self._generate(prompts, batch[0].params)
        except Exception:  # noqa: BLE001 - find whose request it was: each runs alone
            log.warning("a joined call of %d requests failed; running them one by one", len(batch))
            return [self._run_alone(job) for job in batch]
        log.debug("one engine call served %d requests (%d prompts)", len(batch), len(prompts))
        outcomes, start = [], 0
        for job in batch:
            outcomes.append((outputs[start:start + len(job.prompts)], None))
            start += len(job.prompts)
        return outcomes

    def _run_alone(self, job: _Job) -> tuple[Any, BaseException | None]:
        try:
            if job.run is not None:
                return job.run(self.engine), None
            return self._generate(job.prompts, job.params), None
        except Exception as exc:  # noqa: BLE001 - the error belongs to this request; the worker goes on
            if not isinstance(exc, DppError):
                log.error("engine %s failed on a request", self.engine.name, exc_info=exc)
            return None, exc

    def _generate(self, prompts: list[str], params: GenerationParams) -> list[list[str]]:
        outputs = self.engine.generate(prompts, params)
        if len(outputs) != len(prompts):
            raise EngineContractError(self.engine.name, len(prompts), len(outputs))
        return outputs
