"""Writers of a job's results: CSV and JSONL as streamed byte chunks, XLSX as a file; no cell ever runs as a formula."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from app.errors import InvalidParameter

OUTPUT_FORMATS = ("csv", "xlsx", "jsonl")
MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "jsonl": "application/x-ndjson; charset=utf-8",
}
# A chunk is sent once it holds this many characters: big enough for few writes, small enough to stream.
_CHUNK_CHARS = 64 * 1024
# Spreadsheets read a cell starting with one of these as a formula (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
# Characters XML 1.0 cannot hold (openpyxl raises IllegalCharacterError on them).
_ILLEGAL_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def checked_format(format: object) -> str:
    """`format` when it is one of OUTPUT_FORMATS; else a 422 naming the field."""
    if format not in OUTPUT_FORMATS:
        raise InvalidParameter(f"format 只能是 {'、'.join(OUTPUT_FORMATS)}（收到 {str(format)[:20]!r}）", field="format")
    return format


def result_filename(filename: str, kind: str, job_id: str, format: str) -> str:
    """The name a job's result is downloaded as, on every surface: "评论-augment-<id>.csv"."""
    stem = Path(filename).stem or "data"
    return f"{stem}-{kind}-{job_id}.{format}"


def write_result(format: str, columns: list[str], rows: Iterable[Mapping[str, object]], path: Path) -> None:
    """A job's result as a file of `format` (one of OUTPUT_FORMATS)."""
    if format == "xlsx":
        write_xlsx(columns, rows, path)
        return
    chunks = csv_chunks(columns, rows) if format == "csv" else jsonl_chunks(columns, rows)
    with open(path, "wb") as sink:
        for chunk in chunks:
            sink.write(chunk)


def excel_safe(value: object) -> object:
    """A cell value a spreadsheet shows as written: text that would start a formula gets a leading quote."""
    value = _flat(value)
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_chunks(columns: list[str], rows: Iterable[Mapping[str, object]]) -> Iterator[bytes]:
    """UTF-8 CSV with a BOM (so Excel reads it as UTF-8), header first, in chunks of about 64 KB."""
    buffer = io.StringIO()
    buffer.write("\ufeff")
    writer = csv.writer(buffer)
    writer.writerow([excel_safe(c) for c in columns])
    for row in rows:
        writer.writerow([excel_safe(row.get(c)) for c in columns])
        if buffer.tell() >= _CHUNK_CHARS:
            yield _drain(buffer)
    yield _drain(buffer)


def jsonl_chunks(columns: list[str], rows: Iterable[Mapping[str, object]]) -> Iterator[bytes]:
    """One JSON object per line, keys in `columns` order, values as they are, in chunks of about 64 KB."""
    buffer = io.StringIO()
    for row in rows:
        buffer.write(json.dumps({c: row.get(c, "") for c in columns}, ensure_ascii=False, default=str))
        buffer.write("\n")
        if buffer.tell() >= _CHUNK_CHARS:
            yield _drain(buffer)
    if buffer.tell():
        yield _drain(buffer)


def write_xlsx(columns: list[str], rows: Iterable[Mapping[str, object]], path: Path,
               sheet_title: str = "结果") -> None:
    """An XLSX file of one sheet, written row by row (openpyxl's write-only mode); text stays text."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(sheet_title)
    sheet.append([_xlsx_cell(sheet, c) for c in columns])
    for row in rows:
        sheet.append([_xlsx_cell(sheet, row.get(c)) for c in columns])
    workbook.save(path)


def _flat(value: object) -> object:
    """None as "", lists and objects as compact JSON text; everything else unchanged."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return value


def _xlsx_cell(sheet, value: object):
    """A write-only cell; text is typed as a string so openpyxl never turns "=..." into a formula."""
    from openpyxl.cell import WriteOnlyCell

    value = _flat(value)
    if not isinstance(value, (str, bool, int, float)):
        value = str(value)
    if not isinstance(value, str):
        return WriteOnlyCell(sheet, value=value)
    cell = WriteOnlyCell(sheet, value=_ILLEGAL_XML.sub("", value))
    cell.data_type = "s"
    return cell


def _drain(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode("utf-8")
    buffer.seek(0)
    buffer.truncate()
    return data
