"""What the service refuses before, or while, a request body streams in: one ASGI middleware.

:class:`RequestGuard` sits in front of every route and answers, in this order, from the request
line and headers alone (nothing of the body is read):

1. **Host and Origin**, when the server runs without a token (loopback only): the ``Host`` must be
   ``localhost``, ``127.0.0.1`` or ``[::1]`` (with the server's port), so a DNS-rebound name cannot
   reach it; an ``Origin`` other than the server's own, or a browser's ``Sec-Fetch-Site`` other
   than ``same-origin`` / ``none``, is a cross-origin web page: 403. Non-browser clients (the
   add-on, ``btdm animate --engine``, curl) send neither.
2. **The token**, with one: every ``/v1/`` path but ``/v1/health``, and ``/metrics``, needs ``Authorization: Bearer``
   (compared in constant time, :mod:`.auth`): 401 before any upload is read; a ``read`` token on
   anything but ``GET``/``HEAD`` is 403 (a submit from a dashboard's token is refused before its
   upload). (The routers' ``bearer_auth`` and ``require_submit`` dependencies say the same in
   ``/openapi.json``.)
3. **Uploads at once**: at most ``MAX_CONCURRENT_UPLOADS`` ``POST /v1/jobs`` bodies in flight; more
   are 503 with ``Retry-After``.
4. **Sizes while streaming**: a declared ``Content-Length`` over ``MAX_REQUEST_BYTES`` is 413 at
   once; the body is counted as it arrives (413 when it crosses the limit), and a multipart body
   is followed part by part (python-multipart's push parser) so a file over its field's
   ``MAX_UPLOAD_BYTES`` is a 413 naming the field the moment it crosses, not after it is spooled.
5. **Time**: a body that is silent for ``BODY_IDLE_S``, or slower than ``BODY_MIN_BYTES_PER_S``
   after the first ``BODY_DEADLINE_S``, is cut off with 408.

A refusal raised while the body streams surfaces as :class:`~btdm_engine.service.errors.ServiceError`
from ``receive``: FastAPI's form parser re-raises it as the cause of its 400, which the app's
handler answers with this error instead. Whatever the client still sends after the answer is
discarded by uvicorn, not stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from btdm_engine.service import limits
from btdm_engine.service.auth import Tokens, required_role
from btdm_engine.service.errors import PayloadTooLarge, ServiceError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
UPLOAD_PATH = "/v1/jobs"
OPEN_PATHS = ("/v1/health",)
TOKEN_PATHS = ("/metrics",)
"""Paths outside ``/v1/`` that need the token too."""


def split_host(value: str) -> tuple[str, int | None]:
    """``"127.0.0.1:8765"`` -> ``("127.0.0.1", 8765)``; ``"[::1]:80"`` -> ``("[::1]", 80)``; a bad port is -1."""
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name, port = name + "]", rest.removeprefix(":") if rest.startswith(":") else None
    else:
        name, sep, port = value.rpartition(":")
        if not sep:
            name, port = value, None
    if port is None:
        return name.lower(), None
    return name.lower(), int(port) if port.isdigit() and len(port) <= 5 else -1


class _PartSizes:
    """Follows a multipart body as it streams and refuses a part over its field's ``MAX_UPLOAD_BYTES``.

    Only watches: Starlette parses the same bytes for the app. A body this parser cannot follow is
    left to Starlette's own parser to refuse.
    """

    def __init__(self, boundary: bytes) -> None:
        self.name: str | None = None
        self.size = 0
        self.header_field = b""
        self.header_value = b""
        self.error: ServiceError | None = None
        self.parser: MultipartParser | None = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_header_field": self._field,
            "on_header_value": self._value, "on_header_end": self._header_end,
        })

    def _begin(self) -> None:
        self.name, self.size = None, 0

    def _field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def _header_end(self) -> None:
        if self.header_field.lower() == b"content-disposition":
            _, options = parse_options_header(self.header_value)
            name = options.get(b"name")
            self.name = name.decode("latin-1") if name is not None else None
        self.header_field = self.header_value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        limit = limits.MAX_UPLOAD_BYTES.get(self.name or "")
        if limit is not None and self.size > limit and self.error is None:
            self.error = PayloadTooLarge(f"{self.name}: the upload is larger than the {limit // limits.MiB} MiB limit",
                                         field=self.name)

    def feed(self, chunk: bytes) -> None:
        if self.parser is None:
            return
        try:
            self.parser.write(chunk)
        except Exception:  # malformed multipart: Starlette's parser answers it
            self.parser = None
        if self.error is not None:
            raise self.error


class RequestGuard:
    """ASGI middleware; see the module docstring. ``token`` None means the loopback-only mode."""

    def __init__(self, app: Any, *, token: str | None = None, tokens: Tokens | None = None,
                 max_bytes: int | None = None, max_uploads: int | None = None, retry_after_s: int = 10,
                 tls: bool = False) -> None:
        self.app, self.retry_after_s, self.tls = app, retry_after_s, tls
        self.tokens = tokens if tokens is not None else Tokens.of(token)
        self.max_bytes = limits.MAX_REQUEST_BYTES if max_bytes is None else max_bytes
        self.max_uploads = limits.MAX_CONCURRENT_UPLOADS if max_uploads is None else max_uploads
        self.uploads = 0

    # -- checks on the headers
    def _origin_error(self, scope: dict[str, Any], headers: Headers) -> ServiceError | None:
        server_port = (scope.get("server") or (None, None))[1]
        name, port = split_host(headers.get("host", ""))
        if name not in LOOPBACK_NAMES or (port is not None and server_port is not None and port != server_port):
            return ServiceError("Host: this server answers only to localhost, 127.0.0.1 or [::1] with its port "
                                "(it runs without a token)", field="Host", status=403, code="forbidden_host")
        origin = headers.get("origin")
        if origin is not None:
            scheme, _, rest = origin.partition("://")
            o_name, o_port = split_host(rest)
            own_scheme, default_port = ("https", 443) if self.tls else ("http", 80)
            if scheme != own_scheme or o_name not in LOOPBACK_NAMES or (o_port or default_port) != (
                    server_port or default_port):
                return ServiceError(f"Origin: requests from web pages ({origin[:100]}) are refused (the server runs "
                                    "without a token)", field="Origin", status=403, code="cross_origin")
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return ServiceError(f"Sec-Fetch-Site: {site[:40]} requests from web pages are refused (the server runs "
                                "without a token)", field="Origin", status=403, code="cross_origin")
        return None

    def _token_error(self, method: str, path: str, headers: Headers) -> ServiceError | None:
        if not self.tokens or not (path.startswith("/v1/") or path in TOKEN_PATHS) or path in OPEN_PATHS:
            return None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        token = self.tokens.match(given.strip()) if scheme.lower() == "bearer" else None
        if token is None:
            return ServiceError("missing or wrong bearer token (Authorization: Bearer <token>)", status=401,
                                code="unauthorized", headers={"WWW-Authenticate": "Bearer"})
        needed = required_role(method, path)
        if not token.allows(needed):
            return ServiceError(f"the token {token.name} is read-only (role {token.role}); {method} needs a submit or "
                                "admin token", status=403, code="forbidden")
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        error = (self._origin_error(scope, headers) if not self.tokens else None) or \
            self._token_error(scope["method"], scope["path"], headers)
        declared = headers.get("content-length")
        if error is None and declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            error = PayloadTooLarge(f"the request is larger than the {self.max_bytes // limits.MiB} MiB limit")
        upload = scope["method"] == "POST" and scope["path"] == UPLOAD_PATH
        if error is None and upload and self.uploads >= self.max_uploads:
            error = ServiceError(f"{self.max_uploads} uploads are already in progress; retry later", status=503,
                                 code="busy", headers={"Retry-After": str(self.retry_after_s)})
        if error is not None:
            await _answer(error, scope, receive, send)
            return
        if upload:
            self.uploads += 1
        try:
            await self._guarded(scope, receive, send, headers)
        finally:
            if upload:
                self.uploads -= 1

    async def _guarded(self, scope: dict[str, Any], receive: Any, send: Any, headers: Headers) -> None:
        parts = None
        ctype, options = parse_options_header(headers.get("content-type", ""))
        if ctype == b"multipart/form-data" and options.get(b"boundary"):
            parts = _PartSizes(options[b"boundary"])
        t0 = time.monotonic()
        seen, more, started = 0, True, False

        async def guarded_receive() -> dict[str, Any]:
            nonlocal seen, more
            if not more:  # the body is complete: disconnect listeners wait as long as they like
                return await receive()
            wait = min(limits.BODY_IDLE_S,
                       t0 + limits.BODY_DEADLINE_S + seen / limits.BODY_MIN_BYTES_PER_S - time.monotonic())
            try:
                event = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
            except TimeoutError:
                raise ServiceError(f"the request body arrived too slowly ({seen} bytes in "
                                   f"{time.monotonic() - t0:.0f} s); upload it again", status=408,
                                   code="timeout") from None
            if event["type"] == "http.request":
                chunk = event.get("body", b"")
                seen += len(chunk)
                more = event.get("more_body", False)
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"the request is larger than the {self.max_bytes // limits.MiB} MiB limit")
                if parts is not None and chunk:
                    parts.feed(chunk)
            else:
                more = False
            return event

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracked_send)
        except ServiceError as exc:  # raised from guarded_receive outside FastAPI's form parsing
            if started:
                raise
            await _answer(exc, scope, receive, send)


async def _answer(error: ServiceError, scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = {"error": {"code": error.code, "message": error.message, "field": error.field}}
    await JSONResponse(body, status_code=error.status, headers=error.headers or None)(scope, receive, send)


__all__ = ["LOOPBACK_NAMES", "RequestGuard", "split_host"]
