"""REST routes of file jobs: submit (multipart), list, status, result (streamed), report, cancel, delete."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, field_validator
from starlette.background import BackgroundTask

from app.api_errors import UTF8JSONResponse
from app.errors import BodyTooLarge
from app.jobs.export import MEDIA_TYPES, checked_format, csv_chunks, jsonl_chunks, result_filename, write_xlsx
from app.jobs.manager import Jobs

router = APIRouter()
UPLOAD_COPY_BYTES = 1 << 20


class JobForm(BaseModel):
    """The options of POST /jobs, as form fields beside `file`; an empty field is the same as none."""

    model_config = ConfigDict(extra="forbid")

    file: UploadFile
    kind: str = "augment"
    text_col: str
    label_col: str | None = None
    labels: str | None = None
    label_check: str | None = None
    multi_label: bool | None = None
    threshold: float | None = None
    include_original: bool | None = None
    sheet: str | None = None
    engine: str | None = None
    num_return_sequences: int | None = None
    max_length: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    number_forms: bool | None = None
    quality: str | None = None
    min_similarity: float | None = None
    max_similarity: float | None = None
    min_length_ratio: float | None = None
    max_length_ratio: float | None = None
    min_label_prob: float | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value


def _jobs(request: Request) -> Jobs:
    return request.app.state.jobs


@router.post("/jobs", status_code=202)
async def submit_job(request: Request, form: Annotated[JobForm, Form()]) -> UTF8JSONResponse:
    jobs, file = _jobs(request), form.file
    name = file.filename or "upload"
    # The upload is copied to a file of its own (the readers stream from a path), read, stored, removed.
    handle, path = tempfile.mkstemp(prefix="dpp-upload-", suffix=Path(name).suffix[:16])
    try:
        with os.fdopen(handle, "wb") as sink:
            await asyncio.to_thread(shutil.copyfileobj, file.file, sink, UPLOAD_COPY_BYTES)
            size, limit = sink.tell(), jobs.settings.max_file_bytes
        if size > limit:
            raise BodyTooLarge(f"文件共 {size} 字节，超过上限 {limit} 字节（--max-file-bytes）", field="file")
        job = await asyncio.to_thread(jobs.submit, Path(path), name, form.model_dump(exclude_none=True, exclude={"file"}))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return UTF8JSONResponse(jobs.view(job), status_code=202, headers={"Location": f"/jobs/{job.id}"})


@router.get("/jobs")
async def list_jobs(request: Request) -> dict:
    jobs = _jobs(request)
    return {"jobs": [jobs.view(job) for job in await asyncio.to_thread(jobs.list)]}


@router.get("/jobs/{job_id}")
async def job_status(job_id: str, request: Request) -> dict:
    jobs = _jobs(request)
    return jobs.view(await asyncio.to_thread(jobs.get, job_id))


@router.get("/jobs/{job_id}/report")
async def job_report(job_id: str, request: Request) -> StreamingResponse:
    """Streamed: a big job's report may list most of its rows."""
    chunks = await asyncio.to_thread(_jobs(request).report_chunks, job_id)
    return StreamingResponse((chunk.encode("utf-8") for chunk in chunks), media_type="application/json; charset=utf-8")


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request) -> dict:
    jobs = _jobs(request)
    return jobs.view(await asyncio.to_thread(jobs.cancel, job_id))


@router.delete("/jobs/{job_id}")
async def delete_job(job_id: str, request: Request) -> dict:
    await asyncio.to_thread(_jobs(request).delete, job_id)
    return {"id": job_id, "deleted": True}


@router.get("/jobs/{job_id}/result")
async def job_result(job_id: str, request: Request, format: Annotated[str, Query()] = "csv"):
    """The output so far (all of it once the job is done), streamed; X-Job-State says whether it is complete."""
    checked_format(format)
    job, columns, rows = await asyncio.to_thread(_jobs(request).output, job_id)
    headers = {"Content-Disposition": _attachment(job.filename, job.kind, job.id, format), "X-Job-State": job.state}
    if format == "xlsx":
        handle, path = tempfile.mkstemp(prefix="dpp-result-", suffix=".xlsx")
        os.close(handle)
        await asyncio.to_thread(write_xlsx, columns, rows, Path(path))
        return FileResponse(path, media_type=MEDIA_TYPES["xlsx"], headers=headers,
                            background=BackgroundTask(os.unlink, path))
    chunks = csv_chunks(columns, rows) if format == "csv" else jsonl_chunks(columns, rows)
    # A sync iterator: Starlette reads it in a thread pool, so the store's reads never block the event loop.
    return StreamingResponse(chunks, media_type=MEDIA_TYPES[format], headers=headers)


def _attachment(filename: str, kind: str, job_id: str, format: str) -> str:
    name = result_filename(filename, kind, job_id, format)
    ascii_name = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(name)}"
