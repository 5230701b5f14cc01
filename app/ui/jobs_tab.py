"""Tab 文件任务: upload a table, map its columns, start a file job, watch its progress, download its result.

Jobs live in the server's store, not in the page: they run on when the page is closed, and a reloaded page lists
them again. The progress and the job list refresh once a second.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import gradio as gr

from app.errors import InvalidParameter, NotFound
from app.jobs.export import OUTPUT_FORMATS
from app.jobs.formats import Table, open_table, preview
from app.jobs.manager import Jobs
from app.params import PUBLIC_FIELDS
from app.ui.controls import engine_selector, parameter_controls, ui_params
from app.ui.events import SessionWork, event
from app.ui.files import uploaded
from app.ui.jobs_api import export_result
from app.ui.jobs_view import LIST_HEADERS, NO_JOB, list_rows, picker_choices, progress_markdown

NONE_LABEL = "（无）"
PREVIEW_ROWS = 5
REFRESH_S = 1.0
LISTED_JOBS = 100  # the newest jobs the list and the picker show; older ones stay reachable through REST
FILE_TYPES = [".csv", ".tsv", ".txt", ".xlsx", ".jsonl", ".ndjson"]
KIND_CHOICES = [("增强：每行生成多条改写", "augment"), ("分类：给每行选出候选标签", "classify")]
LABEL_CHECK_CHOICES = [("自动", "auto"), ("开启", "on"), ("关闭", "off")]
LABEL_CHECK_HELP = "选了标签列时，只保留仍属于该行标签的结果（用 mT5 分类判断）；自动：能检查时就检查"
FORMAT_WORDS = {"csv": "CSV", "xlsx": "XLSX", "jsonl": "JSONL"}


def likely_text_column(columns: list[str], rows: list[dict]) -> str | None:
    """The column whose previewed cells hold the most characters: usually the text."""
    return max(columns, key=lambda c: sum(len(str(row.get(c, ""))) for row in rows), default=None)


def file_words(table: Table) -> str:
    """"格式 CSV · 编码 GB18030 · 4 列"."""
    parts = [f"格式 {table.format.upper()}"]
    if table.encoding:
        parts.append(f"编码 {table.encoding.upper()}")
    if table.sheet:
        parts.append(f"工作表 {table.sheet}")
    parts.append(f"{len(table.columns)} 列：{'、'.join(table.columns)}")
    return " · ".join(parts)


def _peek(path: Path, sheet: str | None) -> tuple[Table, list[dict]]:
    table = open_table(path, path.name, sheet=sheet)
    return table, preview(table, PREVIEW_ROWS)


async def on_file(jobs: Jobs, file, sheet=None):
    """The uploaded file's preview, its sheets (XLSX), and its columns for the mapping dropdowns."""
    if not file:
        return (gr.Dataframe(visible=False), gr.Dropdown(visible=False, choices=[], value=None),
                gr.Dropdown(choices=[], value=None), gr.Dropdown(choices=[NONE_LABEL], value=NONE_LABEL), "")
    table, rows = await asyncio.to_thread(_peek, uploaded(file), sheet or None)
    shown = {"headers": table.columns, "data": [[str(row.get(c, "")) for c in table.columns] for row in rows]}
    return (gr.Dataframe(value=shown, visible=True),
            gr.Dropdown(choices=table.sheets, value=table.sheet, visible=table.format == "xlsx"),
            gr.Dropdown(choices=table.columns, value=likely_text_column(table.columns, rows)),
            gr.Dropdown(choices=[NONE_LABEL, *table.columns], value=NONE_LABEL),
            file_words(table))


def show_kind(kind: str):
    """Show the parameters of the chosen kind of job."""
    return gr.Column(visible=kind == "augment"), gr.Column(visible=kind == "classify")


def job_options(kind, text_col, label_col, sheet, engine, n, temperature, max_length, top_k, top_p, seed,
                number_forms, include_original, quality_on, label_check, labels, multi_label, threshold) -> dict:
    """The options `Jobs.submit` takes (POST /jobs's fields), from the tab's controls."""
    if not text_col:
        raise InvalidParameter("请选择文本列（上传文件后从下拉框里选）", field="text_col")
    options = {"kind": kind, "text_col": text_col, "label_col": None if label_col in (None, "", NONE_LABEL) else label_col,
               "sheet": sheet or None, "engine": engine or None}
    if kind == "augment":
        params = ui_params(n, temperature, max_length, top_k, top_p, seed, number_forms)
        options.update({name: getattr(params, name) for name in PUBLIC_FIELDS})
        options.update(include_original=bool(include_original), quality="on" if quality_on else "off",
                       label_check=label_check or "auto")
        return options
    if not (labels or "").strip():
        raise InvalidParameter("分类任务需要候选标签：请填写至少 2 个，用逗号或顿号分隔", field="labels")
    options.update(labels=labels.strip(), multi_label=bool(multi_label), threshold=threshold if multi_label else None)
    return options


def _views(jobs: Jobs, current: str | None) -> tuple[list[dict], dict | None]:
    """The newest jobs' views, and the current job's (None when it is gone). Blocking."""
    views = [jobs.view(job) for job in jobs.list()[:LISTED_JOBS]]
    view = next((v for v in views if v["id"] == current), None)
    if current and view is None:
        try:
            view = jobs.view(jobs.get(current))
        except NotFound:
            view = None
    return views, view


async def on_submit(jobs: Jobs, file, *values):
    """Check the options and the file, queue the job, and make it the current one."""
    path = uploaded(file)
    options = job_options(*values)
    job = await asyncio.to_thread(jobs.submit, path, path.name, options)
    views, view = await asyncio.to_thread(_views, jobs, job.id)
    rows, choices = list_rows(views), picker_choices(views)
    return (gr.Dropdown(choices=choices, value=job.id), progress_markdown(view), rows, {"rows": rows, "choices": choices},
            gr.File(value=None, visible=False), "")


async def on_refresh(jobs: Jobs, current, shown, pick_newest: bool = False):
    """The timer's tick and the page's load: the current job's progress, the job list and the picker's choices;
    the list and the picker only when they changed, so that a user's selection is not reset every second."""
    views, view = await asyncio.to_thread(_views, jobs, current)
    if pick_newest and view is None and views:
        current, view = views[0]["id"], views[0]
    rows, choices = list_rows(views), picker_choices(views)
    shown = shown or {}
    table = rows if rows != shown.get("rows") or pick_newest else gr.skip()
    # A job deleted meanwhile (through REST) is no longer the current one.
    picker = (gr.Dropdown(choices=choices, value=current if view else None)
              if choices != shown.get("choices") or pick_newest else gr.skip())
    return progress_markdown(view), table, picker, {"rows": rows, "choices": choices}


async def on_pick(jobs: Jobs, current):
    """A job chosen in the picker: its progress; the last export, of another job, is cleared."""
    _, view = await asyncio.to_thread(_views, jobs, current)
    return progress_markdown(view), gr.File(value=None, visible=False), ""


def _chosen(current) -> str:
    if not current:
        raise InvalidParameter("请先在「当前任务」里选择一个任务", field="id")
    return current


async def on_cancel(jobs: Jobs, current):
    job = await asyncio.to_thread(jobs.cancel, _chosen(current))
    return progress_markdown(jobs.view(job))


async def on_export(jobs: Jobs, current, format: str):
    """The current job's output so far, as a file of `format`."""
    path, rows = await asyncio.to_thread(export_result, jobs, _chosen(current), format)
    return gr.File(value=str(path), visible=True), f"已导出 {rows} 行（{FORMAT_WORDS[format]}）：点击上面的文件名下载。"


def job_of_row(selected: gr.SelectData):
    """A row clicked in the job list becomes the current job (its first cell is the job's id)."""
    return selected.row_value[0]


def build(jobs: Jobs, sessions: SessionWork, page: gr.Blocks) -> gr.Dropdown:
    """Tab 文件任务; returns its engine selector, which the page fills once the engines are loaded."""
    limits = jobs.settings
    gr.Markdown(f"上传 CSV、TSV、XLSX 或 JSONL 文件（最大 {limits.max_file_bytes / 1_048_576:.3g} MB、"
                f"{limits.max_file_rows} 行），选好列和参数后点击「开始」。任务在服务器上运行：关闭或刷新页面后仍会继续，"
                "回到这里可以查看进度、下载结果。")
    with gr.Row():
        file = gr.File(label="上传文件", file_types=FILE_TYPES, type="filepath", elem_id="dpp-job-file")
        with gr.Column():
            sheet = gr.Dropdown(label="工作表", choices=[], visible=False)
            text_col = gr.Dropdown(label="文本列", choices=[], info="要增强或分类的文本所在的列")
            label_col = gr.Dropdown(label="标签列（可选）", choices=[NONE_LABEL], value=NONE_LABEL,
                                    info="增强时每条结果都带上原行的标签")
    file_info = gr.Markdown()
    preview_table = gr.Dataframe(label=f"预览（前 {PREVIEW_ROWS} 行）", interactive=False, visible=False, wrap=True)
    with gr.Row():
        kind = gr.Radio(KIND_CHOICES, value="augment", label="任务类型")
        engine = engine_selector()
    with gr.Column(visible=True) as augment_box:
        with gr.Row():
            controls = parameter_controls("每行生成数量", number_forms=True)
            controls.follow(engine)
        with gr.Row():
            quality_on = gr.Checkbox(value=jobs.service.gate_defaults.on, label="启用质量过滤",
                                     info="关闭后只去掉完全重复的结果")
            label_check = gr.Radio(LABEL_CHECK_CHOICES, value="auto", label="标签检查", info=LABEL_CHECK_HELP)
            include_original = gr.Checkbox(value=True, label="结果里保留原行（第 0 条）")
    with gr.Column(visible=False) as classify_box:
        labels = gr.Textbox(label="候选标签", placeholder="如 正面,负面（逗号或顿号分隔，2 到 "
                                                         f"{limits.max_labels} 个）")
        with gr.Row():
            multi_label = gr.Checkbox(label="多标签：逐个判断每个标签", value=False)
            threshold = gr.Slider(0.05, 0.95, value=limits.multi_label_threshold, step=0.05, label="多标签阈值")
    start = gr.Button("开始", variant="primary")

    gr.Markdown("### 任务进度")
    picker = gr.Dropdown(label="当前任务", choices=[], info="也可以在下面的任务列表里点选一行")
    progress = gr.Markdown(NO_JOB, elem_id="dpp-job-progress")
    with gr.Row():
        cancel = gr.Button("取消", variant="stop")
        exports = {fmt: gr.Button(f"导出 {FORMAT_WORDS[fmt]}") for fmt in OUTPUT_FORMATS}
    result_file = gr.File(label="结果文件", interactive=False, visible=False, elem_id="dpp-job-result")
    export_note = gr.Markdown()
    job_list = gr.Dataframe(headers=LIST_HEADERS, datatype=["str"] * len(LIST_HEADERS), interactive=False,
                            label="全部任务（最新的在前）")
    shown = gr.State(None)  # the list and the picker's choices as last sent, so that a tick sends only changes
    timer = gr.Timer(REFRESH_S)

    private = {"api_visibility": "private"}
    quiet = {**private, "show_progress": "hidden", "queue": False}
    file.change(event(on_file, jobs, sessions), inputs=file,
                outputs=[preview_table, sheet, text_col, label_col, file_info], **private)
    sheet.input(event(on_file, jobs, sessions), inputs=[file, sheet],
                outputs=[preview_table, sheet, text_col, label_col, file_info], **private)
    kind.change(show_kind, inputs=kind, outputs=[augment_box, classify_box], **private)
    start.click(event(on_submit, jobs, sessions),
                inputs=[file, kind, text_col, label_col, sheet, engine, *controls.inputs(), include_original,
                        quality_on, label_check, labels, multi_label, threshold],
                outputs=[picker, progress, job_list, shown, result_file, export_note], **private)
    refreshed = [progress, job_list, picker, shown]
    timer.tick(event(on_refresh, jobs, sessions), inputs=[picker, shown], outputs=refreshed, **quiet)
    page.load(event(on_refresh, jobs, sessions, pick_newest=True), inputs=[picker, shown], outputs=refreshed,
              **private)
    picker.input(event(on_pick, jobs, sessions), inputs=picker, outputs=[progress, result_file, export_note],
                 **private)
    job_list.select(job_of_row, outputs=picker, **private).then(
        event(on_pick, jobs, sessions), inputs=picker, outputs=[progress, result_file, export_note], **private)
    cancel.click(event(on_cancel, jobs, sessions), inputs=picker, outputs=progress, **private)
    for fmt, button in exports.items():
        button.click(event(on_export, jobs, sessions, format=fmt), inputs=picker, outputs=[result_file, export_note],
                     **private)
    return engine
