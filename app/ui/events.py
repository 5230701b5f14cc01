"""How a page or Gradio API event runs a handler: on the event loop, with a request id, cancelled with its
tab, and with errors shown as readable Chinese, never as a stack trace or an exception's text."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import typing
import uuid
from collections.abc import Awaitable, Callable, Iterator

import gradio as gr

from app.errors import DppError
from app.jobs.manager import Jobs
from app.logs import request_id
from app.service import Service

log = logging.getLogger(__name__)

# The service's messages name the API's fields ("text 为空或只有空白"); the page names its own controls.
FIELD_LABELS = {"text": "输入文本", "passage": "段落", "answer": "答案"}
PAGE_FIELDS = {**FIELD_LABELS, "num_return_sequences": "生成数量", "temperature": "温度", "max_length": "最大长度",
               "top_k": "Top-K", "top_p": "Top-P", "threshold": "多标签阈值", "label": "原文的标签",
               "labels": "候选标签", "min_similarity": "最低相似度", "max_similarity": "最高相似度",
               "min_length_ratio": "最短长度比", "max_length_ratio": "最长长度比", "min_label_prob": "标签最低概率",
               "seed": "随机种子", "engine": "引擎", "kind": "任务类型", "text_col": "文本列", "label_col": "标签列",
               "label_check": "标签检查", "sheet": "工作表"}
_BATCH_ITEM = re.compile(r"(texts|text_labels)\[(\d+)\]")
ERROR_TITLE = "请求未完成"
UNEXPECTED = "服务器内部错误，请稍后重试；如需排查，请把请求编号 {rid} 告诉管理员（日志里按编号检索）"


def in_page_words(error: DppError) -> str:
    """The message with a leading API field name put as the page shows it: "输入文本", "第 3 条文本"."""
    field, message = error.field, error.message
    if not field or not message.startswith(field):
        return message
    item = _BATCH_ITEM.fullmatch(field)
    if item:
        shown = f"第 {int(item[2]) + 1} 条文本" + ("" if item[1] == "texts" else "的标签")
    else:
        shown = PAGE_FIELDS.get(field)
    return shown + message[len(field):] if shown else message


def in_api_words(error: DppError) -> str:
    return error.message


class SessionWork:
    """The model work each browser session has running, so that closing its tab cancels it."""

    def __init__(self) -> None:
        self._tasks: dict[str, set[asyncio.Task]] = {}

    @contextlib.contextmanager
    def running(self, session: str | None) -> Iterator[None]:
        task = asyncio.current_task()
        if session is None or task is None:
            yield
            return
        self._tasks.setdefault(session, set()).add(task)
        try:
            yield
        finally:
            tasks = self._tasks.get(session, set())
            tasks.discard(task)
            if not tasks:
                self._tasks.pop(session, None)

    async def closed(self, request: gr.Request) -> None:
        """The page's unload event: its tab was closed, so its running model work is cancelled and leaves
        the queue."""
        tasks = self._tasks.pop(request.session_hash, set()) if request.session_hash else set()
        for task in tasks:
            task.cancel()
        if tasks:
            log.info("a page was closed; %d of its requests were cancelled", len(tasks))


def event(handler: Callable[..., Awaitable], service: Service | Jobs, sessions: SessionWork,
          words: Callable[[DppError], str] = in_page_words, **bound) -> Callable[..., Awaitable]:
    """`handler(service, *inputs, **bound)` as a Gradio event, which Gradio calls with the gr.Request first
    (it names the session whose tab may close) and then the inputs; `service` is what the handler works on
    (the file jobs' handlers get the jobs).

    The signature and type hints are the handler's (gr.api derives the Gradio API's from them), less
    `service` and `bound`, with `request` first.
    """
    signature = inspect.signature(handler)
    hints = typing.get_type_hints(handler)
    inputs = [parameter.replace(annotation=hints.get(name, parameter.annotation))
              for name, parameter in list(signature.parameters.items())[1:] if name not in bound]
    request_parameter = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)

    async def run(request: gr.Request, *values):
        rid = uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        try:
            with sessions.running(getattr(request, "session_hash", None)):
                return await handler(service, *values, **bound)
        except DppError as exc:
            raise gr.Error(words(exc), title=ERROR_TITLE, print_exception=False) from exc
        except Exception as exc:  # noqa: BLE001 - anything else is ours: the detail goes to the log only
            log.exception("page event %s failed", handler.__name__)
            raise gr.Error(UNEXPECTED.format(rid=rid), title=ERROR_TITLE, print_exception=False) from exc
        finally:
            request_id.reset(token)

    run.__name__, run.__doc__ = handler.__name__, handler.__doc__
    run.__signature__ = signature.replace(parameters=[request_parameter, *inputs],
                                          return_annotation=hints.get("return", signature.return_annotation))
    run.__annotations__ = {"request": gr.Request, **{p.name: p.annotation for p in inputs},
                           **({"return": hints["return"]} if "return" in hints else {})}
    return run
