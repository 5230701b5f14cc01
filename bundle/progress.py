"""Progress lines for the long bundle steps: one rewritten line on a terminal, a few plain lines in a log."""

from __future__ import annotations

import sys
import time


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


class Progress:
    """`Progress("compress", total, unit="bytes").advance(n)`; `done()` prints the closing line."""

    def __init__(self, step: str, total: int, *, unit: str = "", stream=None) -> None:
        self.step, self.total, self.unit = step, max(total, 1), unit
        self.stream = stream or sys.stderr
        self.count = 0
        self.started = time.monotonic()
        self._tty = self.stream.isatty()
        self._shown = -1  # last decile printed when not on a terminal

    def _amount(self, value: int) -> str:
        return human_size(value) if self.unit == "bytes" else f"{value}{' ' + self.unit if self.unit else ''}"

    def advance(self, amount: int = 1, note: str = "") -> None:
        self.count += amount
        percent = min(100, self.count * 100 // self.total)
        line = f"[{self.step}] {percent:3d}% {self._amount(self.count)} / {self._amount(self.total)}"
        if note:
            line += f"  {note}"
        if self._tty:
            self.stream.write("\r\033[K" + line[:160])
            self.stream.flush()
        elif percent // 10 > self._shown:
            self._shown = percent // 10
            print(line, file=self.stream, flush=True)

    def done(self, summary: str = "") -> None:
        seconds = time.monotonic() - self.started
        if self._tty:
            self.stream.write("\r\033[K")
        print(f"[{self.step}] done in {seconds:.1f} s{'  ' + summary if summary else ''}", file=self.stream, flush=True)
