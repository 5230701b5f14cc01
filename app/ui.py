"""The Gradio Blocks page and the Gradio API: thin handlers that call the service and format."""

from __future__ import annotations

import csv
import functools
import re
import tempfile
import time
import uuid
from pathlib import Path

import gradio as gr

from app.errors import DppError, InvalidParameter, TextEmpty
from app.params import (
    DEFAULTS,
    MAX_LENGTH_RANGE,
    NUM_RETURN_SEQUENCES_RANGE,
    TEMPERATURE_RANGE,
    TOP_K_RANGE,
    TOP_P_RANGE,
    GenerationParams,
    params_from,
    task_params,
)
from app.service import ClassifyResult, Service

MAX_VARIANTS = NUM_RETURN_SEQUENCES_RANGE[1]
CSV_HEADERS = ["原文", "增强结果"]
DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "dpp-downloads"
DOWNLOAD_MAX_AGE_S = 3600

# Works on plain http://host:7860 too, where browsers hide navigator.clipboard.
COPY_JS = """(text) => {
  if (!text) { return []; }
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text);
  } else {
    const area = document.createElement("textarea");
    area.value = text;
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  return [];
}"""

CSS = ".dpp-banner {padding: 0.6em 1em; border-radius: 8px; background: var(--block-background-fill);}"


# The boxes of the tasks' fields.
FIELD_LABELS = {"text": "输入文本", "passage": "段落", "answer": "答案"}
# The service's messages name the API's fields ("text 为空或只有空白"); the page names its own controls.
PAGE_FIELDS = {**FIELD_LABELS, "num_return_sequences": "生成数量", "temperature": "温度", "max_length": "最大长度",
               "top_k": "Top-K", "top_p": "Top-P", "threshold": "多标签阈值"}
_BATCH_ITEM = re.compile(r"texts\[(\d+)\]")


def _in_page_words(error: DppError) -> str:
    """The message with a leading API field name put as the page shows it: "输入文本", "第 3 条文本"."""
    field, message = error.field, error.message
    if not field or not message.startswith(field):
        return message
    item = _BATCH_ITEM.fullmatch(field)
    shown = f"第 {int(item[1]) + 1} 条文本" if item else PAGE_FIELDS.get(field)
    return shown + message[len(field):] if shown else message


def _shown_as_error(words):
    """A handler decorator: the service's errors become a readable message (`words(error)`), never a stack trace."""

    def decorate(handler):
        @functools.wraps(handler)
        def wrapper(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except DppError as exc:
                raise gr.Error(words(exc), title="请求未完成", print_exception=False) from exc

        return wrapper

    return decorate


# Page events speak of the page's boxes; the Gradio API's endpoints of the fields their clients sent.
_shown_in_page = _shown_as_error(_in_page_words)
_shown_to_client = _shown_as_error(lambda error: error.message)


def _whole(value):
    """Sliders and JSON clients may send 3.0 for 3; the params want integers there."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _seed(value) -> int | None:
    """The page's seed box holds text: empty means random."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return int(value.strip())
    except ValueError:
        raise InvalidParameter(f"随机种子必须是整数（收到 {value!r}）", field="seed") from None


def ui_params(num_return_sequences, max_length, temperature, top_k, top_p, seed) -> GenerationParams:
    values = dict(num_return_sequences=num_return_sequences, max_length=max_length,
                  temperature=temperature, top_k=top_k, top_p=top_p, seed=_seed(seed))
    return params_from({name: _whole(value) for name, value in values.items()})


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


ENGINE_LABELS = {"mt5": "mT5 模型", "mt5-ct2": "mT5 模型（CTranslate2 加速）", "lexical": "同义词替换（无需模型权重）"}
DECODER_LABELS = {"fast, CUDA graphs": "自带解码循环 + CUDA Graphs", "fast": "自带解码循环",
                  "generate": "transformers generate"}


def banner(service: Service) -> str:
    readiness = service.readiness()
    if readiness.ready:
        info = readiness.info
        if info.get("engine") == "lexical":
            line = f"✅ 当前引擎：**lexical**（同义词替换，无需模型权重）· 词表：{info.get('model')}"
        else:
            line = (f"✅ 当前引擎：**{info.get('engine')}** · 设备 {info.get('device')} · "
                    f"{info.get('dtype')} · 模型目录 `{info.get('model')}`")
            if info.get("decoder"):
                line += f" · 解码：{DECODER_LABELS.get(info['decoder'], info['decoder'])}"
        for name, reason in info.get("unavailable", {}).items():
            line += f"\n\n⚠️ 引擎 {name} 未加载：{reason}"
        return line
    if readiness.status == "loading":
        return "⏳ 模型加载中，请稍候刷新页面。"
    return f"⚠️ **模型未就绪**：{readiness.reason}"


def engine_choices(service: Service):
    """The page's engine selectors: loaded engines, the default first and selected."""
    names = service.engine_names()
    choices = [(ENGINE_LABELS.get(name, name), name) for name in names]
    selector = gr.Dropdown(choices=choices, value=names[0] if names else None)
    return banner(service), selector, selector


@_shown_in_page
def on_augment(service: Service, text, engine, n, temperature, max_length, top_k, top_p, seed):
    params = ui_params(n, max_length, temperature, top_k, top_p, seed)
    result = service.augment([text or ""], params, engine=engine or None, field_name="text")
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


@_shown_in_page
def on_augment_batch(service: Service, text, engine, n, temperature, max_length, top_k, top_p, seed):
    texts = batch_lines(text)
    if not texts:
        raise TextEmpty("请输入至少一行文本（每行一条）", field="texts")
    params = ui_params(n, max_length, temperature, top_k, top_p, seed)
    result = service.augment(texts, params, engine=engine or None, field_name="texts")
    rows = [[original, variant] for original, variants in zip(texts, result.variants) for variant in variants]
    found = sum(map(len, result.variants))
    status = (f"{len(texts)} 条文本共生成 {found} 条结果（引擎 {result.engine}，"
              f"耗时 {result.elapsed_ms:.0f} ms）")
    plain = "\n".join("\t".join(row) for row in rows)
    return rows, gr.DownloadButton(value=str(write_csv(rows)), visible=True), plain, status


def _checked_strings(values: object, field: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidParameter(f"{field} 应为字符串列表（收到 {repr(values)[:80]}）", field=field)
    return values


def _checked_string(value: object, field: str) -> list[str]:
    """One text as the one-item batch the service takes."""
    if not isinstance(value, str):
        raise InvalidParameter(f"{field} 应为字符串（收到 {repr(value)[:80]}）", field=field)
    return [value]


@_shown_to_client
def api_augment(service: Service, text, num_return_sequences, max_length, temperature, top_k, top_p,
                seed, engine) -> list[str]:
    params = ui_params(num_return_sequences, max_length, temperature, top_k, top_p, seed)
    texts = _checked_string(text, "text")
    return service.augment(texts, params, engine=engine, field_name="text").variants[0]


@_shown_to_client
def api_augment_batch(service: Service, texts, num_return_sequences, max_length, temperature, top_k,
                      top_p, seed, engine) -> list[list[str]]:
    params = ui_params(num_return_sequences, max_length, temperature, top_k, top_p, seed)
    texts = _checked_strings(texts, "texts")
    return service.augment(texts, params, engine=engine, field_name="texts").variants


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


@_shown_in_page
def on_classify(service: Service, text, labels, mode, multi_label, threshold):
    # Each tag may itself hold several labels separated by commas or 、; the service splits them.
    joined = ",".join(labels or []) if isinstance(labels, list) else (labels or "")
    result = service.classify([text or ""], joined, mode=mode, multi_label=bool(multi_label),
                              threshold=threshold, field_name="text")
    item = result.items[0]
    shown = item.scores if item.scores is not None else item.raw_output
    return shown, classify_status(result, threshold)


def _served_task(service: Service, name: str | None):
    return next((task for task in service.tasks() if task.name == name), None)


def task_field_updates(service: Service, task: str, names: list[str]):
    """Show the boxes the chosen task needs, hide the others, and say how it is answered."""
    spec = _served_task(service, task)
    needed = spec.fields if spec else ()
    boxes = [gr.Textbox(visible=name in needed) for name in names]
    if spec is None:
        return *boxes, ""
    how = (f"按标签打分：{' / '.join(spec.labels)}，答案一定是其中之一" if spec.scored
           else "生成式任务：不勾选“采样”时用贪心解码，给出 1 条确定的结果")
    return *boxes, f"提示词模板：`{spec.template.replace(chr(10), ' ⏎ ')}` · {how}"


@_shown_in_page
def on_task(service: Service, names: list[str], task, sample, *values):
    fields, (n, temperature, max_length, top_k, top_p, seed) = values[:len(names)], values[len(names):]
    spec = _served_task(service, task)
    wanted = {name: value or "" for name, value in zip(names, fields) if spec and name in spec.fields}
    if sample:
        params = ui_params(n, max_length, temperature, top_k, top_p, seed)
    else:
        params = task_params({"max_length": _whole(max_length)})
    result = service.run_task(task or "", wanted, params)
    scores = gr.Label(value=result.scores, visible=result.scores is not None)
    status = f"{len(result.outputs)} 条结果（引擎 {result.engine}，耗时 {result.elapsed_ms:.0f} ms）"
    return "\n".join(result.outputs), scores, result.prompt, status


@_shown_to_client
def api_classify(service: Service, text, labels, mode, multi_label, threshold, engine) -> dict:
    texts = _checked_string(text, "text")
    result = service.classify(texts, labels, mode=mode, multi_label=multi_label, threshold=threshold,
                              engine=engine, field_name="text")
    return {**result.items[0].as_dict(), "engine": result.engine}


def _engine_selector():
    return gr.Dropdown(label="引擎", choices=[], interactive=True,
                       info="同义词替换引擎只用到 生成数量、温度（改动词语的比例）和随机种子")


def _parameter_controls(count_label: str):
    count = gr.Slider(*NUM_RETURN_SEQUENCES_RANGE, value=DEFAULTS.num_return_sequences, step=1, label=count_label)
    temperature = gr.Slider(*TEMPERATURE_RANGE, value=DEFAULTS.temperature, step=0.05, label="温度",
                            info="越高越多样，越低越保守")
    max_length = gr.Slider(*MAX_LENGTH_RANGE, value=DEFAULTS.max_length, step=1, label="最大长度",
                           info="每条结果最多生成的 token 数")
    top_k = gr.Slider(*TOP_K_RANGE, value=DEFAULTS.top_k, step=1, label="Top-K", info="0 表示不限制")
    top_p = gr.Slider(*TOP_P_RANGE, value=DEFAULTS.top_p, step=0.01, label="Top-P")
    # A Textbox, not a Number: an empty Number reads as 0, which would seed every request.
    seed = gr.Textbox(value="", label="随机种子（可选）", placeholder="留空表示随机；填写整数后结果可复现")
    return [count, temperature, max_length, top_k, top_p, seed]


def build(service: Service) -> gr.Blocks:
    """Lay out the page and wire its events; the public API is /augment, /augment_batch and /classify."""
    limits = service.settings
    with gr.Blocks(title="dpp 中文文本增强") as demo:
        gr.Markdown("# dpp 中文文本增强与零样本分类")
        status_banner = gr.Markdown(elem_classes="dpp-banner")
        with gr.Tab("单条增强"):
            text = gr.Textbox(label="输入文本", lines=4, max_length=limits.max_text_chars,
                              placeholder=f"输入一段中文（最多 {limits.max_text_chars} 字）")
            single_engine = _engine_selector()
            with gr.Row():
                single_controls = _parameter_controls("生成数量")
            run_single = gr.Button("开始增强", variant="primary")
            single_status = gr.Markdown()
            variant_boxes = [
                gr.Textbox(label=f"结果 {i}", visible=False, interactive=False, buttons=["copy"])
                for i in range(1, MAX_VARIANTS + 1)
            ]
            with gr.Row():
                copy_all = gr.Button("复制全部")
                copy_markdown = gr.Button("复制为Markdown")
            plain_text = gr.Textbox(visible=False)
            markdown_text = gr.Textbox(visible=False)
        with gr.Tab("批量增强"):
            batch_text = gr.Textbox(label=f"每行一条文本（最多 {limits.max_batch_texts} 条）", lines=10)
            batch_engine = _engine_selector()
            with gr.Accordion("生成参数", open=True):
                with gr.Row():
                    batch_controls = _parameter_controls("每条生成数量")
            run_batch = gr.Button("批量增强", variant="primary")
            batch_status = gr.Markdown()
            table = gr.Dataframe(headers=CSV_HEADERS, datatype=["str", "str"], interactive=False,
                                 wrap=True, buttons=["copy"], column_widths=["30%", "70%"])
            with gr.Row():
                copy_table = gr.Button("复制全部")
                download = gr.DownloadButton("下载 CSV", visible=False)
            table_text = gr.Textbox(visible=False)
        with gr.Tab("零样本分类"):
            classify_text = gr.Textbox(label="待分类文本", lines=4, max_length=limits.max_text_chars,
                                       placeholder=f"输入一段中文（最多 {limits.max_text_chars} 字）")
            labels = gr.Dropdown(label=f"候选标签（2 到 {limits.max_labels} 个）", choices=[], multiselect=True,
                                 allow_custom_value=True,
                                 info="输入一个标签后按回车；也可以一次粘贴用逗号或顿号分隔的多个标签，如 物流、价格、客服")
            with gr.Row():
                mode = gr.Radio(MODE_CHOICES, value="constrained", label="方式")
                multi_label = gr.Checkbox(label="多标签：逐个判断每个标签", value=False)
                threshold = gr.Slider(0.05, 0.95, value=limits.multi_label_threshold, step=0.05,
                                      label="多标签阈值", info="多标签时，概率达到此值的标签都会返回")
            run_classify = gr.Button("开始分类", variant="primary")
            classify_status_line = gr.Markdown()
            label_bars = gr.Label(label="各标签概率", num_top_classes=limits.max_labels)
        with gr.Tab("更多任务"):
            served = service.tasks()
            field_names = list(dict.fromkeys(name for task in served for name in task.fields))
            task = gr.Dropdown(label="任务", choices=[(t.title, t.name) for t in served],
                               value=served[0].name if served else None)
            task_hint = gr.Markdown()
            field_boxes = [gr.Textbox(label=FIELD_LABELS.get(name, name), lines=3, max_length=limits.max_text_chars,
                                      visible=bool(served) and name in served[0].fields)
                           for name in field_names]
            sample = gr.Checkbox(label="采样：生成多条不同的结果（使用下面的参数）", value=False)
            with gr.Accordion("生成参数", open=False):
                with gr.Row():
                    task_controls = _parameter_controls("生成数量")
            run_task = gr.Button("运行任务", variant="primary")
            task_status = gr.Markdown()
            task_scores = gr.Label(label="各标签概率", visible=False)
            task_output = gr.Textbox(label="结果（每行一条）", lines=4, interactive=False, buttons=["copy"])
            task_prompt = gr.Textbox(label="实际发送给模型的提示词", lines=3, interactive=False)

        demo.load(functools.partial(engine_choices, service), outputs=[status_banner, single_engine, batch_engine],
                  api_visibility="private")
        run_single.click(functools.partial(on_augment, service), inputs=[text, single_engine, *single_controls],
                         outputs=[*variant_boxes, plain_text, markdown_text, single_status],
                         api_visibility="private")
        copy_all.click(None, inputs=plain_text, js=COPY_JS, api_visibility="private")
        copy_markdown.click(None, inputs=markdown_text, js=COPY_JS, api_visibility="private")
        run_batch.click(functools.partial(on_augment_batch, service),
                        inputs=[batch_text, batch_engine, *batch_controls],
                        outputs=[table, download, table_text, batch_status], api_visibility="private")
        copy_table.click(None, inputs=table_text, js=COPY_JS, api_visibility="private")
        run_classify.click(functools.partial(on_classify, service),
                           inputs=[classify_text, labels, mode, multi_label, threshold],
                           outputs=[label_bars, classify_status_line], api_visibility="private")
        show_fields = functools.partial(task_field_updates, service, names=field_names)
        task.change(show_fields, inputs=task, outputs=[*field_boxes, task_hint], api_visibility="private")
        demo.load(show_fields, inputs=task, outputs=[*field_boxes, task_hint], api_visibility="private")
        run_task.click(functools.partial(on_task, service, field_names),
                       inputs=[task, sample, *field_boxes, *task_controls],
                       outputs=[task_output, task_scores, task_prompt, task_status], api_visibility="private")
        _public_api(service)
    demo.queue(default_concurrency_limit=limits.ui_concurrency)
    return demo


def _public_api(service: Service) -> None:
    """Named endpoints for gradio_client, with the REST contract's parameters and defaults."""

    def augment(text: str, num_return_sequences: int = DEFAULTS.num_return_sequences,
                max_length: int = DEFAULTS.max_length, temperature: float = DEFAULTS.temperature,
                top_k: int = DEFAULTS.top_k, top_p: float = DEFAULTS.top_p, seed: int | None = None,
                engine: str | None = None) -> list[str]:
        """Return distinct augmented variants of one text."""
        return api_augment(service, text, num_return_sequences, max_length, temperature, top_k, top_p,
                           seed, engine)

    def augment_batch(texts: list[str], num_return_sequences: int = DEFAULTS.num_return_sequences,
                      max_length: int = DEFAULTS.max_length, temperature: float = DEFAULTS.temperature,
                      top_k: int = DEFAULTS.top_k, top_p: float = DEFAULTS.top_p, seed: int | None = None,
                      engine: str | None = None) -> list[list[str]]:
        """Return, per text and in input order, its augmented variants."""
        return api_augment_batch(service, texts, num_return_sequences, max_length, temperature, top_k,
                                 top_p, seed, engine)

    def classify(text: str, labels: list[str] | str, mode: str = "constrained", multi_label: bool = False,
                 threshold: float | None = None, engine: str | None = None) -> dict:
        """Classify one text into the candidate labels: label, scores, raw_output, in_labels."""
        return api_classify(service, text, labels, mode, multi_label, threshold, engine)

    gr.api(augment, api_name="augment")
    gr.api(augment_batch, api_name="augment_batch")
    gr.api(classify, api_name="classify")
