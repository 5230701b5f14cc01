"""The Gradio Blocks page and the Gradio API: one module per tab, every handler calling the service.

Every event that runs the model is a coroutine on the server's event loop: a waiting page request holds
no thread, it is admitted (or refused with the same overload message as REST) by the service like any
other request, and it is cancelled when its 停止 button is pressed or its tab is closed. The 文件任务 tab and the
file job endpoints call `Jobs`, whose runner sends the rows through the same service.
"""

from __future__ import annotations

import functools

import gradio as gr

from app.jobs.manager import Jobs
from app.service import Service
from app.ui import augment_tab, classify_tab, jobs_api, jobs_tab, public_api, tasks_tab
from app.ui.controls import CSS, engine_choices
from app.ui.events import SessionWork

__all__ = ["CSS", "build"]

# Gradio's room, per request our queue admits: events it runs at once, and events its own queue holds.
# Enough that every page and Gradio API request reaches our admission, which counts it and refuses it in
# the same words as REST, instead of waiting uncounted in Gradio's queue or being refused there in
# English. Async events hold no thread, so the room costs nothing; Gradio's queue stays bounded.
GRADIO_ROOM_PER_QUEUED_REQUEST = 4
UPLOAD_SWEEP_S, UPLOAD_KEEP_S = 3600, 86400


def build(service: Service, jobs: Jobs) -> gr.Blocks:
    """Lay out the page and wire its events; the public API is /augment, /augment_report, /augment_batch and
    /classify, and the file jobs' /job_submit, /job_status and /job_result."""
    sessions = SessionWork()
    # Uploads (a job's file is copied into the job store when it starts) are deleted a day after they came.
    with gr.Blocks(title="dpp 中文文本增强", delete_cache=(UPLOAD_SWEEP_S, UPLOAD_KEEP_S)) as demo:
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
        with gr.Tab("文件任务"):
            jobs_engine = jobs_tab.build(jobs, sessions, demo)
        selectors = [single_engine, batch_engine, jobs_engine]
        demo.load(functools.partial(engine_choices, service, selectors=len(selectors)),
                  outputs=[status_banner, *selectors], api_visibility="private")
        demo.unload(sessions.closed)
        public_api.register(service, sessions)
        jobs_api.register(jobs, sessions)
    room = GRADIO_ROOM_PER_QUEUED_REQUEST * service.settings.max_queue
    demo.max_threads = room
    demo.queue(max_size=room, default_concurrency_limit=None)
    return demo
