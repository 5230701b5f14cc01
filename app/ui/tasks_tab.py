"""Tab 更多任务: the card's other tasks, each showing only the boxes it needs."""

from __future__ import annotations

import functools

import gradio as gr

from app.params import task_params
from app.service import Service
from app.ui.controls import parameter_controls, run_controls, ui_params
from app.ui.events import FIELD_LABELS, SessionWork, event


def _served_task(service: Service, name: str | None):
    return next((task for task in service.tasks() if task.name == name), None)


async def task_field_updates(service: Service, task: str, names: list[str]):
    """Show the boxes the chosen task needs, hide the others, and say how it is answered."""
    spec = _served_task(service, task)
    needed = spec.fields if spec else ()
    boxes = [gr.Textbox(visible=name in needed) for name in names]
    if spec is None:
        return *boxes, ""
    how = (f"按标签打分：{' / '.join(spec.labels)}，答案一定是其中之一" if spec.scored
           else "生成式任务：不勾选“采样”时用贪心解码，给出 1 条确定的结果")
    return *boxes, f"提示词模板：`{spec.template.replace(chr(10), ' ⏎ ')}` · {how}"


async def on_task(service: Service, task, sample, *values, names: list[str]):
    fields, (n, temperature, max_length, top_k, top_p, seed) = values[:len(names)], values[len(names):]
    spec = _served_task(service, task)
    wanted = {name: value or "" for name, value in zip(names, fields) if spec and name in spec.fields}
    if sample:
        params = ui_params(n, temperature, max_length, top_k, top_p, seed)
    else:
        params = task_params({"max_length": max_length})
    result = await service.run_task(task or "", wanted, params)
    scores = gr.Label(value=result.scores, visible=result.scores is not None)
    status = f"{len(result.outputs)} 条结果（引擎 {result.engine}，耗时 {result.elapsed_ms:.0f} ms）"
    return "\n".join(result.outputs), scores, result.prompt, status


def build(service: Service, sessions: SessionWork, page: gr.Blocks) -> None:
    """Lay out the tab and wire it; the chosen task's boxes show at page load and on each change."""
    limits = service.settings
    served = service.tasks()
    names = list(dict.fromkeys(name for task in served for name in task.fields))
    task = gr.Dropdown(label="任务", choices=[(t.title, t.name) for t in served],
                       value=served[0].name if served else None)
    hint = gr.Markdown()
    field_boxes = [gr.Textbox(label=FIELD_LABELS.get(name, name), lines=3, max_length=limits.max_text_chars,
                              visible=bool(served) and name in served[0].fields)
                   for name in names]
    sample = gr.Checkbox(label="采样：生成多条不同的结果（使用下面的参数）", value=False)
    with gr.Accordion("生成参数", open=False):
        with gr.Row():
            controls = parameter_controls("生成数量")
    running = run_controls("运行任务")
    scores = gr.Label(label="各标签概率", visible=False)
    output = gr.Textbox(label="结果（每行一条）", lines=4, interactive=False, buttons=["copy"])
    prompt = gr.Textbox(label="实际发送给模型的提示词", lines=3, interactive=False)

    show_fields = functools.partial(task_field_updates, service, names=names)
    task.change(show_fields, inputs=task, outputs=[*field_boxes, hint], api_visibility="private")
    page.load(show_fields, inputs=task, outputs=[*field_boxes, hint], api_visibility="private")
    running.wire(event(on_task, service, sessions, names=names),
                 inputs=[task, sample, *field_boxes, *controls.inputs()], outputs=[output, scores, prompt, running.status])
