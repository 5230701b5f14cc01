"""The Gradio API's file job endpoints for gradio_client: /job_submit (a file from handle_file and the options of
POST /jobs, by the same names), /job_status and /job_result, through the same `Jobs` as REST and the page."""

from __future__ import annotations

import asyncio
from pathlib import Path

import gradio as gr

from app.errors import InvalidParameter
from app.jobs.export import checked_format, result_filename, write_result
from app.jobs.manager import Jobs
from app.ui.events import SessionWork, event, in_api_words
from app.ui.files import download_path, uploaded

# The options' types, as POST /jobs's form fields have them; a value of another type is refused, naming the field.
# The generation and gate fields' types and ranges are checked where they are read, as for every request.
_FIELD_TYPES = {**dict.fromkeys(("kind", "text_col", "label_col", "label_check", "sheet", "engine", "quality"),
                                (str, "字符串")),
                **dict.fromkeys(("multi_label", "include_original"), (bool, "布尔值")),
                "threshold": ((int, float), "数字")}


def _checked_options(values: dict) -> dict:
    """The options sent, "" and None left out (the server's default), each of its field's type."""
    options = {}
    for name, value in values.items():
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "":
            continue
        kind, words = _FIELD_TYPES.get(name, (object, ""))
        if not isinstance(value, kind) or (kind == (int, float) and isinstance(value, bool)):
            raise InvalidParameter(f"{name} 应为{words}（收到 {repr(value)[:80]}）", field=name)
        options[name] = value
    return options


def _job_id(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidParameter(f"job_id 应为字符串（收到 {repr(value)[:80]}）", field="job_id")
    return value


def _upload(file: object) -> tuple[Path, str]:
    """The uploaded file's path and its name as the client sent it."""
    if not isinstance(file, dict):
        raise InvalidParameter("file 应为 gradio_client 的 handle_file(路径) 上传的文件", field="file")
    path = uploaded(file.get("path"))
    name = file.get("orig_name") if isinstance(file.get("orig_name"), str) else None
    return path, name or path.name


async def job_submit(jobs: Jobs, file: dict, text_col: str, kind: str = "augment", label_col: str | None = None,
                     labels: list[str] | str | None = None, label_check: str | None = None,
                     multi_label: bool | None = None, threshold: float | None = None,
                     include_original: bool | None = None, sheet: str | None = None, engine: str | None = None,
                     num_return_sequences: int | None = None, max_length: int | None = None,
                     temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                     seed: int | None = None, quality: str | None = None, min_similarity: float | None = None,
                     max_similarity: float | None = None, min_length_ratio: float | None = None,
                     max_length_ratio: float | None = None, min_label_prob: float | None = None) -> dict:
    """Start a file job (augment or classify) on a CSV, TSV, XLSX or JSONL file sent with handle_file; the options
    are POST /jobs's. Returns the job as /job_status shows it: id, state, rows_done, rows_total and the rest."""
    options = _checked_options({name: value for name, value in locals().items() if name not in ("jobs", "file")})
    path, name = _upload(file)
    job = await asyncio.to_thread(jobs.submit, path, name, options)
    return jobs.view(job)


async def job_status(jobs: Jobs, job_id: str) -> dict:
    """A job's state and progress: state (queued, running, done, failed, cancelled), rows_done, rows_total,
    rows_per_second, eta_seconds, counts, notes, error."""
    return jobs.view(await asyncio.to_thread(jobs.get, _job_id(job_id)))


def export_result(jobs: Jobs, job_id: str, format: str) -> tuple[Path, int]:
    """Write a job's output so far as a file of `format`; returns its path and its number of rows. Blocking."""
    format = checked_format(format)
    job, columns, rows = jobs.output(job_id)
    path = download_path(result_filename(job.filename, job.kind, job.id, format))
    written = 0

    def counted():
        nonlocal written
        for row in rows:
            written += 1
            yield row

    write_result(format, columns, counted(), path)
    return path, written


async def job_result(jobs: Jobs, job_id: str, format: str = "csv") -> dict:
    """The job's output as a file (csv, xlsx or jsonl): every row once the job is done, the rows done so far
    before that."""
    path, _ = await asyncio.to_thread(export_result, jobs, _job_id(job_id), format)
    return {"path": str(path), "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def register(jobs: Jobs, sessions: SessionWork) -> None:
    for handler in (job_submit, job_status, job_result):
        gr.api(event(handler, jobs, sessions, in_api_words), api_name=handler.__name__)
