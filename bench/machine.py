"""Name the machine a benchmark ran on, for the results files."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def describe() -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"


def peak_rss(pid: int | str = "self") -> int:
    """Peak resident set size (VmHWM) of a process, in bytes. Not ru_maxrss, which a child can inherit
    from its parent's peak across fork and exec."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_interleaved(arms: dict[str, Callable[[Any], object]], inputs: list, rounds: int,
                    warm_up: bool = True) -> dict[str, list[float]]:
    """Milliseconds per call of each arm on each input, over `rounds` timed rounds after an untimed
    warm-up round. Within a round the arms take turns going first, so none owns a quiet moment.

    warm_up=False skips the warm-up round, for arms the caller has warmed already (a slow arm's
    round can cost minutes)."""
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    first = 0 if warm_up else 1
    for round_number in range(first, rounds + 1):
        for index, item in enumerate(inputs):
            shift = (round_number + index) % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                arms[name](item)
                if round_number:
                    times[name].append((time.perf_counter() - started) * 1000)
    return times


def emit(report: dict, out: Path | None) -> int:
    """Print the report as JSON, and write it to `out` too when given."""
    text = json.dumps(report, ensure_ascii=False, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n", "utf-8")
    return 0
