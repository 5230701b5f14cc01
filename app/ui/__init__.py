"""The Gradio Blocks page and the Gradio API: one module per tab, every handler calling the service.

Every event that runs the model is a coroutine on the server's event loop: a waiting page request holds
no thread, it is admitted (or refused with the same overload message as REST) by the service like any
other request, and it is cancelled when its 停止 button is pressed or its tab is closed.
"""

from __future__ import annotations

import functools

import gradio as gr

from app.service import Service
from app.ui import augment_tab, classify_tab, public_api, tasks_tab
from app.ui.controls import CSS, engine_choices
from app.ui.events import SessionWork

__all__ = ["CSS", "build"]

# Gradio's room, per request our queue admits: events it runs at once, and events its own queue holds.
# Enough that every page and Gradio API request reaches our admission, which counts it and refuses it in
# the same words as REST, instead of waiting uncounted in Gradio's queue or being refused there in
# English. Async events hold no thread, so the room costs nothing; Gradio's queue stays bounded.
GRADIO_ROOM_PER_QUEUED_REQUEST = 4


def build(service: Service) -> gr.Blocks:
    """Lay out the page and wire its events; the public API is /augment, /augment_batch and /classify."""
    sessions = SessionWork()
    with gr.Blocks(title="dpp 中文文本增强") as demo:
        gr.Markdown("# dpp 中文文本增强与零样本分类")
        status_banner = gr.Markdown(elem_classes="dpp-banner")
        with gr.Tab("单条增强"):
            single_engine = augment_tab.build_single(service, sessions)
        with gr.Tab("批量增强"):
            batch_engine = augment_tab.build_batch(service, sessions)
        with gr.Tab("零样本分类"):
            classify_tab.build(service, sessions)
        with gr.Tab("更多任务"):
            tasks_tab.build(service, sessions, demo)
        demo.load(functools.partial(engine_choices, service), outputs=[status_banner, single_engine, batch_engine],
                  api_visibility="private")
        demo.unload(sessions.closed)
        public_api.register(service, sessions)
    room = GRADIO_ROOM_PER_QUEUED_REQUEST * service.settings.max_queue
    demo.max_threads = room
    demo.queue(max_size=room, default_concurrency_limit=None)
    return demo
