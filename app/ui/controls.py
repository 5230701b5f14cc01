"""What several tabs share: the generation parameters' controls, the engine selector, the banner, copying."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from app.errors import InvalidParameter
from app.params import (
    DEFAULTS,
    MAX_LENGTH_RANGE,
    NUM_RETURN_SEQUENCES_RANGE,
    TEMPERATURE_RANGE,
    TOP_K_RANGE,
    TOP_P_RANGE,
    GenerationParams,
    params_from,
)
from app.gate import GateParams
from app.service import Service

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
STOPPED_JS = "() => '已停止：本次请求已取消，不再占用模型'"
CSS = ".dpp-banner {padding: 0.6em 1em; border-radius: 8px; background: var(--block-background-fill);}"

LEXICAL = "lexical"
ENGINE_LABELS = {"mt5": "mT5 模型", "mt5-ct2": "mT5 模型（CTranslate2 加速）", LEXICAL: "同义词替换（无需模型权重）"}
DECODER_LABELS = {"fast, CUDA graphs": "自带解码循环 + CUDA Graphs", "fast": "自带解码循环",
                  "generate": "transformers generate"}


@dataclass(frozen=True)
class ParameterControls:
    """The generation parameters' controls of one tab, passed to its handler in this order."""

    count: gr.Slider
    temperature: gr.Slider
    max_length: gr.Slider
    top_k: gr.Slider
    top_p: gr.Slider
    seed: gr.Textbox
    number_forms: gr.Checkbox | None = None  # augmenting tabs only, passed last

    def inputs(self) -> list:
        own = [self.number_forms] if self.number_forms is not None else []
        return [self.count, self.temperature, self.max_length, self.top_k, self.top_p, self.seed, *own]

    def follow(self, engine: gr.Dropdown) -> None:
        """Show only the controls the chosen engine reads: the lexical engine has no token length or sampling
        cut-offs (its temperature is the share of words changed)."""
        engine.change(_sampling_controls, inputs=engine, outputs=[self.max_length, self.top_k, self.top_p],
                      api_visibility="private", queue=False)


def _sampling_controls(engine: str | None):
    return [gr.update(visible=engine != LEXICAL)] * 3


NUMBER_FORMS_HELP = "如 三天 ↔ 3天、百分之二十 ↔ 20%，数值不变：同义词替换引擎会这样改写，质量过滤两种写法都接受"


def parameter_controls(count_label: str, number_forms: bool = False) -> ParameterControls:
    """The generation parameters' controls; with `number_forms`, the augmenting tabs' 数字写法可互换 too."""
    return ParameterControls(
        count=gr.Slider(*NUM_RETURN_SEQUENCES_RANGE, value=DEFAULTS.num_return_sequences, step=1, label=count_label),
        temperature=gr.Slider(*TEMPERATURE_RANGE, value=DEFAULTS.temperature, step=0.05, label="温度",
                              info="越高越多样，越低越保守"),
        max_length=gr.Slider(*MAX_LENGTH_RANGE, value=DEFAULTS.max_length, step=1, label="最大长度",
                             info="每条结果最多生成的 token 数"),
        top_k=gr.Slider(*TOP_K_RANGE, value=DEFAULTS.top_k, step=1, label="Top-K", info="0 表示不限制"),
        top_p=gr.Slider(*TOP_P_RANGE, value=DEFAULTS.top_p, step=0.01, label="Top-P"),
        # A Textbox, not a Number: an empty Number reads as 0, which would seed every request.
        seed=gr.Textbox(value="", label="随机种子（可选）", placeholder="留空表示随机；填写整数后结果可复现"),
        number_forms=gr.Checkbox(value=False, label="数字写法可互换", info=NUMBER_FORMS_HELP) if number_forms else None,
    )


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


def ui_params(num_return_sequences, temperature, max_length, top_k, top_p, seed,
              number_forms=False) -> GenerationParams:
    """Parameters from the controls, in ParameterControls' order."""
    values = dict(num_return_sequences=num_return_sequences, max_length=max_length,
                  temperature=temperature, top_k=top_k, top_p=top_p, seed=_seed(seed),
                  number_forms=bool(number_forms))
    return params_from(values)


@dataclass(frozen=True)
class QualityControls:
    """The 质量过滤 section of a tab: the gate's thresholds and the label check (handlers get `inputs()`)."""

    on: gr.Checkbox
    min_similarity: gr.Slider
    max_similarity: gr.Slider
    min_length_ratio: gr.Slider
    max_length_ratio: gr.Slider
    labels: gr.Textbox
    min_label_prob: gr.Slider
    show_rejected: gr.Checkbox
    text_label: gr.Textbox | None  # the single text's own label; a batch gives each line's after a tab

    def inputs(self) -> list:
        own = [self.text_label] if self.text_label is not None else []
        return [self.on, self.min_similarity, self.max_similarity, self.min_length_ratio, self.max_length_ratio,
                self.min_label_prob, self.show_rejected, self.labels, *own]


def quality_controls(service: Service, label_help: str, text_label: bool) -> QualityControls:
    """The 质量过滤 accordion, its defaults the server's settings."""
    defaults = service.gate_defaults
    with gr.Accordion("质量过滤", open=False):
        on = gr.Checkbox(value=defaults.on, label="启用质量过滤",
                         info="关闭后只去掉完全重复的结果；开启时丢弃丢了数字等关键信息、几乎照抄原文、离原文太远或改变标签的结果")
        with gr.Row():
            min_similarity = gr.Slider(0, 1, value=defaults.min_similarity, step=0.01, label="最低相似度",
                                       info="与原文的字符相似度低于此值的结果视为相差过大")
            max_similarity = gr.Slider(0, 1, value=defaults.max_similarity, step=0.01, label="最高相似度",
                                       info="高于此值视为过于相似（只改了标点、语气词的结果总会被去掉）")
        with gr.Row():
            min_length_ratio = gr.Slider(0, 5, value=defaults.min_length_ratio, step=0.05, label="最短长度比",
                                         info="结果长度 ÷ 原文长度 的下限")
            max_length_ratio = gr.Slider(0, 5, value=defaults.max_length_ratio, step=0.05, label="最长长度比",
                                         info="结果长度 ÷ 原文长度 的上限")
        with gr.Row():
            labels = gr.Textbox(label="标签检查：候选标签（可选）", placeholder="如 正面,负面（逗号或顿号分隔）",
                                info=label_help)
            own = gr.Textbox(label="原文的标签", placeholder="如 正面") if text_label else None
        with gr.Row():
            min_label_prob = gr.Slider(0, 1, value=defaults.min_label_prob, step=0.05, label="标签最低概率",
                                       info="结果属于原文标签的概率低于此值时丢弃（需要 mT5 权重）")
            show_rejected = gr.Checkbox(value=False, label="显示被过滤的结果及原因")
    return QualityControls(on, min_similarity, max_similarity, min_length_ratio, max_length_ratio, labels,
                           min_label_prob, show_rejected, own)


def ui_quality(service: Service, on, min_similarity, max_similarity, min_length_ratio, max_length_ratio,
               min_label_prob, show_rejected) -> GateParams:
    """The gate's params from the 质量过滤 controls (None: the server's setting)."""
    return service.gate_defaults.with_sent(dict(
        quality=None if on is None else "on" if on else "off", min_similarity=min_similarity, max_similarity=max_similarity,
        min_length_ratio=min_length_ratio, max_length_ratio=max_length_ratio, min_label_prob=min_label_prob,
        return_rejected=bool(show_rejected)))


def engine_selector():
    return gr.Dropdown(label="引擎", choices=[], interactive=True,
                       info="同义词替换引擎只用到 生成数量、温度（改动词语的比例）和随机种子，选中时其余参数隐藏")


@dataclass(frozen=True)
class RunControls:
    """A tab's run and 停止 buttons and its status line: 停止 cancels the run's request, which leaves the queue."""

    run: gr.Button
    stop: gr.Button
    status: gr.Markdown

    def wire(self, handler, inputs: list, outputs: list) -> None:
        running = self.run.click(handler, inputs=inputs, outputs=outputs, api_visibility="private")
        self.stop.click(None, js=STOPPED_JS, outputs=self.status, cancels=[running], api_visibility="private")


def run_controls(label: str) -> RunControls:
    with gr.Row():
        run = gr.Button(label, variant="primary")
        stop = gr.Button("停止", variant="stop")
    return RunControls(run, stop, gr.Markdown())


def banner(service: Service) -> str:
    readiness = service.readiness()
    if readiness.ready:
        info = readiness.info
        if info.get("engine") == LEXICAL:
            line = f"✅ 当前引擎：**lexical**（同义词替换，无需模型权重）· 词表：{info.get('model')}"
        else:
            line = (f"✅ 当前引擎：**{info.get('engine')}** · 设备 {info.get('device')} · "
                    f"{info.get('dtype')} · 模型 `{info.get('model')}`")
            if info.get("decoder"):
                line += f" · 解码：{DECODER_LABELS.get(info['decoder'], info['decoder'])}"
            if info.get("decoder_fallback"):
                line += f"\n\n⚠️ 自带解码循环未启用：{info['decoder_fallback']}"
        for name, reason in info.get("unavailable", {}).items():
            line += f"\n\n⚠️ 引擎 {name} 未加载：{reason}"
        return line
    if readiness.status == "loading":
        return "⏳ 模型加载中，请稍候刷新页面。"
    if readiness.status == "draining":
        return "⏸️ 服务正在停止，不再接受新请求。"
    return f"⚠️ **模型未就绪**：{readiness.reason}"


async def engine_choices(service: Service, selectors: int):
    """The banner, and the page's `selectors` engine selectors: loaded engines, the default first and selected."""
    names = service.engine_names()
    choices = [(ENGINE_LABELS.get(name, name), name) for name in names]
    selector = gr.Dropdown(choices=choices, value=names[0] if names else None)
    return banner(service), *[selector] * selectors
