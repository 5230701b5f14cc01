"""Readers of the files a job takes: CSV, TSV, XLSX and JSONL, streamed row by row as dicts keyed by header."""

from __future__ import annotations

import codecs
import csv
import datetime
import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from xml.etree.ElementTree import ParseError

from app.errors import DppError

INPUT_FORMATS = ("csv", "tsv", "xlsx", "jsonl")
_EXTENSIONS = {".csv": "csv", ".txt": "csv", ".tsv": "tsv", ".xlsx": "xlsx",
               ".jsonl": "jsonl", ".json-lines": "jsonl", ".ndjson": "jsonl"}
_SUPPORTED = "CSV（.csv/.txt）、TSV（.tsv）、XLSX（.xlsx）、JSONL（.jsonl/.ndjson）"
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0"  # the container of .xls and .doc
# (BOM, the encoding reported, the codec that checks the bytes after the BOM too)
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig", "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16", "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16", "utf-16-be"))
_CHUNK_BYTES = 1 << 20
_SNIFF_CHARS = 64 * 1024
_DELIMITERS = ",\t;|"
# Texts can be long; the upload size limit bounds a field, not the csv module's 128 KiB default.
_FIELD_LIMIT = 2**31 - 1


class FileInvalid(DppError):
    """A file a job cannot read: the message names the problem and where (line, row, column)."""

    status, code = 422, "file_invalid"


@dataclass(frozen=True)
class Table:
    """A file's header and how to read it; `rows()` streams the data rows from the start on every call."""

    format: str
    columns: list[str]
    encoding: str | None
    delimiter: str | None
    sheets: list[str]
    sheet: str | None
    path: Path = field(repr=False)
    max_rows: int | None = None

    def rows(self) -> Iterator[dict[str, object]]:
        if self.format == "jsonl":
            numbered = _jsonl_rows(self)
        elif self.format == "xlsx":
            numbered = _data_rows(_sheet_cells(self.path, self.sheet), self.columns)
        else:
            numbered = _data_rows(_csv_records(self.path, self.encoding, self.delimiter), self.columns)
        with closing(numbered):
            for count, (_, row) in enumerate(numbered, 1):
                if self.max_rows is not None and count > self.max_rows:
                    raise _too_many(self.max_rows)
                yield row


def detect_format(filename: str, head: bytes) -> str:
    """The format by extension; without one, by content (zip: xlsx, a leading "{": jsonl, else csv)."""
    suffix = Path(filename).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if suffix:
        raise FileInvalid(f"不支持“{suffix}”格式的文件；支持：{_SUPPORTED}", field="file")
    if head.startswith(_ZIP_MAGIC):
        return "xlsx"
    if head.startswith(_OLE_MAGIC):
        raise FileInvalid(f"文件像是旧版 Excel 文件（.xls），请另存为 .xlsx；支持：{_SUPPORTED}", field="file")
    for bom, _, _ in _BOMS:
        head = head.removeprefix(bom)
    return "jsonl" if head.lstrip(b" \t\r\n\x00").startswith(b"{") else "csv"


def open_table(path: Path, filename: str, *, sheet: str | None = None, max_rows: int | None = None) -> Table:
    """Read the header and prepare streaming; raise FileInvalid for whatever is wrong that shows up front."""
    with open(path, "rb") as f:
        head = f.read(4096)
    fmt = detect_format(filename, head)
    if not head:
        raise FileInvalid("文件是空的", field="file")
    if fmt == "xlsx":
        return _open_xlsx(path, sheet, max_rows)
    encoding = _encoding(path)
    if fmt == "jsonl":
        return Table("jsonl", _jsonl_columns(path, encoding, max_rows), encoding, None, [], None, path, max_rows)
    delimiter = "\t" if fmt == "tsv" else _sniff_delimiter(path, encoding)
    header = _first_row(_csv_records(path, encoding, delimiter))
    if header is None:
        raise FileInvalid("文件是空的（没有表头）", field="file")
    return Table(fmt, _header(header), encoding, delimiter, [], None, path, max_rows)


def preview(table: Table, n: int = 5) -> list[dict[str, object]]:
    """The first n rows."""
    with closing(table.rows()) as rows:
        return list(islice(rows, n))


def require_column(table: Table, name: str | None, field: str) -> None:
    """Raise FileInvalid(field=field) naming the file's columns when `name` is given and not one of them."""
    if name is not None and name not in table.columns:
        raise FileInvalid(f"没有名为“{name}”的列；文件的列：{', '.join(table.columns)}", field=field)


def _too_many(max_rows: int) -> FileInvalid:
    return FileInvalid(f"文件超过 {max_rows} 行的上限（--max-file-rows）", field="file")


def _blank(values: list | tuple) -> bool:
    return all(v is None or (isinstance(v, str) and not v.strip()) for v in values)


def _header(cells: list | tuple) -> list[str]:
    """Names from the first row: stripped, blanks named 列N by position, duplicates refused."""
    names: list[str] = []
    for i, cell in enumerate(cells, 1):
        name = "" if cell is None else str(_plain(cell)).strip()
        name = name or f"列{i}"
        if name in names:
            raise FileInvalid(f"列名“{name}”重复（第 {names.index(name) + 1} 列和第 {i} 列）", field="file")
        names.append(name)
    return names


def _first_row(records: Iterator[tuple[int, list | tuple]]) -> list | tuple | None:
    """The header: the first row that is not blank."""
    with closing(records):
        return next((values for _, values in records if not _blank(values)), None)


def _data_rows(records: Iterator[tuple[int, list | tuple]], columns: list[str]) -> Iterator[tuple[int, dict]]:
    """(line, row) of the rows after the header, blank ones skipped; missing values "", extra ones refused."""
    with closing(records):
        rows = ((line, values) for line, values in records if not _blank(values))
        next(rows, None)  # the header
        for line, values in rows:
            if not _blank(values[len(columns):]):
                raise FileInvalid(f"第 {line} 行有 {len(values)} 个值，比表头的 {len(columns)} 列多", field="file")
            yield line, {c: _plain(values[i]) if i < len(values) else "" for i, c in enumerate(columns)}


def _encoding(path: Path) -> str:
    """The encoding of a text file: by BOM, else UTF-8, else GB18030, each checked over the whole file."""
    with open(path, "rb") as f:
        head = f.read(4)
    for bom, name, codec in _BOMS:
        if head.startswith(bom):
            failed = _first_undecodable(path, codec)
            if failed:
                raise FileInvalid(f"文件第 {failed[1]} 行有无法识别的字节（按 {name.upper()} 无法解码）", field="file")
            return name
    failures = []
    for name in ("utf-8", "gb18030"):
        failed = _first_undecodable(path, name)
        if failed is None:
            return name
        failures.append(failed)
    line = max(failures)[1]
    raise FileInvalid(f"文件第 {line} 行有无法识别的字节（按 UTF-8 和 GB18030 都无法解码）", field="file")


def _first_undecodable(path: Path, codec: str) -> tuple[int, int] | None:
    """(byte offset, 1-based line) of the first byte `codec` cannot decode; None when the whole file decodes."""
    decoder = codecs.getincrementaldecoder(codec)()
    offset = lines = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK_BYTES)
            try:
                lines += decoder.decode(chunk, final=not chunk).count("\n")
            except UnicodeDecodeError as e:
                # e.object starts with the few bytes the decoder held back from the chunk before.
                before = e.object[:e.start].decode(codec, "replace").count("\n")
                return offset + len(chunk) - len(e.object) + e.start, lines + before + 1
            if not chunk:
                return None
            offset += len(chunk)


def _sniff_delimiter(path: Path, encoding: str) -> str:
    """The delimiter among , tab ; | that splits the header and most rows below it to the header's width."""
    # Not csv.Sniffer: its quote-guessing regex takes seconds on 64 KB of quoted Chinese text.
    with open(path, encoding=encoding, newline="") as f:
        sample = f.read(_SNIFF_CHARS)
    if len(sample) == _SNIFF_CHARS and "\n" in sample:
        sample = sample[:sample.rindex("\n")]  # a cut line would count as a row of another width
    widths = {d: _rows_of_header_width(sample, d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=widths.get)
    if widths[best]:
        return best
    # One column: a delimiter its texts do not hold keeps their commas inside the field.
    return min(_DELIMITERS, key=sample.count)


def _rows_of_header_width(sample: str, delimiter: str) -> int:
    """How many records of the sample split as wide as the header; 0 when the header is one field."""
    records = [r for r in csv.reader(io.StringIO(sample), delimiter=delimiter) if not _blank(r)]
    if not records or len(records[0]) < 2:
        return 0
    return sum(len(r) == len(records[0]) for r in records)


def _csv_records(path: Path, encoding: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) of every record, blank lines included."""
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    with open(path, encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        end = 0
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise FileInvalid(f"第 {reader.line_num} 行无法按 CSV 解析", field="file") from e
            start, end = end + 1, reader.line_num
            yield start, record


def _jsonl_objects(path: Path, encoding: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding=encoding) as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise FileInvalid(f"第 {line} 行不是有效的 JSON（第 {e.colno} 个字符附近）", field="file") from e
            if not isinstance(value, dict):
                raise FileInvalid(f"第 {line} 行不是 JSON 对象", field="file")
            yield line, value


def _jsonl_columns(path: Path, encoding: str, max_rows: int | None) -> list[str]:
    """The union of the objects' keys in order of first appearance: one streamed pass over the file."""
    keys: dict[str, None] = {}
    count = 0
    for count, (_, value) in enumerate(_jsonl_objects(path, encoding), 1):
        if max_rows is not None and count > max_rows:
            raise _too_many(max_rows)
        keys.update(dict.fromkeys(value))
    if not count:
        raise FileInvalid("文件里没有任何 JSON 对象", field="file")
    return list(keys)


def _jsonl_rows(table: Table) -> Iterator[tuple[int, dict[str, object]]]:
    for line, value in _jsonl_objects(table.path, table.encoding):
        yield line, {c: value.get(c, "") for c in table.columns}


@contextmanager
def _workbook(path: Path):
    """The workbook, read-only, closed on exit (it holds the file open until then)."""
    from openpyxl import load_workbook

    # A file object, not a path: openpyxl refuses paths whose extension it does not know (uploads may have none).
    with open(path, "rb") as f:
        try:
            workbook = load_workbook(f, read_only=True, data_only=True)
        except _xlsx_broken() as e:
            raise FileInvalid("不是有效的 XLSX 文件", field="file") from e
        try:
            yield workbook
        finally:
            workbook.close()


def _xlsx_broken() -> tuple[type[Exception], ...]:
    from openpyxl.utils.exceptions import InvalidFileException

    return zipfile.BadZipFile, KeyError, ValueError, ParseError, InvalidFileException


def _sheet_cells(path: Path, sheet: str | None) -> Iterator[tuple[int, tuple]]:
    """(sheet row number, values) of the sheet's rows, the workbook open while iterating."""
    with _workbook(path) as workbook:
        worksheet = workbook[sheet] if sheet else workbook.worksheets[0]
        worksheet.reset_dimensions()  # stored dimensions are often wrong; read the cells that are there
        rows = enumerate(worksheet.iter_rows(values_only=True), 1)
        while True:
            try:
                number, values = next(rows)
            except StopIteration:
                return
            except _xlsx_broken() as e:
                raise FileInvalid("不是有效的 XLSX 文件（工作表内容损坏）", field="file") from e
            yield number, values


def _open_xlsx(path: Path, sheet: str | None, max_rows: int | None) -> Table:
    with _workbook(path) as workbook:
        sheets = [ws.title for ws in workbook.worksheets]
    if not sheets:
        raise FileInvalid("XLSX 文件里没有工作表", field="file")
    if sheet is not None and sheet not in sheets:
        raise FileInvalid(f"没有名为“{sheet}”的工作表；可选：{', '.join(sheets)}", field="sheet")
    sheet = sheet or sheets[0]
    header = _first_row(_sheet_cells(path, sheet))
    if header is None:
        raise FileInvalid(f"工作表“{sheet}”是空的（没有表头）", field="file")
    header = list(header)
    while header and _blank(header[-1:]):
        header.pop()  # the blank cells right of the last name are formatting, not columns
    return Table("xlsx", _header(header), None, None, sheets, sheet, path, max_rows)


def _plain(value: object) -> object:
    """A cell's value as JSON can hold it: dates and times as ISO text, empty cells as ""."""
    if value is None:
        return ""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime.datetime) and value.time() == datetime.time():
        return value.date().isoformat()  # a date cell: Excel stores dates as midnight datetimes
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)
