"""The requests in flight, and the drain that lets them finish before the process stops (SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from app.errors import Draining

log = logging.getLogger(__name__)

# A draining server asks clients to come back soon: the next try reaches another replica or the new process.
RETRY_AFTER_S = 2


class InFlight:
    """Admitted requests, each the task that awaits it: counted, waited for, and cut short only when a
    drain runs out of time, with a 503 of their own rather than a dropped connection."""

    def __init__(self) -> None:
        self.draining = False
        self._tasks: set[asyncio.Task] = set()
        self._abandoned = False
        self._idle: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count the current request while it runs; refuse it while draining."""
        if self.draining:
            raise Draining("服务正在停止，不再接受新请求，请稍后重试", retry_after=RETRY_AFTER_S)
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if not self._abandoned:
                raise
            task.uncancel()  # cancelled by `abandon`, not by its client: it still owes an answer
            raise Draining("服务正在停止，本请求未能在停止前完成，请重试", retry_after=RETRY_AFTER_S) from None
        finally:
            self._tasks.discard(task)
            if not self._tasks and self._idle is not None:
                self._idle.set()

    def start_drain(self) -> None:
        """From now on new work is refused; what was admitted goes on."""
        if not self.draining:
            log.warning("draining: %d requests in flight; new work is refused", len(self))
        self.draining = True

    async def finished(self, timeout_s: float) -> bool:
        """Wait until no admitted request is left, at most `timeout_s`; whether none is."""
        if self._tasks:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        return not self._tasks

    def abandon(self) -> None:
        """The drain is over: every request still in flight is answered 503 draining now."""
        self._abandoned = True
        for task in self._tasks:
            task.cancel()
