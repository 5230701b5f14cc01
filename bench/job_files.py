"""What bench.jobs and bench.job_memory share: the labelled file, a server, a job's life over REST, checks of
a job's output, and a process's memory read from /proc."""

from __future__ import annotations

import contextlib
import csv
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.texts import LABELS, NEW_TOKENS, TEXTS, VARIANTS
from tests.conftest import LiveServer, start_server

ROOT = Path(__file__).resolve().parent.parent
SENTENCE_FILES = (ROOT / "tests" / "data" / "lexical_sentences.tsv", ROOT / "tests" / "data" / "zh_sentences.txt")
# The file's columns: the text, its label, and two the job must carry through untouched.
COLUMNS = ("id", "text", "label", "domain")
GENERATION = {"num_return_sequences": VARIANTS, "max_length": NEW_TOKENS}
FINISHED = ("done", "failed", "cancelled")
POLL_S = 0.1
JOB_TIMEOUT_S = 4 * 3600.0
REQUEST_TIMEOUT_S = 1800.0
RSS_INTERVAL_S = 0.02


@dataclass(frozen=True)
class Row:
    id: str
    text: str
    label: str
    domain: str


def sentences() -> list[tuple[str, str]]:
    """(domain, sentence) from bench.texts and the tests' sentence files."""
    found = [("电商评价", text) for text in TEXTS]
    for path in SENTENCE_FILES:
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                domain, _, text = line.rpartition("\t")
                found.append((domain or "通用", text.strip()))
    return found


def label_of(number: int) -> str:
    """The label of data row `number` (1-based): the ten review labels in turn."""
    return LABELS[(number - 1) % len(LABELS)]


def make_rows(count: int) -> list[Row]:
    """`count` rows; each text carries its row number, so no two rows of a file are the same text."""
    pool = sentences()
    return [Row(f"r{n}", f"{pool[(n - 1) % len(pool)][1]}（第{n}条）", label_of(n), pool[(n - 1) % len(pool)][0])
            for n in range(1, count + 1)]


def write_file(rows: list[Row], path: Path) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow(COLUMNS)
        writer.writerows((row.id, row.text, row.label, row.domain) for row in rows)
    return path


@contextlib.contextmanager
def served(work: Path, flags: list[str]) -> Iterator[LiveServer]:
    """webui.py on a free loopback port, its data directory and logs under `work`, ready; stopped after."""
    server = start_server(work, *flags)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def fail(response: requests.Response, what: str) -> None:
    if response.status_code >= 400:
        raise RuntimeError(f"{what} answered {response.status_code}: {response.text[:500]}")


def submit(session: requests.Session, url: str, path: Path, options: dict) -> dict:
    """POST /jobs; the job as the 202 answer shows it."""
    with open(path, "rb") as handle:
        response = session.post(url + "/jobs", files={"file": (path.name, handle, "text/csv")},
                                data={name: str(value) for name, value in options.items()}, timeout=REQUEST_TIMEOUT_S)
    fail(response, "POST /jobs")
    return response.json()


def job_view(session: requests.Session, url: str, job_id: str) -> dict:
    response = session.get(f"{url}/jobs/{job_id}", timeout=60)
    fail(response, "GET /jobs/{id}")
    return response.json()


def wait_for(session: requests.Session, url: str, job_id: str, states: tuple[str, ...]) -> tuple[dict, float | None]:
    """Poll the job until its state is one of `states`; the view then, and the last rows_per_second it showed."""
    deadline, rate = time.monotonic() + JOB_TIMEOUT_S, None
    while time.monotonic() < deadline:
        view = job_view(session, url, job_id)
        rate = view.get("rows_per_second") or rate
        if view["state"] in states:
            return view, rate
        if view["state"] in FINISHED:
            raise RuntimeError(f"job {job_id} ended {view['state']}: {view.get('error')}")
        time.sleep(POLL_S)
    raise RuntimeError(f"job {job_id} not {'/'.join(states)} within {JOB_TIMEOUT_S:.0f} s")


def stop_job(session: requests.Session, url: str, job_id: str) -> None:
    """Cancel the job and delete it with its rows."""
    fail(session.post(f"{url}/jobs/{job_id}/cancel", timeout=60), "POST /jobs/{id}/cancel")
    fail(session.delete(f"{url}/jobs/{job_id}", timeout=60), "DELETE /jobs/{id}")


def download(session: requests.Session, url: str, job_id: str, path: Path, form: str = "csv") -> int:
    """Stream the job's result to `path`; its size in bytes."""
    with session.get(f"{url}/jobs/{job_id}/result", params={"format": form}, stream=True,
                     timeout=REQUEST_TIMEOUT_S) as response:
        fail(response, "GET /jobs/{id}/result")
        with open(path, "wb") as sink:
            for piece in response.iter_content(1 << 16):
                sink.write(piece)
    return path.stat().st_size


def check_output(path: Path, rows: int) -> dict:
    """What an augment job's CSV holds against its input of `rows` rows made by `make_rows`: every source row
    present, each output row with its source row's label and untouched extra columns."""
    seen: set[int] = set()
    out_rows = variants = wrong_label = wrong_extra = 0
    with open(path, encoding="utf-8-sig", newline="") as source:
        for record in csv.DictReader(source):
            out_rows += 1
            number = int(record["source_row"])
            seen.add(number)
            variants += record["variant"] != "0"
            wrong_label += record["label"] != label_of(number)
            wrong_extra += record["id"] != f"r{number}"
    return {"output_rows": out_rows, "variant_rows": variants, "source_rows_seen": len(seen),
            "every_source_row_present": seen == set(range(1, rows + 1)),
            "rows_with_wrong_label": wrong_label, "rows_with_wrong_id": wrong_extra,
            "ok": seen == set(range(1, rows + 1)) and wrong_label == 0 and wrong_extra == 0}


# --- memory, from /proc -------------------------------------------------------------------------------


def vm(pid: int, name: str) -> int | None:
    """A Vm* line of /proc/PID/status (VmRSS, VmHWM) in bytes; None once the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak(pid: int) -> bool:
    """Set the process's VmHWM back to its VmRSS (Linux 4.0+: write 5 to clear_refs); False where refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssWatch:
    """Samples a process's VmRSS on a thread; `phase()` returns the peak since the last call and starts anew.
    Where clear_refs works, the kernel's own peak (VmHWM, reset per phase) is taken too: a sample can miss a
    short spike, VmHWM cannot."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exact = reset_peak(pid)
        self._peak = vm(pid, "VmRSS") or 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(RSS_INTERVAL_S):
            rss = vm(self.pid, "VmRSS")
            if rss is None:
                return
            with self._lock:
                self._peak = max(self._peak, rss)

    def phase(self) -> int:
        with self._lock:
            peak, self._peak = self._peak, vm(self.pid, "VmRSS") or 0
        if self.exact:
            peak = max(peak, vm(self.pid, "VmHWM") or 0)
            reset_peak(self.pid)
        return peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def mib(value: int | None) -> float | None:
    return None if value is None else round(value / 1048576, 1)
