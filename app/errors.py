"""Error types: each carries its HTTP status and a stable code; one handler renders them."""

from __future__ import annotations


class DppError(Exception):
    """Base error; `message` is shown to users as is, so it never holds a trace."""

    status = 500
    code = "internal"
    retry_after: int | None = None  # seconds, sent as Retry-After where set
    headers: dict[str, str] | None = None  # sent with the answer

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict:
        return {"code": self.code, "message": self.message, "field": self.field}


class InvalidParameter(DppError):
    status, code = 422, "invalid_parameter"


class TextEmpty(DppError):
    status, code = 422, "text_empty"


class TextTooLong(DppError):
    status, code = 422, "text_too_long"


class BatchTooLarge(DppError):
    status, code = 422, "batch_too_large"


class LabelsInvalid(DppError):
    status, code = 422, "labels_invalid"


class WorkTooLarge(DppError):
    """texts x variants x max_length is over the per-request budget (--max-request-tokens)."""

    status, code = 422, "work_too_large"


class EngineUnavailable(DppError):
    status, code = 422, "engine_unavailable"


class MalformedJSON(DppError):
    status, code = 400, "malformed_json"


class MalformedForm(DppError):
    status, code = 400, "malformed_form"


class BodyTooLarge(DppError):
    status, code = 413, "body_too_large"


class NotFound(DppError):
    status, code = 404, "not_found"


class Unauthorized(DppError):
    status, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="dpp"'}


class MethodNotAllowed(DppError):
    status, code = 405, "method_not_allowed"

    def __init__(self, message: str, *, allow: list[str]) -> None:
        super().__init__(message)
        self.headers = {"Allow": ", ".join(allow)}


class NotReady(DppError):
    status, code = 503, "not_ready"


class NeedsMT5(DppError):
    """The serving engine cannot score or follow prompts: classification and the card's tasks need mT5."""

    status, code = 503, "needs_mt5"


class Overloaded(DppError):
    """The queue for the model is full; the client should come back after `retry_after` seconds."""

    status, code = 503, "overloaded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(Overloaded):
    """A client sent more requests than --rate-limit allows it; it may come back after `retry_after` seconds."""

    status, code = 429, "rate_limited"


class Draining(Overloaded):
    """The server is shutting down (SIGTERM): it finishes what it accepted and takes nothing new."""

    code = "draining"


class RequestCancelled(DppError):
    """The client hung up; nobody reads this answer (499, as nginx logs it)."""

    status, code = 499, "cancelled"


class RequestTimeout(DppError):
    status, code = 504, "timeout"


class ModelUnavailable(DppError):
    """The model directory is missing, incomplete, corrupt or of another architecture."""

    status, code = 503, "model_unavailable"


class StoreUnavailable(DppError):
    """The job store cannot be read or written (the server's data directory): the operator's to fix."""

    status, code = 503, "store_unavailable"


class EngineContractError(DppError):
    """An engine broke the protocol: a bug on our side, never the client's."""

    status, code = 500, "internal"

    def __init__(self, engine: str, expected: int, got: int) -> None:
        super().__init__(f"engine {engine} returned {got} outputs for {expected} prompts")
