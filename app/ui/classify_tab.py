"""Tab 零样本分类: its layout and its handler."""

from __future__ import annotations

import gradio as gr

from app.service import ClassifyResult, Service
from app.ui.controls import run_controls
from app.ui.events import SessionWork, event

MODE_CHOICES = [("约束打分：答案一定是候选标签之一", "constrained"), ("自由生成：模型原样输出（对照用）", "generate")]


def _percent(probability: float) -> str:
    return f"{probability:.1%}"


def classify_status(result: ClassifyResult, threshold: float) -> str:
    item = result.items[0]
    tail = f"（引擎 {result.engine}，耗时 {result.elapsed_ms:.0f} ms）"
    if item.raw_output is not None:
        verdict = f"在候选标签内：**{item.label}**" if item.in_labels else "**不在**候选标签内"
        return f"模型原样输出：“{item.raw_output}”，{verdict}{tail}"
    if item.labels is not None:
        if not item.labels:
            return f"没有标签的概率达到阈值 {threshold:.2f}；最可能的是 **{item.label}**{tail}"
        passed = "、".join(f"**{label}**（{_percent(item.scores[label])}）" for label in item.labels)
        return f"达到阈值 {threshold:.2f} 的标签：{passed}{tail}"
    return f"答案：**{item.label}**（概率 {_percent(item.scores[item.label])}）{tail}"


async def on_classify(service: Service, text, labels, mode, multi_label, threshold):
    # Tags are typed by people: joined into the separated form, whose parts the service trims and
    # counts once, and each tag may itself hold several labels separated by commas or 、.
    joined = ",".join(labels or []) if isinstance(labels, list) else (labels or "")
    result = await service.classify([text or ""], joined, mode=mode, multi_label=bool(multi_label),
                                    threshold=threshold, field_name="text")
    item = result.items[0]
    shown = item.scores if item.scores is not None else item.raw_output
    return shown, classify_status(result, threshold)


def build(service: Service, sessions: SessionWork) -> None:
    limits = service.settings
    text = gr.Textbox(label="待分类文本", lines=4, max_length=limits.max_text_chars,
                      placeholder=f"输入一段中文（最多 {limits.max_text_chars} 字）")
    labels = gr.Dropdown(label=f"候选标签（2 到 {limits.max_labels} 个）", choices=[], multiselect=True,
                         allow_custom_value=True,
                         info="输入一个标签后按回车；也可以一次粘贴用逗号或顿号分隔的多个标签，如 物流、价格、客服")
    with gr.Row():
        mode = gr.Radio(MODE_CHOICES, value="constrained", label="方式")
        multi_label = gr.Checkbox(label="多标签：逐个判断每个标签", value=False)
        threshold = gr.Slider(0.05, 0.95, value=limits.multi_label_threshold, step=0.05,
                              label="多标签阈值", info="多标签时，概率达到此值的标签都会返回")
    running = run_controls("开始分类")
    label_bars = gr.Label(label="各标签概率", num_top_classes=limits.max_labels)

    running.wire(event(on_classify, service, sessions), inputs=[text, labels, mode, multi_label, threshold],
                 outputs=[label_bars, running.status])
