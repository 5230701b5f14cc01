"""REST routes and their request models; every route awaits the service on the event loop.

A waiting request holds no thread: it awaits the service, and a second awaitable fires when its
client hangs up, which cancels the work and frees its place in the model's queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, PlainValidator, StrictBool, StrictFloat, StrictStr, WithJsonSchema
from pydantic_core import PydanticCustomError

from app import api_jobs
from app.api_errors import UTF8JSONResponse, install_error_handling
from app.auth import OPEN_PATHS, ApiKeys, RequireKey
from app.errors import MethodNotAllowed, RequestCancelled
from app.gate import GATE_FIELDS, GateParams
from app.limits import RateLimit
from app.logs import request_id
from app.metrics import METRICS_PATH, CountRequests, Metrics
from app.params import GenerationParams, params_from, task_params
from app.service import Service
from app.settings import Settings

T = TypeVar("T")
# Methods a route does not serve are answered 405 with an Allow header, not the page's 404.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
# Room for a multipart upload's form fields and boundaries on top of its file.
UPLOAD_FORM_BYTES = 1 << 20


def _number(value: object) -> int | float:
    """A JSON number for an integer field: 4.0 is the integer 4 (JSON has one number type), and the params
    refuse 4.5 naming the field; anything else is refused here, as a wrong type."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


Whole = Annotated[Any, PlainValidator(_number), WithJsonSchema({"type": "integer"})]


class _GenerationFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_return_sequences: Whole | None = None
    max_length: Whole | None = None
    temperature: StrictFloat | None = None
    top_k: Whole | None = None
    top_p: StrictFloat | None = None
    seed: Whole | None = None
    engine: StrictStr | None = None

    def params(self) -> GenerationParams:
        return params_from(self.model_dump())


class _QualityFields(_GenerationFields):
    """The quality gate's thresholds (None: the server's setting) and the label check's labels."""

    quality: StrictStr | None = None
    min_similarity: StrictFloat | None = None
    max_similarity: StrictFloat | None = None
    min_length_ratio: StrictFloat | None = None
    max_length_ratio: StrictFloat | None = None
    min_label_prob: StrictFloat | None = None
    return_rejected: StrictBool | None = None
    number_forms: StrictBool | None = None  # a generation parameter, for augmenting only
    # Checked by the service, which names the offending label (a list, or one separated string).
    labels: Any = None

    def quality_params(self, service: Service) -> GateParams:
        return service.gate_defaults.with_sent(self.model_dump(include=set(GATE_FIELDS)))


class AugmentRequest(_QualityFields):
    text: StrictStr
    label: StrictStr | None = None  # the text's own label, for the label check


class AugmentBatchRequest(_QualityFields):
    texts: list[StrictStr]
    text_labels: list[StrictStr | None] | None = None  # each text's own label, for the label check


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


def _arrived(request: Request) -> float | None:
    """When the request reached the server (set by the request middleware): its timeout counts from then."""
    return getattr(request.state, "arrived", None)


async def _hang_up(request: Request) -> None:
    """Return when the client closes its connection: the server's receive() says so once the body is read."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _until_done_or_gone(request: Request, work: Awaitable[T]) -> T:
    """Await `work`; should the client hang up first, cancel it (its place in the queue is freed at once)."""
    answer = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_hang_up(request))
    try:
        done, _ = await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not answer.done():  # its client went, or this route itself is being cancelled
            answer.cancel()
    if answer in done:
        return answer.result()
    with contextlib.suppress(asyncio.CancelledError):
        await answer  # let it leave the queue and release its admission before the answer goes out
    raise RequestCancelled("客户端已断开")


def _served_by(result: Any) -> dict:
    """The fields every answer ends with: the engine that served it, the request id, the time taken."""
    return {"engine": result.engine, "request_id": request_id.get(), "elapsed_ms": round(result.elapsed_ms, 1)}


@router.post("/augment")
async def augment(body: AugmentRequest, request: Request) -> dict:
    service = _service(request)
    quality = body.quality_params(service)
    result = await _until_done_or_gone(request, service.augment(
        [body.text], body.params(), engine=body.engine, field_name="text", arrived=_arrived(request),
        quality=quality, labels=body.labels, text_labels=None if body.label is None else [body.label]))
    variants = result.variants[0]
    return {
        "original": body.text,
        "augmented_texts": variants,
        "augmented": variants,
        **result.outcomes[0].report(quality.return_rejected),
        **_served_by(result),
    }


@router.post("/augment_batch")
async def augment_batch(body: AugmentBatchRequest, request: Request) -> dict:
    service = _service(request)
    quality = body.quality_params(service)
    result = await _until_done_or_gone(request, service.augment(
        body.texts, body.params(), engine=body.engine, field_name="texts", arrived=_arrived(request),
        quality=quality, labels=body.labels, text_labels=body.text_labels))
    return {
        "results": [
            {"original": original, "augmented_texts": outcome.texts, **outcome.report(quality.return_rejected)}
            for original, outcome in zip(result.originals, result.outcomes)
        ],
        "augmented_texts": [text for variants in result.variants for text in variants],
        "dropped": result.dropped(),
        **_served_by(result),
    }


@router.post("/classify")
async def classify(body: ClassifyRequest, request: Request) -> dict:
    result = await _until_done_or_gone(request, _service(request).classify(
        [body.text], body.labels, field_name="text", arrived=_arrived(request), **body.options()))
    return {**result.items[0].as_dict(), **_served_by(result)}


@router.post("/classify_batch")
async def classify_batch(body: ClassifyBatchRequest, request: Request) -> dict:
    result = await _until_done_or_gone(request, _service(request).classify(
        body.texts, body.labels, field_name="texts", arrived=_arrived(request), **body.options()))
    return {
        "results": [{"text": text, **item.as_dict()} for text, item in zip(result.texts, result.items)],
        "labels": result.labels,
        **_served_by(result),
    }


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request) -> dict:
    params = task_params(body.model_dump())
    result = await _until_done_or_gone(request, _service(request).run_task(
        body.task, body.model_extra or {}, params, engine=body.engine, arrived=_arrived(request)))
    return {
        "task": result.task,
        "prompt": result.prompt,
        "outputs": result.outputs,
        "scores": result.scores,
        **_served_by(result),
    }


# Probes and listings are answered on the event loop, never behind a thread pool or the model's queue.
@router.get("/tasks")
async def tasks(request: Request) -> dict:
    return {"tasks": [task.describe() for task in _service(request).tasks()]}


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> UTF8JSONResponse:
    readiness = _service(request).readiness()
    if readiness.ready:
        return UTF8JSONResponse({"status": "ready", **readiness.info})
    return UTF8JSONResponse({"status": readiness.status, "reason": readiness.reason}, status_code=503)


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

    async def show_index() -> dict:
        return index

    app.add_api_route("/", show_index, methods=["GET"], include_in_schema=False)


def install(app: FastAPI, settings: Settings, metrics: Metrics, page_uploads: tuple[str, ...] = (),
            keys: ApiKeys | None = None) -> None:
    """Add the routes (the file jobs' and /metrics among them), the error handling and the request middleware to
    `app`; `page_uploads`: the page's upload routes, which take a job's file too; `keys`: the API keys every
    request but the probes must carry (None: open)."""
    # Added before the request context, which then wraps them (the last added is the outermost): the rate limit
    # sees every request, refused keys too, and its 429 and the key check's 401 carry the request id.
    if keys is not None:
        app.add_middleware(RequireKey, keys=keys,
                           open_paths=(OPEN_PATHS | {METRICS_PATH}) if settings.metrics_open else OPEN_PATHS)
    if settings.rate_limit:
        app.add_middleware(RateLimit, rate=settings.rate_limit, burst=settings.rate_burst, keys=keys)
    app.include_router(router)
    app.include_router(api_jobs.router)
    # The page is mounted at "/", which would answer a wrong method on an API path with its 404.
    methods: dict[str, set[str]] = {}
    for route in (*router.routes, *api_jobs.router.routes):
        methods.setdefault(route.path, set()).update(route.methods)
    for path, served in methods.items():
        allowed = sorted(served)

        async def method_not_allowed(request: Request, allowed=allowed) -> None:
            raise MethodNotAllowed(f"{request.url.path} 不支持 {request.method} 方法（可用：{', '.join(allowed)}）",
                                   allow=allowed)

        app.add_api_route(path, method_not_allowed, methods=sorted(HTTP_METHODS - served), include_in_schema=False)
    # A file may be as large as --max-file-bytes, plus its form fields; every other body is JSON.
    upload_limit = settings.max_file_bytes + UPLOAD_FORM_BYTES
    install_error_handling(app, settings.max_body_bytes, uploads=dict.fromkeys(("/jobs", *page_uploads), upload_limit))

    async def show_metrics() -> Response:
        body, media_type = metrics.render()
        return Response(body, media_type=media_type)

    app.add_api_route(METRICS_PATH, show_metrics, methods=["GET"], include_in_schema=False)
    # Outermost: every answer counts, the error format's and the key check's too.
    app.add_middleware(CountRequests, metrics=metrics, routes=[*router.routes, *api_jobs.router.routes])
