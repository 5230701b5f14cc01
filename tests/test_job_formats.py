"""File jobs read CSV, TSV, XLSX and JSONL as users save them, and write results no spreadsheet runs as formulas."""

from __future__ import annotations

import datetime
import io
import json
import time
import tracemalloc
import zipfile
from pathlib import Path

import openpyxl
import pytest

from app.jobs.export import (
    MEDIA_TYPES,
    OUTPUT_FORMATS,
    csv_chunks,
    excel_safe,
    jsonl_chunks,
    write_xlsx,
)
from app.jobs.formats import (
    INPUT_FORMATS,
    FileInvalid,
    detect_format,
    open_table,
    preview,
    require_column,
)


def _file(tmp_path: Path, name: str, data: bytes | str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return path


def _table(path: Path, **kwargs):
    return open_table(path, path.name, **kwargs)


def _refused(path: Path, **kwargs) -> FileInvalid:
    with pytest.raises(FileInvalid) as caught:
        list(_table(path, **kwargs).rows())
    assert caught.value.status == 422 and caught.value.code == "file_invalid"
    return caught.value


# Text encodings -------------------------------------------------------------------------------------


def test_a_gbk_csv_is_read_as_gb18030_with_its_chinese_header_and_extra_columns(tmp_path):
    text = "评论,标签,编号,备注\n物流很快，包装完好,正面,1,\n客服态度差,负面,2,复购\n"
    table = _table(_file(tmp_path, "评论.csv", text, "gbk"))
    assert table.format == "csv" and table.encoding == "gb18030" and table.delimiter == ","
    assert table.columns == ["评论", "标签", "编号", "备注"]
    assert list(table.rows()) == [{"评论": "物流很快，包装完好", "标签": "正面", "编号": "1", "备注": ""},
                                  {"评论": "客服态度差", "标签": "负面", "编号": "2", "备注": "复购"}]


def test_a_character_only_gb18030_encodes_is_read_back(tmp_path):
    text = "text,label\n𠀀字与€,正面\n"  # U+20000 needs GB18030's four-byte form; GBK has no code for it
    table = _table(_file(tmp_path, "a.csv", text, "gb18030"))
    assert table.encoding == "gb18030" and preview(table) == [{"text": "𠀀字与€", "label": "正面"}]


def test_utf8_with_bom_drops_the_bom_from_the_first_column_name(tmp_path):
    table = _table(_file(tmp_path, "a.csv", "text,label\n很好,1\n", "utf-8-sig"))
    assert table.encoding == "utf-8-sig" and table.columns == ["text", "label"]
    assert preview(table) == [{"text": "很好", "label": "1"}]


def test_utf8_tsv_splits_on_tabs_even_with_commas_in_the_text(tmp_path):
    table = _table(_file(tmp_path, "a.tsv", "text\tlabel\n好, 真好\t正面\n"))
    assert (table.format, table.encoding, table.delimiter) == ("tsv", "utf-8", "\t")
    assert preview(table) == [{"text": "好, 真好", "label": "正面"}]


def test_excels_unicode_text_export_utf16le_tsv_is_read(tmp_path):
    data = "text\tlabel\r\n物流很快\t正面\r\n".encode("utf-16-le")
    table = _table(_file(tmp_path, "导出.txt", b"\xff\xfe" + data))
    assert (table.encoding, table.delimiter, table.columns) == ("utf-16", "\t", ["text", "label"])
    assert preview(table) == [{"text": "物流很快", "label": "正面"}]


def test_bytes_neither_utf8_nor_gb18030_name_their_line(tmp_path):
    data = "text,label\n好,1\n".encode() + b"\xe5\xa5\xbd\x80\x80\xff,2\n" + "好,3\n".encode()
    with pytest.raises(FileInvalid, match="第 3 行有无法识别的字节") as caught:
        _table(_file(tmp_path, "a.csv", data))
    assert caught.value.field == "file"


def test_bad_bytes_far_into_a_big_file_name_their_line(tmp_path):
    lines = "".join(f"第{i}条文本，足够长以跨过读取的分块边界,{i % 3}\n" for i in range(60_000))
    data = ("text,label\n" + lines).encode() + b"\x80\x80\xff,1\n"
    with pytest.raises(FileInvalid, match="第 60002 行"):
        _table(_file(tmp_path, "a.csv", data))


# Delimiters, quoting, shapes ------------------------------------------------------------------------


def test_a_semicolon_csv_is_sniffed(tmp_path):
    table = _table(_file(tmp_path, "a.csv", "text;label;id\n你好, 世界;正面;1\n再见;负面;2\n"))
    assert table.delimiter == ";" and table.columns == ["text", "label", "id"]
    assert [row["text"] for row in table.rows()] == ["你好, 世界", "再见"]


def test_a_pipe_csv_is_sniffed_even_with_commas_in_the_texts(tmp_path):
    table = _table(_file(tmp_path, "a.csv", "text|label\n好,很好|1\n坏|0\n"))
    assert table.delimiter == "|" and preview(table) == [{"text": "好,很好", "label": "1"}, {"text": "坏", "label": "0"}]


def test_a_one_column_txt_keeps_the_commas_in_its_texts(tmp_path):
    table = _table(_file(tmp_path, "a.txt", "text\nfast delivery, nice box\n好，很好\n"))
    assert table.columns == ["text"]
    assert [row["text"] for row in table.rows()] == ["fast delivery, nice box", "好，很好"]


def test_sniffing_a_quoted_chinese_csv_is_quick(tmp_path):
    rows = "".join(f'"他说：""好的，{i}""，然后走了",{i % 2}\n' for i in range(20_000))
    started = time.monotonic()
    table = _table(_file(tmp_path, "a.csv", "text,label\n" + rows))
    assert table.delimiter == "," and time.monotonic() - started < 1


def test_a_quoted_field_keeps_its_newline_and_comma(tmp_path):
    table = _table(_file(tmp_path, "a.csv", 'text,label\n"第一行，\n第二行, 还有",正面\n短句,负面\n'))
    assert list(table.rows()) == [{"text": "第一行，\n第二行, 还有", "label": "正面"},
                                  {"text": "短句", "label": "负面"}]


def test_a_row_with_more_fields_than_the_header_names_its_line(tmp_path):
    path = _file(tmp_path, "a.csv", 'text,label\n"多行\n文本",1\n好,2\n坏,3,多余\n')
    error = _refused(path)
    assert "第 5 行" in error.message and error.field == "file"


def test_short_rows_get_empty_values_and_blank_lines_are_skipped(tmp_path):
    table = _table(_file(tmp_path, "a.csv", "\ntext,label,id\n\n好\n,,\n坏,负面,7,\n"))
    assert list(table.rows()) == [{"text": "好", "label": "", "id": ""}, {"text": "坏", "label": "负面", "id": "7"}]


def test_blank_header_cells_are_named_by_position_and_names_are_stripped(tmp_path):
    table = _table(_file(tmp_path, "a.csv", ", text ,,label\n0,好,x,1\n"))
    assert table.columns == ["列1", "text", "列3", "label"]


def test_duplicate_header_names_are_refused(tmp_path):
    with pytest.raises(FileInvalid, match="列名“text”重复（第 1 列和第 3 列）"):
        _table(_file(tmp_path, "a.csv", "text,label,text\n1,2,3\n"))


def test_a_header_only_file_has_columns_and_no_rows(tmp_path):
    table = _table(_file(tmp_path, "a.csv", "text,label\n"))
    assert table.columns == ["text", "label"] and list(table.rows()) == [] and preview(table) == []


@pytest.mark.parametrize("data", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_an_empty_file_is_refused(tmp_path, data):
    with pytest.raises(FileInvalid, match="空"):
        _table(_file(tmp_path, "a.csv", data))


def test_long_texts_pass_the_csv_modules_field_limit(tmp_path):
    long = "长" * 300_000
    assert preview(_table(_file(tmp_path, "a.csv", f"text\n{long}\n"))) == [{"text": long}]


# Formats ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "head", "expected"), [
    ("a.csv", b"", "csv"), ("a.TSV", b"", "tsv"), ("a.txt", b"", "csv"), ("a.xlsx", b"", "xlsx"),
    ("a.jsonl", b"", "jsonl"), ("a.ndjson", b"", "jsonl"), ("a.json-lines", b"", "jsonl"),
    ("upload", b"PK\x03\x04rest", "xlsx"), ("upload", b'\xef\xbb\xbf\n {"text": 1}', "jsonl"),
    ("upload", b"text,label\n", "csv"),
])
def test_the_format_comes_from_the_extension_else_the_content(name, head, expected):
    assert detect_format(name, head) == expected and expected in INPUT_FORMATS


@pytest.mark.parametrize(("name", "head"), [("a.xls", b""), ("a.docx", b"PK\x03\x04"),
                                            ("upload", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")])
def test_unsupported_files_are_refused_naming_the_supported_formats(tmp_path, name, head):
    with pytest.raises(FileInvalid, match="XLSX") as caught:
        _table(_file(tmp_path, name, head + b"text\n1\n"))
    assert "CSV" in caught.value.message and caught.value.field == "file"


def test_require_column_lists_the_files_columns(tmp_path):
    table = _table(_file(tmp_path, "a.csv", "text,label,id\n好,1,2\n"))
    require_column(table, "text", "text_col")
    require_column(table, None, "label_col")
    with pytest.raises(FileInvalid) as caught:
        require_column(table, "评论", "text_col")
    assert caught.value.message == "没有名为“评论”的列；文件的列：text, label, id"
    assert caught.value.field == "text_col"


# XLSX -----------------------------------------------------------------------------------------------


@pytest.fixture
def workbook(tmp_path) -> Path:
    book = openpyxl.Workbook()
    first = book.active
    first.title = "评论"
    first.append(["text", "label", "score", "date", None])
    first.append(["物流很快", "正面", 5, datetime.date(2024, 1, 5)])
    first.append(["一般", None, 3.5, datetime.datetime(2024, 1, 6, 12, 30)])
    first.append([None, None, None, None])
    first.append([])
    second = book.create_sheet("第二页")
    second.append(["text", "flag"])
    second.append(["第二页的文本", True])
    path = tmp_path / "book.xlsx"
    book.save(path)
    return path


def test_xlsx_reads_the_first_sheet_by_default_with_typed_values(workbook):
    table = _table(workbook)
    assert (table.format, table.sheets, table.sheet, table.encoding) == ("xlsx", ["评论", "第二页"], "评论", None)
    assert table.columns == ["text", "label", "score", "date"]
    assert list(table.rows()) == [
        {"text": "物流很快", "label": "正面", "score": 5, "date": "2024-01-05"},
        {"text": "一般", "label": "", "score": 3.5, "date": "2024-01-06T12:30:00"},
    ]


def test_xlsx_reads_the_sheet_asked_for(workbook):
    assert list(_table(workbook, sheet="第二页").rows()) == [{"text": "第二页的文本", "flag": True}]


def test_a_missing_sheet_is_refused_listing_the_sheets(workbook):
    with pytest.raises(FileInvalid) as caught:
        _table(workbook, sheet="Sheet3")
    assert caught.value.message == "没有名为“Sheet3”的工作表；可选：评论, 第二页"
    assert caught.value.field == "sheet"


def test_an_xlsx_upload_without_an_extension_is_read_by_content(workbook, tmp_path):
    upload = _file(tmp_path, "upload", workbook.read_bytes())
    assert open_table(upload, "upload").columns == ["text", "label", "score", "date"]


def _zip_not_xlsx() -> bytes:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("readme.txt", "not a workbook")
    return data.getvalue()


@pytest.mark.parametrize("data", [bytes(range(256)) * 8, _zip_not_xlsx()], ids=["random bytes", "other zip"])
def test_a_corrupt_xlsx_is_refused(tmp_path, data):
    with pytest.raises(FileInvalid, match="不是有效的 XLSX 文件"):
        _table(_file(tmp_path, "a.xlsx", data))


# JSONL ----------------------------------------------------------------------------------------------


def test_jsonl_columns_are_the_union_of_keys_in_order_of_first_appearance(tmp_path):
    lines = ['{"text": "好", "label": 1}', "", '{"id": 7, "text": "坏", "meta": {"a": [1, 2]}}', '{"x": null}']
    table = _table(_file(tmp_path, "a.jsonl", "\n".join(lines) + "\n"))
    assert table.columns == ["text", "label", "id", "meta", "x"]
    assert list(table.rows()) == [
        {"text": "好", "label": 1, "id": "", "meta": "", "x": ""},
        {"text": "坏", "label": "", "id": 7, "meta": {"a": [1, 2]}, "x": ""},
        {"text": "", "label": "", "id": "", "meta": "", "x": None},
    ]


def test_a_jsonl_line_that_is_not_an_object_names_its_line(tmp_path):
    with pytest.raises(FileInvalid, match="^第 3 行不是 JSON 对象$"):
        _table(_file(tmp_path, "a.jsonl", '{"text": "好"}\n{"text": "坏"}\n[1,2]\n'))


def test_a_jsonl_line_of_broken_json_names_its_line(tmp_path):
    with pytest.raises(FileInvalid, match="第 2 行不是有效的 JSON"):
        _table(_file(tmp_path, "a.jsonl", '{"text": "好"}\n{"text": 坏}\n'))


# Row limit and streaming ----------------------------------------------------------------------------


def _numbered_csv(tmp_path: Path, rows: int) -> Path:
    return _file(tmp_path, "big.csv", "text,label\n" + "".join(f"第{i}条评论，物流很快,{i % 2}\n" for i in range(rows)))


def test_the_row_limit_allows_exactly_the_limit_and_refuses_one_more(tmp_path):
    assert len(list(_table(_numbered_csv(tmp_path, 10), max_rows=10).rows())) == 10
    table = _table(_numbered_csv(tmp_path, 11), max_rows=10)
    assert len(preview(table, 10)) == 10
    with pytest.raises(FileInvalid, match="文件超过 10 行的上限（--max-file-rows）"):
        list(table.rows())


def test_the_row_limit_of_jsonl_is_known_when_the_file_is_opened(tmp_path):
    path = _file(tmp_path, "a.jsonl", "".join(f'{{"text": "{i}"}}\n' for i in range(4)))
    with pytest.raises(FileInvalid, match="文件超过 3 行的上限"):
        _table(path, max_rows=3)


def test_rows_stream_a_big_csv_without_holding_it(tmp_path):
    path = _numbered_csv(tmp_path, 200_000)
    table = _table(path)
    tracemalloc.start()
    try:
        count = sum(1 for _ in table.rows())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200_000
    assert peak < path.stat().st_size / 10


def test_rows_start_over_on_every_call(tmp_path):
    table = _table(_numbered_csv(tmp_path, 3))
    assert list(table.rows()) == list(table.rows()) and len(list(table.rows())) == 3


# Writers --------------------------------------------------------------------------------------------

COLUMNS = ["text", "label", "score"]
ROWS = [{"text": "物流很快，包装完好\n第二行", "label": "正面", "score": 0.9},
        {"text": "客服“态度”差, 不推荐", "label": "-1", "score": 1}]


def test_the_writers_cover_the_output_formats():
    assert set(MEDIA_TYPES) == set(OUTPUT_FORMATS)


def test_csv_round_trips_through_the_reader_with_a_bom_first(tmp_path):
    data = b"".join(csv_chunks(COLUMNS, ROWS))
    assert data.startswith(b"\xef\xbb\xbf" + b"text,label,score\r\n")
    table = _table(_file(tmp_path, "out.csv", data))
    assert table.encoding == "utf-8-sig"
    assert list(table.rows()) == [{k: str(v) for k, v in row.items()} for row in ROWS]


def test_jsonl_round_trips_with_values_unchanged(tmp_path):
    rows = ROWS + [{"text": "=1+1", "label": None, "score": [1, {"a": "好"}]}]
    data = b"".join(jsonl_chunks(COLUMNS, rows))
    assert "好" in data.decode() and list(_table(_file(tmp_path, "out.jsonl", data)).rows()) == rows


def test_xlsx_round_trips_keeping_numbers_numbers(tmp_path):
    path = tmp_path / "out.xlsx"
    write_xlsx(COLUMNS, ROWS, path)
    table = _table(path)
    assert table.sheets == ["结果"] and list(table.rows()) == ROWS


@pytest.mark.parametrize(("value", "written"), [
    ("=1+1", "'=1+1"), ("+1", "+1"), ("-1+2", "'-1+2"), ("@x", "'@x"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("@SUM(A1)", "'@SUM(A1)"), ("-", "'-"), ("-1", "-1"), ("+3.5", "+3.5"), ("-0.25", "-0.25"), ("1e5", "1e5"),
    ("0", "0"), ("好=坏", "好=坏"), (None, ""), (-1, -1), (True, True), ({"a": "=好"}, '{"a":"=好"}'),
    (["=x"], '["=x"]'), ({"=": 1}, '{"=":1}'),
])
def test_excel_safe_quotes_text_that_would_start_a_formula(value, written):
    assert excel_safe(value) == written


def test_a_formula_like_list_is_quoted_after_it_becomes_text():
    assert excel_safe(["=1"]) == '["=1"]' and excel_safe("=" + json.dumps([1])) == "'=[1]"


def test_csv_cells_that_start_formulas_are_quoted_but_numbers_survive(tmp_path):
    rows = [{"text": "=1+1", "label": "-1", "score": "@x"}, {"text": "-1+2", "label": "+3.5", "score": "0"}]
    read = list(_table(_file(tmp_path, "out.csv", b"".join(csv_chunks(COLUMNS, rows)))).rows())
    assert read == [{"text": "'=1+1", "label": "-1", "score": "'@x"}, {"text": "'-1+2", "label": "+3.5", "score": "0"}]


def test_xlsx_text_that_looks_like_a_formula_stays_a_string(tmp_path):
    path = tmp_path / "out.xlsx"
    write_xlsx(["=header", "n"], [{"=header": "=1+1", "n": -1}, {"=header": "@SUM(A1)", "n": "-1"}], path)
    sheet = openpyxl.load_workbook(path).active
    cells = [[(c.value, c.data_type) for c in row] for row in sheet.iter_rows()]
    assert cells == [[("=header", "s"), ("n", "s")], [("=1+1", "s"), (-1, "n")], [("@SUM(A1)", "s"), ("-1", "s")]]
    with zipfile.ZipFile(path) as archive:
        assert b"<f>" not in archive.read("xl/worksheets/sheet1.xml") and b"<f " not in archive.read(
            "xl/worksheets/sheet1.xml")


def test_xlsx_drops_characters_xml_cannot_hold(tmp_path):
    path = tmp_path / "out.xlsx"
    write_xlsx(["text"], [{"text": "好\x00\x01\x08\x0b\x0c\x0e\x1f评\t论\n"}], path)
    assert list(_table(path).rows()) == [{"text": "好评\t论\n"}]


def test_writers_stream_in_chunks_of_many_rows(tmp_path):
    rows = ({"text": f"第{i}条评论，物流很快", "label": i % 2, "score": i} for i in range(20_000))
    chunks = list(csv_chunks(COLUMNS, rows))
    assert len(chunks) > 3 and all(len(c) < 256 * 1024 for c in chunks)
    assert sum(c.count(b"\r\n") for c in chunks) == 20_001
    lines = list(jsonl_chunks(COLUMNS, ({"text": "好" * 100} for _ in range(5_000))))
    assert 3 < len(lines) < 5_000
