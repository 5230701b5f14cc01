"""The job store: one SQLite database (WAL) under the data directory, made on first use.

A job's input rows are copied in when it is made, all in one transaction, so a refused file leaves
nothing behind. Results are appended chunk by chunk: a chunk's rows and the job's progress are written
in one transaction, and only while the job is still running, so a job killed at any moment resumes from
its last finished chunk with nothing lost and nothing written twice (a row's result is keyed by the row).
Every method opens its own connection: they are called from worker threads and from the CLI alike.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.jobs.spec import FINISHED, JobSpec

DB_NAME = "jobs.sqlite3"
PAGE_ROWS = 1000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    filename TEXT NOT NULL,
    columns TEXT NOT NULL,
    owner TEXT,
    origin TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    rows_total INTEGER NOT NULL,
    rows_done INTEGER NOT NULL DEFAULT 0,
    chunks_done INTEGER NOT NULL DEFAULT 0,
    counts TEXT NOT NULL DEFAULT '{}',
    notes TEXT NOT NULL DEFAULT '[]',
    error TEXT
);
CREATE TABLE IF NOT EXISTS inputs (job TEXT NOT NULL, row INTEGER NOT NULL, data TEXT NOT NULL,
                                   PRIMARY KEY (job, row)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outputs (job TEXT NOT NULL, row INTEGER NOT NULL, data TEXT NOT NULL,
                                    PRIMARY KEY (job, row)) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    state: str
    spec: JobSpec
    filename: str
    columns: list[str]
    owner: str | None
    origin: str  # "server" or "cli": which kind of process runs it
    created: float
    started: float | None
    finished: float | None
    rows_total: int
    rows_done: int
    chunks_done: int
    counts: dict
    notes: list[str]
    error: str | None

    @property
    def chunks_total(self) -> int:
        return -(-self.rows_total // self.spec.chunk_rows)

    @property
    def finished_state(self) -> bool:
        return self.state in FINISHED


def _job(row: sqlite3.Row) -> Job:
    return Job(id=row["id"], kind=row["kind"], state=row["state"], spec=JobSpec.from_dict(json.loads(row["spec"])),
               filename=row["filename"], columns=json.loads(row["columns"]), owner=row["owner"], origin=row["origin"],
               created=row["created"], started=row["started"], finished=row["finished"],
               rows_total=row["rows_total"], rows_done=row["rows_done"], chunks_done=row["chunks_done"],
               counts=json.loads(row["counts"]), notes=json.loads(row["notes"]), error=row["error"])


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class JobStore:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / DB_NAME
        self._ready = False

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    @contextlib.contextmanager
    def _db(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """A connection whose `with` block is one transaction (reads take no write lock: WAL lets them run beside
        a writer); the schema is made on first use."""
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            if not self._ready:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                self._ready = True
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # --- making and finding jobs ------------------------------------------------------------------

    def create(self, job_id: str, spec: JobSpec, filename: str, columns: list[str], rows: Iterable[dict],
               owner: str | None, settle: Callable[[], tuple[JobSpec, list[str]]], origin: str = "server") -> Job:
        """Copy the rows in and queue the job, in one transaction: an error while reading `rows` leaves nothing.
        `settle`, called once the rows are read, gives the final spec (what depends on the rows) and notes."""
        with self._db() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute("INSERT INTO jobs (id, seq, kind, state, spec, filename, columns, owner, origin, created, "
                       "rows_total) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, 0)",
                       (job_id, seq, spec.kind, _dumps(spec.as_dict()), filename, _dumps(columns), owner, origin,
                        time.time()))
            total, page = 0, []
            for row in rows:
                total += 1
                page.append((job_id, total, _dumps(row)))
                if len(page) == PAGE_ROWS:
                    db.executemany("INSERT INTO inputs VALUES (?, ?, ?)", page)
                    page = []
            db.executemany("INSERT INTO inputs VALUES (?, ?, ?)", page)
            spec, notes = settle()
            db.execute("UPDATE jobs SET rows_total = ?, spec = ?, notes = ? WHERE id = ?",
                       (total, _dumps(spec.as_dict()), _dumps(notes), job_id))
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        if not self.exists:
            return None
        with self._db(write=False) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, owner: str | None = None) -> list[Job]:
        """Every job, newest first (only `owner`'s when given)."""
        if not self.exists:
            return []
        with self._db(write=False) as db:
            if owner is None:
                rows = db.execute("SELECT * FROM jobs ORDER BY seq DESC").fetchall()
            else:
                rows = db.execute("SELECT * FROM jobs WHERE owner = ? ORDER BY seq DESC", (owner,)).fetchall()
        return [_job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state (states without jobs left out)."""
        if not self.exists:
            return {}
        with self._db(write=False) as db:
            return dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())

    def next_job(self, origin: str = "server") -> Job | None:
        """The job to run: one left running (by a process that stopped) first, then the oldest queued; only
        jobs of `origin` (a server never runs the CLI's jobs, which the CLI resumes itself)."""
        if not self.exists:
            return None
        with self._db(write=False) as db:
            row = db.execute("SELECT * FROM jobs WHERE state IN ('running', 'queued') AND origin = ? "
                             "ORDER BY state = 'running' DESC, seq LIMIT 1", (origin,)).fetchone()
        return _job(row) if row else None

    # --- running ------------------------------------------------------------------------------------

    def start(self, job_id: str, notes: list[str]) -> bool:
        """Mark a queued (or resumed) job running; False when it was cancelled or deleted meanwhile."""
        with self._db() as db:
            changed = db.execute("UPDATE jobs SET state = 'running', started = COALESCE(started, ?), notes = ? "
                                 "WHERE id = ? AND state IN ('queued', 'running')",
                                 (time.time(), _dumps(notes), job_id)).rowcount
        return bool(changed)

    def set_notes(self, job_id: str, notes: list[str]) -> None:
        with self._db() as db:
            db.execute("UPDATE jobs SET notes = ? WHERE id = ?", (_dumps(notes), job_id))

    def input_rows(self, job_id: str, first: int, last: int) -> list[tuple[int, dict]]:
        """Rows `first`..`last` (1-based, inclusive) as (row number, values)."""
        with self._db(write=False) as db:
            rows = db.execute("SELECT row, data FROM inputs WHERE job = ? AND row BETWEEN ? AND ? ORDER BY row",
                              (job_id, first, last)).fetchall()
        return [(row["row"], json.loads(row["data"])) for row in rows]

    def commit_chunk(self, job_id: str, chunk: int, results: list[tuple[int, dict]], counts: dict) -> bool:
        """Append one finished chunk's results and progress, in one transaction, only if the job is still
        running at exactly that chunk: False (nothing written) when it was cancelled, deleted or moved on."""
        with self._db() as db:
            changed = db.execute("UPDATE jobs SET rows_done = rows_done + ?, chunks_done = chunks_done + 1, "
                                 "counts = ? WHERE id = ? AND state = 'running' AND chunks_done = ?",
                                 (len(results), _dumps(counts), job_id, chunk)).rowcount
            if changed:
                db.executemany("INSERT INTO outputs VALUES (?, ?, ?)",
                               [(job_id, row, _dumps(result)) for row, result in results])
        return bool(changed)

    def finish(self, job_id: str, state: str, error: str | None = None) -> bool:
        """Move an unfinished job to done, failed or cancelled; False when it had already finished."""
        with self._db() as db:
            changed = db.execute("UPDATE jobs SET state = ?, error = ?, finished = ? "
                                 "WHERE id = ? AND state IN ('queued', 'running')",
                                 (state, error, time.time(), job_id)).rowcount
        return bool(changed)

    # --- results and upkeep -------------------------------------------------------------------------

    def results(self, job_id: str) -> Iterator[tuple[int, dict, dict | None]]:
        """Every row as (row number, values, result or None when not yet done), a page at a time."""
        last = 0
        while True:
            with self._db(write=False) as db:
                page = db.execute("SELECT i.row, i.data, o.data AS result FROM inputs i LEFT JOIN outputs o "
                                  "ON o.job = i.job AND o.row = i.row WHERE i.job = ? AND i.row > ? "
                                  "ORDER BY i.row LIMIT ?", (job_id, last, PAGE_ROWS)).fetchall()
            if not page:
                return
            for row in page:
                yield row["row"], json.loads(row["data"]), json.loads(row["result"]) if row["result"] else None
            last = page[-1]["row"]

    def delete(self, job_id: str) -> bool:
        with self._db() as db:
            changed = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
            db.execute("DELETE FROM inputs WHERE job = ?", (job_id,))
            db.execute("DELETE FROM outputs WHERE job = ?", (job_id,))
        return bool(changed)

    def expire(self, older_than_s: float) -> list[str]:
        """Delete finished jobs that finished more than `older_than_s` ago; their ids."""
        if not self.exists:
            return []
        cutoff = time.time() - older_than_s
        with self._db() as db:
            ids = [row[0] for row in db.execute(
                f"SELECT id FROM jobs WHERE state IN ({','.join('?' * len(FINISHED))}) AND finished < ?",
                (*FINISHED, cutoff))]
        for job_id in ids:
            self.delete(job_id)
        return ids
