"""API keys, optional: with --api-keys-file or DPP_API_KEY, every route but the probes needs a key.

REST clients and gradio_client send it as `Authorization: Bearer KEY` or `X-API-Key: KEY` (gradio_client moves an
Authorization header aside, so it sends X-API-Key). The page asks for it once at /login, which sets a cookie
holding not the key but an HMAC of it: stateless, so it holds on every replica and across restarts, and it stops
working when its key is removed from the file.

A key is compared as its SHA-256 digest against every configured key's, with `hmac.compare_digest` and without
stopping at the first match, so the time taken says nothing of how much of a key was right, nor which key it was.
Failed attempts are logged with the client's address; a key is never logged, echoed or shown.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote

from app.api_errors import error_response, route_path
from app.errors import Unauthorized

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes: a load balancer or kubelet has no key
LOGIN_PATH, LOGOUT_PATH = "/login", "/logout"
COOKIE = "dpp_session"
SESSION_CONTEXT = b"dpp page session v1"
COOKIE_MAX_AGE_S = 30 * 86400
LOGIN_FORM_BYTES = 8192
HEADER_KEY = b"x-api-key"
# Where the page's own requests go (Gradio's routes, its assets); a browser opening anything else unkeyed is
# sent to the login form, every other client gets the 401.
PAGE_PREFIXES = ("/gradio_api/", "/assets/", "/static/", "/theme.css", "/favicon.ico", "/manifest.json")


class KeysError(ValueError):
    """The keys file cannot be used; the server does not start."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _session(key: str) -> str:
    """A page session's cookie value for `key`: proves the key was typed, without being it."""
    return hmac.new(key.encode("utf-8", "surrogatepass"), SESSION_CONTEXT, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ApiKeys:
    digests: tuple[bytes, ...]
    sessions: tuple[bytes, ...]  # the cookie value of each key's page session

    @classmethod
    def of(cls, keys: list[str]) -> "ApiKeys":
        return cls(tuple(_digest(key) for key in keys), tuple(_session(key).encode() for key in keys))

    def index_of(self, presented: str) -> int | None:
        """Which key `presented` is (None: none), in time that depends on neither how much of it is right nor
        which key it is."""
        return _find(_digest(presented), self.digests)

    def accepts(self, presented: str) -> bool:
        return self.index_of(presented) is not None

    def session_index(self, cookie: bytes) -> int | None:
        """Which key a page session's cookie was made from (None: none, or a key since removed)."""
        return _find(cookie, self.sessions)


def _find(value: bytes, known: tuple[bytes, ...]) -> int | None:
    found = None
    for index, candidate in enumerate(known):  # every one, always: no early exit
        if hmac.compare_digest(value, candidate):
            found = index
    return found


def load_keys(keys_file: Path | None, key: str) -> ApiKeys | None:
    """The keys of the file (one per line; blank lines and # comments skipped) and the single key; None when
    neither is set (the service is open)."""
    keys = [key.strip()] if key.strip() else []
    if keys and not (keys[0].isascii() and keys[0].isprintable()):
        raise KeysError("DPP_API_KEY: a key is one word of printable ASCII characters, as HTTP headers carry")
    if keys_file is not None:
        try:
            lines = keys_file.read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeysError(f"cannot read API keys file {keys_file}: {getattr(exc, 'strerror', None) or exc}") from None
        for number, line in enumerate(lines, 1):
            written = line.split("#", 1)[0].strip()
            if not written:
                continue
            if not (written.isascii() and written.isprintable()) or any(char.isspace() for char in written):
                raise KeysError(f"{keys_file}:{number}: a key is one word of printable ASCII characters, as HTTP "
                                "headers carry (the key itself is not shown)")
            keys.append(written)
        if not keys:
            raise KeysError(f"API keys file {keys_file} holds no key: the service would refuse everyone")
    return ApiKeys.of(list(dict.fromkeys(keys))) if keys else None


def _headers(scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", [])}


def _presented(headers: dict[bytes, bytes]) -> str | None:
    """The key a client sent, by either header; None when it sent none."""
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if HEADER_KEY in headers:
        return headers[HEADER_KEY].decode("latin-1").strip()
    return None


def _cookie(headers: dict[bytes, bytes]) -> bytes | None:
    for part in headers.get(b"cookie", b"").split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == COOKIE.encode():
            return value
    return None


def client_address(scope) -> str:
    """The client's address: the peer's, or the one a trusted proxy forwarded (uvicorn has put it in the scope)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


def key_index(scope, keys: ApiKeys) -> int | None:
    """Which key the request carries, by a header or the page's session cookie (None: none valid); worked out
    once per request (the rate limit and the key check both ask)."""
    state = scope.setdefault("state", {})
    if "dpp_key" not in state:
        headers = _headers(scope)
        presented, cookie = _presented(headers), _cookie(headers)
        if presented is not None:
            state["dpp_key"] = keys.index_of(presented)
        else:
            state["dpp_key"] = keys.session_index(cookie) if cookie is not None else None
    return state["dpp_key"]


def _wants_page(scope, headers: dict[bytes, bytes]) -> bool:
    """A browser opening the page (not an API client, not the page's own requests)."""
    path = route_path(scope)
    return (scope.get("method") == "GET" and b"text/html" in headers.get(b"accept", b"")
            and not path.startswith(PAGE_PREFIXES))


def _safe_next(value: str) -> str:
    """Where to go after logging in: a path of this server only (never //host or a scheme)."""
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"


_FORM = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>dpp · 登录</title>
<style>
body{{font-family:system-ui,-apple-system,"PingFang SC","Microsoft YaHei",sans-serif;background:#f6f7f9;margin:0}}
main{{max-width:380px;margin:12vh auto;background:#fff;padding:28px 32px;border-radius:10px;
box-shadow:0 1px 6px rgba(0,0,0,.08)}}
h1{{font-size:20px;margin:0 0 6px}} p{{color:#555;font-size:14px;line-height:1.6}}
label{{display:block;font-size:14px;margin:16px 0 6px}}
input{{width:100%;box-sizing:border-box;padding:9px 10px;font-size:15px;border:1px solid #ccd;border-radius:6px}}
button{{margin-top:18px;width:100%;padding:10px;font-size:15px;border:0;border-radius:6px;background:#3b6ef5;
color:#fff;cursor:pointer}}
.error{{color:#c62828;background:#fdecea;padding:8px 10px;border-radius:6px;font-size:14px}}
</style></head>
<body><main>
<h1>dpp 中文数据增强</h1>
<p>此服务需要 API 密钥。请输入管理员发给您的密钥；登录后本浏览器 30 天内无需再次输入。</p>
{error}
<form method="post" action="{action}">
<input type="hidden" name="next" value="{next}">
<label for="key">API 密钥</label>
<input id="key" name="key" type="password" autocomplete="current-password" autofocus required>
<button type="submit">登录</button>
</form>
</main></body></html>
"""


class RequireKey:
    """ASGI middleware: every request but the probes and the login form carries a valid key or page session."""

    def __init__(self, app, keys: ApiKeys, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path in self.open_paths:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and path == LOGIN_PATH:
            await self._login(scope, receive, send)
            return
        if scope["type"] == "http" and path == LOGOUT_PATH:
            await self._logout(scope, send)
            return
        if key_index(scope, self.keys) is not None:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if _presented(headers) is not None:
            log.warning("refused %s %s from %s: wrong API key", scope.get("method", "WS"), path, client_address(scope))
            await self._refuse(scope, receive, send, "API 密钥不正确")
            return
        if _cookie(headers) is not None:
            log.warning("refused %s %s from %s: the page session's key is no longer valid", scope.get("method", "WS"),
                        path, client_address(scope))
        if scope["type"] == "http" and _wants_page(scope, headers):
            await self._redirect(send, f"{_root(scope)}{LOGIN_PATH}?next={quote(path, safe='/')}")
            return
        log.info("refused %s %s from %s: no API key", scope.get("method", "WS"), path, client_address(scope))
        await self._refuse(scope, receive, send, "需要 API 密钥：请求头 Authorization: Bearer <密钥> 或 X-API-Key: <密钥>")

    async def _refuse(self, scope, receive, send, message: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await error_response(Unauthorized(message))(scope, receive, send)

    async def _login(self, scope, receive, send) -> None:
        if scope.get("method") == "POST":
            form = await _form(receive)
            key, target = form.get("key", ""), _safe_next(form.get("next", "/"))
            if key and self.keys.accepts(key):
                log.info("page login from %s", client_address(scope))
                secure = "; Secure" if scope.get("scheme") == "https" else ""
                cookie = (f"{COOKIE}={_session(key)}; Path={_root(scope) or '/'}; Max-Age={COOKIE_MAX_AGE_S}; "
                          f"HttpOnly; SameSite=Lax{secure}")
                await self._redirect(send, _root(scope) + target, cookie)
                return
            log.warning("refused page login from %s: wrong API key", client_address(scope))
            await _html(send, 401, _page(_root(scope), target, "API 密钥不正确，请重新输入。"))
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        await _html(send, 200, _page(_root(scope), _safe_next(query.get("next", ["/"])[0]), ""))

    @staticmethod
    async def _logout(scope, send) -> None:
        await RequireKey._redirect(send, _root(scope) + LOGIN_PATH,
                                   f"{COOKIE}=; Path={_root(scope) or '/'}; Max-Age=0; HttpOnly; SameSite=Lax")

    @staticmethod
    async def _redirect(send, location: str, cookie: str | None = None) -> None:
        headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0"),
                   (b"cache-control", b"no-store")]
        if cookie:
            headers.append((b"set-cookie", cookie.encode("latin-1")))
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _root(scope) -> str:
    """The --root-path the server runs under ("" at the top): links and cookies go under it."""
    return scope.get("root_path", "")


def _page(root: str, target: str, error: str) -> bytes:
    return _FORM.format(action=html.escape(root + LOGIN_PATH, quote=True), next=html.escape(target, quote=True),
                        error=f'<p class="error">{html.escape(error)}</p>' if error else "").encode("utf-8")


async def _html(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


async def _form(receive) -> dict[str, str]:
    """The login form's fields (application/x-www-form-urlencoded), read up to LOGIN_FORM_BYTES."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > LOGIN_FORM_BYTES or not message.get("more_body"):
            break
    fields = parse_qs(body[:LOGIN_FORM_BYTES].decode("utf-8", "replace"))
    return {name: values[0] for name, values in fields.items()}
