"""The one error format every route answers with, and the middleware that guarantees it.

`{"error": {"code", "message", "field"}, "request_id"}`, with the error's own HTTP status and, where
it says when to come back, a Retry-After header. Unexpected failures answer a generic 500 whose
detail only the log holds.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    BodyTooLarge,
    DppError,
    InvalidParameter,
    MalformedForm,
    MalformedJSON,
    NotFound,
    RequestCancelled,
)
from app.logs import request_id

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ECHO_CHARS = 80  # how much of a wrong value an error message repeats
_TYPE_WORDS = {
    "string_type": "字符串", "int_type": "整数", "float_type": "数字", "list_type": "列表",
    "bool_type": "布尔值", "model_attributes_type": "JSON 对象", "dict_type": "JSON 对象",
    "int_parsing": "整数", "float_parsing": "数字", "bool_parsing": "布尔值",
}
INTERNAL_MESSAGE = "服务器内部错误，请查看日志（按 request_id 检索）"


class UTF8JSONResponse(JSONResponse):
    """JSON with Chinese written as itself, not as \\u escapes."""

    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        # Should a lone surrogate a client sent (JSON allows "\\ud800") reach an answer, it is written as
        # the \\u escape it came as: UTF-8 has no encoding for it, and the answer must not fail.
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


def error_response(error: DppError, headers: dict[str, str] | None = None) -> UTF8JSONResponse:
    headers = {**(headers or {}), **(error.headers or {})}
    if error.retry_after:
        headers["Retry-After"] = str(error.retry_after)
    return UTF8JSONResponse({"error": error.body(), "request_id": request_id.get()}, status_code=error.status,
                            headers=headers or None)


def route_path(scope) -> str:
    """The request's path below --root-path (uvicorn puts the root path in front of every path it passes on)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


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
        if request.headers.get("content-type", "").startswith("multipart/"):
            return error_response(MalformedForm("请求体不是有效的 multipart/form-data"))
        return error_response(MalformedJSON("请求体无法解析为 JSON"))
    error = DppError(str(exc.detail))
    error.status, error.code = exc.status_code, "http_error"
    return error_response(error, exc.headers)


class RequestContext:
    """ASGI middleware: a request id for every log line and response, the arrival time (timeouts
    count from it), the body size limit, and a generic 500 for anything unexpected."""

    def __init__(self, app, max_body_bytes: int, uploads: dict[str, int]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.uploads = uploads  # path -> its own body limit (file uploads)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["arrived"] = time.monotonic()
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

        limit = self.uploads.get(route_path(scope), self.max_body_bytes)
        try:
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await error_response(_too_large(limit))(scope, receive, tagged_send)
                return
            await self.app(scope, _limited(receive, limit), tagged_send)
        except Exception:
            # Answered here rather than by an app-level handler: Starlette runs that one outside this
            # middleware, where the request id (in the log line, the answer and its header) is gone.
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:  # too late for an answer of our own: the server closes the connection
                raise
            await error_response(DppError(INTERNAL_MESSAGE))(scope, receive, tagged_send)
        finally:
            request_id.reset(token)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"请求体超过上限 {limit} 字节")


def _limited(receive, limit: int):
    received = 0

    async def limited_receive():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return limited_receive


def install_error_handling(app: FastAPI, max_body_bytes: int, uploads: dict[str, int] | None = None) -> None:
    """Every error `app` can meet answered in the one format, under the request middleware (`uploads`: paths
    that take a larger body, with their limit)."""
    app.add_exception_handler(DppError, _on_dpp_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_middleware(RequestContext, max_body_bytes=max_body_bytes, uploads=uploads or {})
