"""Tabs 单条增强 and 批量增强: their layout and their handlers."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import gradio as gr

from app.errors import InvalidParameter, TextEmpty
from app.gate import REASON_WORDS, Kept, Outcome, dropped_words, short_words
from app.params import NUM_RETURN_SEQUENCES_RANGE
from app.service import Service
from app.ui.controls import (
    COPY_JS,
    engine_selector,
    parameter_controls,
    quality_controls,
    run_controls,
    ui_params,
    ui_quality,
)
from app.ui.events import SessionWork, event
from app.ui.files import download_path

MAX_VARIANTS = NUM_RETURN_SEQUENCES_RANGE[1]
CSV_HEADERS = ["原文", "标签", "增强结果", "相似度", "说明"]
SINGLE_LABEL_HELP = "填写候选标签和原文的标签后，只保留仍属于该标签的结果（用 mT5 分类判断）"
BATCH_LABEL_HELP = "填写后，每行写成「文本<Tab>标签」，只保留仍属于该行标签的结果（用 mT5 分类判断）"


def format_plain(variants: list[str]) -> str:
    return "\n".join(variants)


def format_markdown(original: str, variants: list[str]) -> str:
    lines = [f"**原文**：{original}", "", "**增强结果**：", ""]
    lines += [f"{i}. {variant}" for i, variant in enumerate(variants, 1)]
    return "\n".join(lines)


def status_line(outcome: Outcome, engine: str, elapsed_ms: float) -> str:
    """"生成 2 条不同的结果（…）；过滤 1 条：…；只生成 2 条（要 3 条）：…": what came, what was dropped, why fewer."""
    line = f"生成 {len(outcome.kept)} 条不同的结果（引擎 {engine}，耗时 {elapsed_ms:.0f} ms）"
    for said in (dropped_words(outcome.dropped_counts()), short_words(outcome)):
        if said:
            line += f"；{said}"
    return line


def figures(variant: Kept) -> str:
    """"相似度 0.82 · 标签概率 91%": what the gate measured of one kept variant."""
    shown = f"相似度 {variant.similarity:.2f}" if variant.similarity is not None else ""
    if variant.label_probability is not None:
        shown += f" · 标签概率 {variant.label_probability:.0%}"
    return shown


def rejected_markdown(outcomes: list[Outcome], originals: list[str]) -> str:
    """The dropped variants with their reasons, per text."""
    lines = []
    for original, outcome in zip(originals, outcomes):
        if not outcome.rejected:
            continue
        if len(originals) > 1:
            lines.append(f"**{original}**")
        for rejected in outcome.rejected:
            why = REASON_WORDS[rejected.reason]
            if rejected.similarity is not None:
                why += f"，相似度 {rejected.similarity:.2f}"
            lines.append(f"- ~~{rejected.text or '（空）'}~~（{why}）")
    return "\n".join(lines) if lines else "没有被过滤的结果。"


async def on_augment(service: Service, text, engine, n, temperature, max_length, top_k, top_p, seed,
                     number_forms=False, quality_on=None, min_similarity=None, max_similarity=None, min_length_ratio=None,
                     max_length_ratio=None, min_label_prob=None, show_rejected=False, labels=None, text_label=None):
    params = ui_params(n, temperature, max_length, top_k, top_p, seed, number_forms)
    quality = ui_quality(service, quality_on, min_similarity, max_similarity, min_length_ratio, max_length_ratio,
                         min_label_prob, show_rejected)
    label_check = {}
    if (labels or "").strip() or (text_label or "").strip():
        label_check = {"labels": (labels or "").strip() or None, "text_labels": [text_label or None]}
    result = await service.augment([text or ""], params, engine=engine or None, field_name="text",
                                   quality=quality, **label_check)
    outcome = result.outcomes[0]
    boxes = [gr.Textbox(value=kept.text, label=f"结果 {i}", info=figures(kept), visible=True)
             for i, kept in enumerate(outcome.kept, 1)]
    boxes += [gr.Textbox(value="", visible=False)] * (MAX_VARIANTS - len(boxes))
    status = status_line(outcome, result.engine, result.elapsed_ms)
    if outcome.label_probability is not None:
        status += f"；原文属于「{(text_label or '').strip()}」的概率 {outcome.label_probability:.0%}"
    rejected = gr.Markdown(rejected_markdown(result.outcomes, [text.strip()]), visible=quality.return_rejected)
    return (*boxes, format_plain(outcome.texts), format_markdown(text.strip(), outcome.texts), status, rejected)


def batch_lines(text: str | None) -> list[str]:
    """One text per non-blank line, in order."""
    return [line for line in (text or "").splitlines() if line.strip()]


def labelled_lines(text: str | None) -> tuple[list[str], list[str | None]]:
    """The lines' texts and, where a line is "text<TAB>label", their labels (None where a line has none)."""
    texts, labels = [], []
    for line in batch_lines(text):
        own, tab, label = line.rpartition("\t")
        texts.append(own if tab else line)
        labels.append(label.strip() or None if tab else None)
    return texts, labels


def write_csv(rows: list[list[str]]) -> Path:
    """Write the table as UTF-8 CSV with a BOM, so Excel opens the Chinese correctly."""
    path = download_path(f"dpp-batch-{time.strftime('%Y%m%d-%H%M%S')}.csv")
    with path.open("w", encoding="utf-8-sig", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_HEADERS)
        writer.writerows(rows)
    return path


def table_rows(originals: list[str], labels: list[str | None], outcomes: list[Outcome]) -> list[list[str]]:
    """A row per variant, and one for every input that got none, saying why: no input leaves the table. An input's
    first row says why it has fewer variants than asked, and what the gate dropped."""
    rows = []
    for original, label, outcome in zip(originals, labels, outcomes):
        why = "；".join(filter(None, (short_words(outcome), dropped_words(outcome.dropped_counts()))))
        if not outcome.kept:
            rows.append([original, label or "", "", "", why or "没有结果"])
            continue
        for index, kept in enumerate(outcome.kept):
            similarity = f"{kept.similarity:.2f}" if kept.similarity is not None else ""
            rows.append([original, label or "", kept.text, similarity, why if index == 0 else ""])
    return rows


async def on_augment_batch(service: Service, text, engine, n, temperature, max_length, top_k, top_p, seed,
                           number_forms=False, quality_on=None, min_similarity=None, max_similarity=None, min_length_ratio=None,
                           max_length_ratio=None, min_label_prob=None, show_rejected=False, labels=None):
    texts, text_labels = labelled_lines(text)
    if not texts:
        raise TextEmpty("请输入至少一行文本（每行一条）", field="texts")
    params = ui_params(n, temperature, max_length, top_k, top_p, seed, number_forms)
    quality = ui_quality(service, quality_on, min_similarity, max_similarity, min_length_ratio, max_length_ratio,
                         min_label_prob, show_rejected)
    label_check = {}
    if (labels or "").strip() and not any(text_labels):
        raise InvalidParameter("填写了候选标签时，请把每行写成「文本<Tab>标签」，以便检查每条结果是否仍属于该行的标签",
                               field="labels")
    if (labels or "").strip() or any(text_labels):
        label_check = {"labels": (labels or "").strip() or None, "text_labels": text_labels}
    result = await service.augment(texts, params, engine=engine or None, field_name="texts", quality=quality,
                                   **label_check)
    rows = table_rows(texts, text_labels, result.outcomes)
    found = sum(map(len, result.variants))
    empty = sum(1 for outcome in result.outcomes if not outcome.kept)
    status = f"{len(texts)} 条文本共生成 {found} 条结果（引擎 {result.engine}，耗时 {result.elapsed_ms:.0f} ms）"
    if dropped := dropped_words(result.dropped()):
        status += f"；{dropped}"
    if empty:
        status += f"；{empty} 条文本没有结果，表格里写明了原因"
    plain = "\n".join("\t".join(row) for row in rows)
    rejected = gr.Markdown(rejected_markdown(result.outcomes, texts), visible=quality.return_rejected)
    return rows, gr.DownloadButton(value=str(write_csv(rows)), visible=True), plain, status, rejected


def build_single(service: Service, sessions: SessionWork) -> gr.Dropdown:
    """Tab 单条增强; returns its engine selector, which the page fills once the engines are loaded."""
    limits = service.settings
    text = gr.Textbox(label="输入文本", lines=4, max_length=limits.max_text_chars,
                      placeholder=f"输入一段中文（最多 {limits.max_text_chars} 字）")
    engine = engine_selector()
    with gr.Row():
        controls = parameter_controls("生成数量", number_forms=True)
    quality = quality_controls(service, SINGLE_LABEL_HELP, text_label=True)
    running = run_controls("开始增强")
    variant_boxes = [gr.Textbox(label=f"结果 {i}", visible=False, interactive=False, buttons=["copy"])
                     for i in range(1, MAX_VARIANTS + 1)]
    with gr.Row():
        copy_all = gr.Button("复制全部")
        copy_markdown = gr.Button("复制为Markdown")
    rejected = gr.Markdown(visible=False)
    plain_text = gr.Textbox(visible=False)
    markdown_text = gr.Textbox(visible=False)

    controls.follow(engine)
    running.wire(event(on_augment, service, sessions),
                 inputs=[text, engine, *controls.inputs(), *quality.inputs()],
                 outputs=[*variant_boxes, plain_text, markdown_text, running.status, rejected])
    copy_all.click(None, inputs=plain_text, js=COPY_JS, api_visibility="private")
    copy_markdown.click(None, inputs=markdown_text, js=COPY_JS, api_visibility="private")
    return engine


def build_batch(service: Service, sessions: SessionWork) -> gr.Dropdown:
    """Tab 批量增强; returns its engine selector."""
    limits = service.settings
    text = gr.Textbox(label=f"每行一条文本（最多 {limits.max_batch_texts} 条；要检查标签时写成 文本<Tab>标签）", lines=10)
    engine = engine_selector()
    with gr.Accordion("生成参数", open=True):
        with gr.Row():
            controls = parameter_controls("每条生成数量", number_forms=True)
    quality = quality_controls(service, BATCH_LABEL_HELP, text_label=False)
    running = run_controls("批量增强")
    table = gr.Dataframe(headers=CSV_HEADERS, datatype=["str"] * len(CSV_HEADERS), interactive=False,
                         wrap=True, buttons=["copy"], column_widths=["26%", "8%", "42%", "8%", "16%"])
    with gr.Row():
        copy_table = gr.Button("复制全部")
        download = gr.DownloadButton("下载 CSV", visible=False)
    rejected = gr.Markdown(visible=False)
    table_text = gr.Textbox(visible=False)

    controls.follow(engine)
    running.wire(event(on_augment_batch, service, sessions),
                 inputs=[text, engine, *controls.inputs(), *quality.inputs()],
                 outputs=[table, download, table_text, running.status, rejected])
    copy_table.click(None, inputs=table_text, js=COPY_JS, api_visibility="private")
    return engine
