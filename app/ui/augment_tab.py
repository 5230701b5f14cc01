"""Tabs 单条增强 and 批量增强: their layout and their handlers."""

from __future__ import annotations

import csv
import tempfile
import time
import uuid
from pathlib import Path

import gradio as gr

from app.errors import TextEmpty
from app.params import NUM_RETURN_SEQUENCES_RANGE
from app.service import Service
from app.ui.controls import COPY_JS, engine_selector, parameter_controls, run_controls, ui_params
from app.ui.events import SessionWork, event

MAX_VARIANTS = NUM_RETURN_SEQUENCES_RANGE[1]
CSV_HEADERS = ["原文", "增强结果"]
DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "dpp-downloads"
DOWNLOAD_MAX_AGE_S = 3600


def format_plain(variants: list[str]) -> str:
    return "\n".join(variants)


def format_markdown(original: str, variants: list[str]) -> str:
    lines = [f"**原文**：{original}", "", "**增强结果**：", ""]
    lines += [f"{i}. {variant}" for i, variant in enumerate(variants, 1)]
    return "\n".join(lines)


def status_line(found: int, wanted: int, engine: str, elapsed_ms: float) -> str:
    line = f"生成 {found} 条不同的结果（引擎 {engine}，耗时 {elapsed_ms:.0f} ms）"
    if found < wanted:
        line += f"；只找到 {found} 条与原文不同且互不重复的结果，没有用重复结果凑数"
    return line


async def on_augment(service: Service, text, engine, n, temperature, max_length, top_k, top_p, seed):
    params = ui_params(n, temperature, max_length, top_k, top_p, seed)
    result = await service.augment([text or ""], params, engine=engine or None, field_name="text")
    variants = result.variants[0]
    boxes = [gr.Textbox(value=v, visible=True) for v in variants]
    boxes += [gr.Textbox(value="", visible=False)] * (MAX_VARIANTS - len(variants))
    status = status_line(len(variants), params.num_return_sequences, result.engine, result.elapsed_ms)
    return *boxes, format_plain(variants), format_markdown(text.strip(), variants), status


def batch_lines(text: str | None) -> list[str]:
    """One text per non-blank line, in order."""
    return [line for line in (text or "").splitlines() if line.strip()]


def write_csv(rows: list[list[str]]) -> Path:
    """Write the table as UTF-8 CSV with a BOM, so Excel opens the Chinese correctly."""
    DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - DOWNLOAD_MAX_AGE_S
    for old in DOWNLOAD_DIR.glob("dpp-batch-*.csv"):
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)
    path = DOWNLOAD_DIR / f"dpp-batch-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.csv"
    with path.open("w", encoding="utf-8-sig", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_HEADERS)
        writer.writerows(rows)
    return path


async def on_augment_batch(service: Service, text, engine, n, temperature, max_length, top_k, top_p, seed):
    texts = batch_lines(text)
    if not texts:
        raise TextEmpty("请输入至少一行文本（每行一条）", field="texts")
    params = ui_params(n, temperature, max_length, top_k, top_p, seed)
    result = await service.augment(texts, params, engine=engine or None, field_name="texts")
    rows = [[original, variant] for original, variants in zip(texts, result.variants) for variant in variants]
    found = sum(map(len, result.variants))
    status = (f"{len(texts)} 条文本共生成 {found} 条结果（引擎 {result.engine}，"
              f"耗时 {result.elapsed_ms:.0f} ms）")
    plain = "\n".join("\t".join(row) for row in rows)
    return rows, gr.DownloadButton(value=str(write_csv(rows)), visible=True), plain, status


def build_single(service: Service, sessions: SessionWork) -> gr.Dropdown:
    """Tab 单条增强; returns its engine selector, which the page fills once the engines are loaded."""
    limits = service.settings
    text = gr.Textbox(label="输入文本", lines=4, max_length=limits.max_text_chars,
                      placeholder=f"输入一段中文（最多 {limits.max_text_chars} 字）")
    engine = engine_selector()
    with gr.Row():
        controls = parameter_controls("生成数量")
    running = run_controls("开始增强")
    variant_boxes = [gr.Textbox(label=f"结果 {i}", visible=False, interactive=False, buttons=["copy"])
                     for i in range(1, MAX_VARIANTS + 1)]
    with gr.Row():
        copy_all = gr.Button("复制全部")
        copy_markdown = gr.Button("复制为Markdown")
    plain_text = gr.Textbox(visible=False)
    markdown_text = gr.Textbox(visible=False)

    running.wire(event(on_augment, service, sessions), inputs=[text, engine, *controls.inputs()],
                 outputs=[*variant_boxes, plain_text, markdown_text, running.status])
    copy_all.click(None, inputs=plain_text, js=COPY_JS, api_visibility="private")
    copy_markdown.click(None, inputs=markdown_text, js=COPY_JS, api_visibility="private")
    return engine


def build_batch(service: Service, sessions: SessionWork) -> gr.Dropdown:
    """Tab 批量增强; returns its engine selector."""
    limits = service.settings
    text = gr.Textbox(label=f"每行一条文本（最多 {limits.max_batch_texts} 条）", lines=10)
    engine = engine_selector()
    with gr.Accordion("生成参数", open=True):
        with gr.Row():
            controls = parameter_controls("每条生成数量")
    running = run_controls("批量增强")
    table = gr.Dataframe(headers=CSV_HEADERS, datatype=["str", "str"], interactive=False,
                         wrap=True, buttons=["copy"], column_widths=["30%", "70%"])
    with gr.Row():
        copy_table = gr.Button("复制全部")
        download = gr.DownloadButton("下载 CSV", visible=False)
    table_text = gr.Textbox(visible=False)

    running.wire(event(on_augment_batch, service, sessions), inputs=[text, engine, *controls.inputs()],
                 outputs=[table, download, table_text, running.status])
    copy_table.click(None, inputs=table_text, js=COPY_JS, api_visibility="private")
    return engine
