"""Memory of file jobs on the lexical engine: a server's RSS while it takes, runs and serves a job, and the
CLI's peak, at several file sizes (bench.jobs calls it; the sizes' peaks should be the same).

The job code streams: the file into SQLite a page of rows at a time, the result out of SQLite a page at a
time, so neither the server nor the CLI should grow with the file. Each size gets a fresh server (so one
size's high-water mark cannot hide another's) and a fresh CLI process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from bench.job_files import (GENERATION, RSS_INTERVAL_S, RssWatch, check_output, download, make_rows, mib, served,
                             submit, vm, wait_for, write_file)
from tests.conftest import server_env

ROOT = Path(__file__).resolve().parent.parent
LEXICAL_FLAGS = ["--engine", "lexical", "--quality", "on"]
JOB = {"kind": "augment", "text_col": "text", "label_col": "label", "engine": "lexical", **GENERATION}
CLI_TIMEOUT_S = 4 * 3600.0


def server_memory(work: Path, size: int, extra_flags: list[str], progress) -> dict:
    """One fresh lexical server: RSS when ready and warm, then the peak while the job is uploaded and stored,
    while it runs, and while its result is downloaded as CSV."""
    rows = make_rows(size)
    path = write_file(rows, work / f"memory-{size}.csv")
    del rows
    with served(work, [*LEXICAL_FLAGS, *extra_flags]) as server, requests.Session() as session:
        pid = server.process.pid
        session.post(server.url + "/augment", json={"text": "预热：第一次调用分配缓冲区。", **GENERATION},
                     timeout=60).raise_for_status()
        time.sleep(1.0)  # let the warm-up's garbage go before the baseline
        ready_peak, before = vm(pid, "VmHWM"), vm(pid, "VmRSS")
        watch = RssWatch(pid)
        try:
            started = time.monotonic()
            job = submit(session, server.url, path, JOB)
            submitted = time.monotonic()
            peak_submit = watch.phase()
            view, _ = wait_for(session, server.url, job["id"], ("done",))
            ran = time.monotonic()
            peak_run = watch.phase()
            result = work / f"memory-{size}-result.csv"
            size_bytes = download(session, server.url, job["id"], result)
            downloaded = time.monotonic()
            peak_download = watch.phase()
            after = vm(pid, "VmRSS")
        finally:
            watch.close()
    checked = check_output(result, size)
    result.unlink()
    path.unlink()
    progress(f"server memory, {size} rows: peak {mib(max(peak_submit, peak_run, peak_download))} MiB")
    return {
        "rows": size,
        "rss_before_mib": mib(before),
        "vmhwm_at_ready_mib": mib(ready_peak),
        "peak_upload_and_store_mib": mib(peak_submit),
        "peak_run_mib": mib(peak_run),
        "peak_download_csv_mib": mib(peak_download),
        "rss_after_mib": mib(after),
        "growth_during_job_mib": mib(max(peak_submit, peak_run) - before),
        "growth_during_download_mib": mib(peak_download - before),
        "peak_exact": watch.exact,
        "submit_s": round(submitted - started, 2),
        "run_s": round(ran - submitted, 2),
        "download_s": round(downloaded - ran, 2),
        "result_csv_bytes": size_bytes,
        "job_counts": view["counts"],
        "output": checked,
    }


def cli_memory(work: Path, size: int, progress) -> dict:
    """`python -m app.jobs augment` on a file of `size` rows: its peak RSS (VmHWM read until it exits) and time."""
    path = write_file(make_rows(size), work / f"cli-{size}.csv")
    out = work / f"cli-{size}-out.csv"
    log = work / f"cli-{size}.log"
    command = [sys.executable, "-m", "app.jobs", "augment", str(path), "-o", str(out), "--text-col", "text",
               "--label-col", "label", "--engine", "lexical", "--quality", "on",
               "--num-return-sequences", str(GENERATION["num_return_sequences"]),
               "--max-length", str(GENERATION["max_length"]),
               "--data-dir", str(work / f"cli-data-{size}"), "--log-dir", str(work / f"cli-logs-{size}")]
    started = time.monotonic()
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=server_env())
    peak = 0
    try:
        while process.poll() is None:
            peak = max(peak, vm(process.pid, "VmHWM") or 0)  # VmHWM only rises: the last read before exit holds
            if time.monotonic() - started > CLI_TIMEOUT_S:
                raise RuntimeError(f"the CLI ran past {CLI_TIMEOUT_S:.0f} s on {size} rows")
            time.sleep(RSS_INTERVAL_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    wall = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"the CLI exited {process.returncode}:\n{log.read_text('utf-8', errors='replace')[-3000:]}")
    checked = check_output(out, size)
    for done in (out, path):
        done.unlink()
    progress(f"CLI memory, {size} rows: peak {mib(peak)} MiB in {wall:.0f} s")
    return {"rows": size, "peak_mib": mib(peak), "wall_s": round(wall, 2), "rows_per_s": round(size / wall, 1),
            "output": checked}


def measure(work: Path, sizes: list[int], extra_flags: list[str], progress) -> dict:
    """Server and CLI memory at each size, and how the largest size's peaks compare with the smallest's."""
    load_start = round(os.getloadavg()[0], 2)
    servers = [server_memory(work, size, extra_flags, progress) for size in sizes]
    clis = [cli_memory(work, size, progress) for size in sizes]

    def job_peak(one: dict) -> float:
        return max(one["peak_upload_and_store_mib"], one["peak_run_mib"])

    small, large = servers[0], servers[-1]
    return {
        "engine": "lexical",
        "load_average_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "job": {name: value for name, value in JOB.items() if name != "engine"},
        "server": servers,
        "cli": clis,
        "summary": {
            "sizes": sizes,
            "server_peak_during_job_mib": [job_peak(one) for one in servers],
            "server_peak_download_mib": [one["peak_download_csv_mib"] for one in servers],
            "cli_peak_mib": [one["peak_mib"] for one in clis],
            "server_job_peak_largest_over_smallest": round(job_peak(large) / job_peak(small), 3),
            "server_download_peak_largest_over_smallest": round(
                large["peak_download_csv_mib"] / small["peak_download_csv_mib"], 3),
            "cli_peak_largest_over_smallest": round(clis[-1]["peak_mib"] / clis[0]["peak_mib"], 3),
            "outputs_ok": all(one["output"]["ok"] for one in [*servers, *clis]),
        },
        "method": f"server: VmRSS sampled every {RSS_INTERVAL_S * 1000:.0f} ms and, where peak_exact, VmHWM reset "
                  "(clear_refs) at each phase's start; CLI: its VmHWM, read until it exits",
    }
