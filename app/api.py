"""REST routes, their request models, and the one error format every route answers with."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    BodyTooLarge,
    DppError,
    InvalidParameter,
    MalformedJSON,
    MethodNotAllowed,
    NotFound,
    RequestCancelled,
)
from app.logs import request_id
from app.params import GenerationParams, params_from, task_params
from app.service import Service

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ECHO_CHARS = 80  # how much of a wrong value an error message repeats
_TYPE_WORDS = {
    "string_type": "字符串", "int_type": "整数", "float_type": "数字", "list_type": "列表",
    "bool_type": "布尔值", "model_attributes_type": "JSON 对象", "dict_type": "JSON 对象",
}


class UTF8JSONResponse(JSONResponse):
    """JSON with Chinese written as itself, not as \\u escapes."""

    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        # Should a lone surrogate a client sent (JSON allows "\\ud800") reach an answer, it is written as
        # the \\u escape it came as: UTF-8 has no encoding for it, and the answer must not fail.
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


class _GenerationFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_return_sequences: StrictInt | None = None
    max_length: StrictInt | None = None
    temperature: StrictFloat | None = None
    top_k: StrictInt | None = None
    top_p: StrictFloat | None = None
    seed: StrictInt | None = None
    engine: StrictStr | None = None

    def params(self) -> GenerationParams:
        return params_from(self.model_dump())


class AugmentRequest(_GenerationFields):
    text: StrictStr


class AugmentBatchRequest(_GenerationFields):
    texts: list[StrictStr]


class _ClassifyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Checked by the service, which names the offending label (a list, or one separated string).
    labels: Any
    mode: StrictStr = "constrained"
    multi_label: StrictBool = False
    threshold: Any = None
    engine: StrictStr | None = None

    def options(self) -> dict:
        return {"mode": self.mode, "multi_label": self.multi_label, "threshold": self.threshold,
                "engine": self.engine}


class ClassifyRequest(_ClassifyOptions):
    text: StrictStr


class ClassifyBatchRequest(_ClassifyOptions):
    texts: list[StrictStr]


class GenerateRequest(_GenerationFields):
    # The task's own fields (text, passage, answer, ...) come as extra keys; the service checks them.
    model_config = ConfigDict(extra="allow")

    task: StrictStr


# A body sent with no Content-Type at all is read as JSON too.
router = APIRouter(strict_content_type=False)


def _service(request: Request) -> Service:
    return request.app.state.service


T = TypeVar("T")
DISCONNECT_POLL_S = 0.25


async def _until_done_or_gone(request: Request, work: Callable[[threading.Event], T]) -> T:
    """Run `work(cancelled)` in a worker thread; if the client hangs up first, set `cancelled`,
    so that its place in the model's queue is freed."""
    cancelled = threading.Event()
    task = asyncio.ensure_future(run_in_threadpool(work, cancelled))
    while not task.done():
        await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if not task.done() and await request.is_disconnected():
            cancelled.set()
            break
    return await task


def _served_by(result: Any) -> dict:
    """The fields every answer ends with: the engine that served it, the request id, the time taken."""
    return {"engine": result.engine, "request_id": request_id.get(), "elapsed_ms": round(result.elapsed_ms, 1)}


@router.post("/augment")
async def augment(body: AugmentRequest, request: Request) -> dict:
    result = await _until_done_or_gone(request, lambda cancelled: _service(request).augment(
        [body.text], body.params(), engine=body.engine, field_name="text", cancelled=cancelled))
    variants = result.variants[0]
    return {
        "original": body.text,
        "augmented_texts": variants,
        "augmented": variants,
        **_served_by(result),
    }


@router.post("/augment_batch")
async def augment_batch(body: AugmentBatchRequest, request: Request) -> dict:
    result = await _until_done_or_gone(request, lambda cancelled: _service(request).augment(
        body.texts, body.params(), engine=body.engine, field_name="texts", cancelled=cancelled))
    return {
        "results": [
            {"original": original, "augmented_texts": variants}
            for original, variants in zip(result.originals, result.variants)
        ],
        "augmented_texts": [text for variants in result.variants for text in variants],
        **_served_by(result),
    }


@router.post("/classify")
async def classify(body: ClassifyRequest, request: Request) -> dict:
    result = await _until_done_or_gone(request, lambda cancelled: _service(request).classify(
        [body.text], body.labels, field_name="text", cancelled=cancelled, **body.options()))
    return {**result.items[0].as_dict(), **_served_by(result)}


@router.post("/classify_batch")
async def classify_batch(body: ClassifyBatchRequest, request: Request) -> dict:
    result = await _until_done_or_gone(request, lambda cancelled: _service(request).classify(
        body.texts, body.labels, field_name="texts", cancelled=cancelled, **body.options()))
    return {
        "results": [{"text": text, **item.as_dict()} for text, item in zip(result.texts, result.items)],
        "labels": result.labels,
        **_served_by(result),
    }


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request) -> dict:
    params = task_params(body.model_dump())
    result = await _until_done_or_gone(request, lambda cancelled: _service(request).run_task(
        body.task, body.model_extra or {}, params, engine=body.engine, cancelled=cancelled))
    return {
        "task": result.task,
        "prompt": result.prompt,
        "outputs": result.outputs,
        "scores": result.scores,
        **_served_by(result),
    }


@router.get("/tasks")
def tasks(request: Request) -> dict:
    return {"tasks": [task.describe() for task in _service(request).tasks()]}


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> UTF8JSONResponse:
    readiness = _service(request).readiness()
    if readiness.ready:
        return UTF8JSONResponse({"status": "ready", **readiness.info})
    return UTF8JSONResponse({"status": readiness.status, "reason": readiness.reason}, status_code=503)


def error_response(error: DppError) -> UTF8JSONResponse:
    retry_after = getattr(error, "retry_after", None)
    return UTF8JSONResponse({"error": error.body(), "request_id": request_id.get()}, status_code=error.status,
                            headers={"Retry-After": str(retry_after)} if retry_after else None)


def _field_name(loc: tuple) -> str | None:
    parts = [p for p in loc if p != "body"]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None


def _from_validation(exc: RequestValidationError) -> DppError:
    first = exc.errors()[0]
    kind, field = first["type"], _field_name(tuple(first["loc"]))
    if kind == "json_invalid":
        return MalformedJSON(f"请求体不是合法的 JSON：{first.get('ctx', {}).get('error', first['msg'])}")
    if kind == "string_unicode":  # a field's name with a lone surrogate in it (values reach the service)
        return InvalidParameter(f"字段名 {repr(first.get('input'))[:_ECHO_CHARS]} 含有不成对的代理码位，"
                                "不是有效的 Unicode 字符（请检查 JSON 里的 \\u 转义）", field=field)
    if field is None:
        if isinstance(first.get("input"), bytes):
            return MalformedJSON("请求体需要是 JSON，并带上请求头 Content-Type: application/json")
        if kind == "missing":
            return MalformedJSON("请求体为空：需要一个 JSON 对象")
        return InvalidParameter("请求体必须是一个 JSON 对象")
    if kind == "missing":
        return InvalidParameter(f"缺少字段 {field}", field=field)
    if kind == "extra_forbidden":
        return InvalidParameter(f"未知字段 {field}", field=field)
    if kind in _TYPE_WORDS:
        received = repr(first.get("input"))[:_ECHO_CHARS]
        return InvalidParameter(f"{field} 应为{_TYPE_WORDS[kind]}（收到 {received}）", field=field)
    return InvalidParameter(f"{field} 无效：{first['msg']}", field=field)


async def _on_dpp_error(request: Request, exc: DppError) -> UTF8JSONResponse:
    if isinstance(exc, RequestCancelled):
        log.info("%s %s: the client hung up; its request left the queue", request.method, request.url.path)
    elif exc.status >= 500:
        level = logging.ERROR if exc.status == 500 else logging.WARNING
        log.log(level, "%s %s answered %d (%s): %s", request.method, request.url.path, exc.status,
                type(exc).__name__, exc.message)
    return error_response(exc)


async def _on_validation_error(request: Request, exc: RequestValidationError) -> UTF8JSONResponse:
    return error_response(_from_validation(exc))


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> UTF8JSONResponse:
    # FastAPI wraps errors raised while it reads the body (our size limit among them).
    if isinstance(exc.__cause__, DppError):
        return error_response(exc.__cause__)
    if exc.status_code == 404:
        return error_response(NotFound(f"没有 {request.url.path} 这个接口"))
    if exc.status_code == 400:
        return error_response(MalformedJSON("请求体无法解析为 JSON"))
    error = DppError(str(exc.detail))
    error.status, error.code = exc.status_code, "http_error"
    return error_response(error)


class RequestContext:
    """ASGI middleware: a request id for every log line and response, and the body size limit."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        started = False

        async def tagged_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                await error_response(self._too_large())(scope, receive, tagged_send)
                return
            await self.app(scope, self._limited(receive), tagged_send)
        except Exception:
            # Answered here rather than by an app-level handler: Starlette runs that one outside this
            # middleware, where the request id (in the log line, the answer and its header) is gone.
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:  # too late for an answer of our own: the server closes the connection
                raise
            await error_response(DppError("服务器内部错误，请查看日志（按 request_id 检索）"))(
                scope, receive, tagged_send)
        finally:
            request_id.reset(token)

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"请求体超过上限 {self.max_body_bytes} 字节")

    def _limited(self, receive):
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
            return message

        return limited_receive


def _method_not_allowed(request: Request) -> None:
    raise MethodNotAllowed(f"{request.url.path} 不支持 {request.method} 方法")


def install_index(app: FastAPI) -> None:
    """Answer GET / with the service's REST routes, where a server without the page (--no-ui) would
    otherwise give a bare 404 to whoever opens it in a browser or probes it."""
    index = {
        "service": "dpp",
        "page": "off (--no-ui)",
        "message": "此服务只提供 REST API（以 --no-ui 启动）：没有网页和 Gradio API。",
        "routes": [{"method": method, "path": route.path}
                   for route in router.routes for method in sorted(route.methods)],
        "schema": "/openapi.json",
    }
    app.add_api_route("/", lambda: index, methods=["GET"], include_in_schema=False)


def install(app: FastAPI, max_body_bytes: int) -> None:
    """Add the routes, the error handlers and the request middleware to `app`."""
    app.include_router(router)
    # The page is mounted at "/", which would answer a wrong method on an API path with its 404.
    for route in router.routes:
        others = sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - route.methods)
        app.add_api_route(route.path, _method_not_allowed, methods=others, include_in_schema=False)
    app.add_exception_handler(DppError, _on_dpp_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_middleware(RequestContext, max_body_bytes=max_body_bytes)
