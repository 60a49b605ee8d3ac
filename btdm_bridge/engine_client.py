"""A client for the BTDM engine service (``btdm serve``, API v1), in the standard library only.

It runs inside Blender's own Python (no torch, no third-party packages) and in ``btdm animate
--engine``. Every call is blocking; the add-on runs them off Blender's main thread.

    client = EngineClient("http://127.0.0.1:8765", token=None)  # https://...: cafile= for a private CA
    job = client.submit(motion="walk.npz", params={"steps": 20, "seed": 0})
    final = client.wait(job["id"], callback=lambda j: print(j["stage"], j["step"], j["total"]))
    png = client.frame(job["id"], 0)

Errors: every failure is an :class:`EngineError` with the server's ``status``, ``code``,
``message`` and ``field``; a server that cannot be reached gives ``status=None`` and
``code="unreachable"``.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["DEFAULT_URL", "FINAL_STATES", "EngineClient", "EngineError"]

DEFAULT_URL = "http://127.0.0.1:8765"
FINAL_STATES = ("succeeded", "failed", "cancelled")
RETRY_S = 120.0
"""How long :meth:`EngineClient.wait` keeps retrying an engine that does not answer (a restart)."""
RETRY_STATUSES = (None, 502, 503, 504)
"""Failures :meth:`EngineClient.wait` retries: unreachable, and a busy or restarting server or proxy."""
_FILE_FIELDS = ("motion", "skeleton", "posemaps", "appearance", "appearance_iuv")
_FILENAMES = {"motion": "motion.npz", "skeleton": "skeleton.npz", "posemaps": "posemaps.zip",
              "appearance": "appearance.png", "appearance_iuv": "appearance_iuv.png", "views": "views.zip"}


class EngineError(Exception):
    """A failed call: ``status`` (HTTP status, None when unreachable), ``code``, ``message``, ``field``."""

    def __init__(self, status: int | None, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{message} ({code}{'' if status is None else f', HTTP {status}'})")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def _multipart(fields: dict[str, bytes | str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = f"btdm-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        data = value.encode("utf-8") if isinstance(value, str) else value
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data + b"\r\n")
    for name, (filename, data, content_type) in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n")
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _zip_views(views: dict[int, Any]) -> bytes:
    """``{job frame K: PNG path or bytes}`` as the ``views`` zip: members ``<K>.png``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for k, value in views.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise EngineError(None, "bad_request", f"views: {k!r} is not a job frame (an int >= 0)", "views")
            archive.writestr(f"{k:06d}.png", _read_input(f"views[{k}]", value))
    return buf.getvalue()


def _read_input(name: str, value: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    try:
        with open(value, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise EngineError(None, "local_file", f"{name}: cannot read {value}: {exc.strerror or exc}", name) from None


class EngineClient:
    """Talks to one engine service. ``timeout`` (seconds) bounds each connect and each read."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 10.0,
                 cafile: str | os.PathLike[str] | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise EngineError(None, "bad_url", f"engine URL must be http(s)://host:port, got {url!r}", "url")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = float(timeout)
        # https: the system's certificate authorities (SSL_CERT_FILE too), or only ``cafile`` (a self-signed
        # server's certificate, a studio's own CA); the host name is always checked.
        self._context: ssl.SSLContext | None = None
        if cafile is not None:
            try:
                self._context = ssl.create_default_context(cafile=os.fspath(cafile))
            except (OSError, ssl.SSLError) as exc:
                raise EngineError(None, "local_file", f"cafile: cannot read {cafile}: {exc}", "cafile") from None

    # ------------------------------------------------------------------ transport
    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                 timeout: float | None = None, headers: dict[str, str] | None = None) -> Any:
        headers = {"Accept": "application/json", **(headers or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout if timeout is None else timeout,
                                          context=self._context)
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise EngineError(None, "unreachable", f"cannot reach the engine at {self.url}: {reason}") from None

    @staticmethod
    def _error(exc: urllib.error.HTTPError) -> EngineError:
        try:
            raw = exc.read()
        except OSError:
            raw = b""
        try:
            body = json.loads(raw.decode("utf-8"))["error"]
            code, message = str(body.get("code", "error")), str(body.get("message", ""))
            return EngineError(exc.code, code, message, body.get("field"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return EngineError(exc.code, "http_error", f"HTTP {exc.code} {exc.reason}")

    def _read(self, response: Any, path: str) -> bytes:
        """The whole body; a connection that breaks or stalls while it arrives is ``unreachable`` too."""
        try:
            return response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EngineError(None, "unreachable", f"{path}: the engine at {self.url} stopped answering: "
                              f"{exc or type(exc).__name__}") from None

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        with self._request(method, path, **kw) as response:
            data = self._read(response, path)
        try:
            return json.loads(data.decode("utf-8")) if data else None
        except ValueError:
            raise EngineError(response.status, "bad_response", f"{path}: the server did not answer JSON") from None

    def _bytes(self, path: str) -> bytes:
        with self._request("GET", path, timeout=max(self.timeout, 60.0)) as response:
            return self._read(response, path)

    @staticmethod
    def _job_path(job_id: str) -> str:
        if not isinstance(job_id, str) or len(job_id) != 32 or any(c not in "0123456789abcdef" for c in job_id):
            raise EngineError(None, "bad_job_id", f"not a job id: {job_id!r}", "job_id")
        return f"/v1/jobs/{job_id}"

    # ------------------------------------------------------------------ API v1
    def health(self) -> dict[str, Any]:
        """``GET /v1/health`` (no token needed)."""
        return self._json("GET", "/v1/health")

    def limits(self) -> dict[str, Any]:
        """``GET /v1/limits``: each job parameter's default, ``{"min", "max"}`` and choices."""
        return self._json("GET", "/v1/limits")

    def whoami(self) -> dict[str, Any]:
        """``GET /v1/whoami``: this client's token, ``{"client": name, "role": read | submit | admin}``."""
        return self._json("GET", "/v1/whoami")

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: name, preset, resolution, ... of each model."""
        return self._json("GET", "/v1/models")["models"]

    def submit(self, *, motion: Any = None, skeleton: Any = None, posemaps: Any = None, appearance: Any = None,
               appearance_iuv: Any = None, views: dict[int, Any] | None = None, params: dict[str, Any] | None = None,
               idempotency_key: str | None = None, tag: str | None = None,
               priority: int | None = None) -> dict[str, Any]:
        """``POST /v1/jobs``. Each file is a path or bytes; exactly one of motion / skeleton / posemaps (a zip).

        ``views``: further pictures of the person, ``{job frame K: PNG path or bytes}`` (each shows the
        body as frame K does; sent as the ``views`` zip).

        With ``idempotency_key`` (``Idempotency-Key``), sending the same request again (a retry after a
        timeout) answers the job the first one made instead of making a second. ``tag`` labels the job
        (``jobs(tag=)``); ``priority`` (-100..100, default 0): higher runs first.
        """
        given = {"motion": motion, "skeleton": skeleton, "posemaps": posemaps, "appearance": appearance,
                 "appearance_iuv": appearance_iuv, "views": None if not views else _zip_views(views)}
        sources = [name for name in ("motion", "skeleton", "posemaps") if given[name] is not None]
        if len(sources) != 1:
            raise EngineError(None, "bad_request", "give exactly one of motion, skeleton or posemaps", "motion")
        files = {name: (_FILENAMES[name], _read_input(name, value), "application/octet-stream")
                 for name, value in given.items() if value is not None}
        fields = {"params": json.dumps(params or {})}
        if tag is not None:
            fields["tag"] = tag
        if priority is not None:
            fields["priority"] = str(int(priority))
        body, content_type = _multipart(fields, files)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        return self._json("POST", "/v1/jobs", body=body, content_type=content_type, timeout=max(self.timeout, 120.0),
                          headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", self._job_path(job_id))

    def jobs(self, *, state: str | list[str] | None = None, tag: str | None = None, client: str | None = None,
             limit: int | None = None) -> list[dict[str, Any]]:
        """``GET /v1/jobs``: the newest jobs (one page: ``limit``, the server's default 100), filtered by
        ``state`` (one or several), ``tag`` and ``client`` (a token's name) when given."""
        return self.jobs_page(state=state, tag=tag, client=client, limit=limit)["jobs"]

    def jobs_page(self, *, state: str | list[str] | None = None, tag: str | None = None, client: str | None = None,
                  limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """One page of ``GET /v1/jobs``: ``{"jobs": [...], "next_cursor": str | None}``."""
        query: list[tuple[str, str]] = [("state", s) for s in ([state] if isinstance(state, str) else state or [])]
        for name, value in (("tag", tag), ("client", client), ("limit", limit), ("cursor", cursor)):
            if value is not None:
                query.append((name, str(value)))
        suffix = "?" + urllib.parse.urlencode(query) if query else ""
        return self._json("GET", "/v1/jobs" + suffix)

    def iter_jobs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every job matching ``filters`` (as :meth:`jobs_page` takes them), newest first, page after page."""
        cursor = None
        while True:
            page = self.jobs_page(**filters, cursor=cursor)
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """The job's server-sent events, parsed; ends after the event with a final state."""
        response = self._request("GET", self._job_path(job_id) + "/events", timeout=max(self.timeout, 30.0))
        with response:
            event, data = "message", []
            while True:
                try:
                    raw = response.readline()
                except (TimeoutError, ConnectionError, OSError) as exc:
                    raise EngineError(None, "unreachable", f"event stream of job {job_id} broke: {exc}") from None
                if not raw:
                    return
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith(":"):
                    continue
                if line:
                    key, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if key == "event":
                        event = value
                    elif key == "data":
                        data.append(value)
                    continue
                if data and event == "job":
                    job = json.loads("\n".join(data))
                    yield job
                    if job.get("state") in FINAL_STATES:
                        return
                elif event == "deleted":
                    raise EngineError(404, "not_found", f"job {job_id} was deleted", "job_id")
                event, data = "message", []

    def wait(self, job_id: str, callback: Callable[[dict[str, Any]], None] | None = None,
             retry_s: float = RETRY_S) -> dict[str, Any]:
        """Follow the job's events until it ends; the final job.

        A dropped stream is reconnected, and an engine that stops answering (a restart, a network
        hiccup: ``unreachable``, or 503 while it is busy) is retried with backoff, the stream and
        the state polls alike, for up to ``retry_s`` seconds without an answer.
        """
        failing_since: float | None = None
        delay = 0.5
        while True:
            try:
                for job in self.events(job_id):
                    failing_since, delay = None, 0.5
                    if callback is not None:
                        callback(job)
                    if job.get("state") in FINAL_STATES:
                        return job
                job = self.job(job_id)  # the stream ended: the state decides whether to reconnect
                failing_since, delay = None, 0.5
                if job.get("state") in FINAL_STATES:
                    if callback is not None:
                        callback(job)
                    return job
            except EngineError as exc:
                if exc.status not in RETRY_STATUSES:
                    raise
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= retry_s:
                    raise
                time.sleep(delay)
                delay = min(2.0 * delay, 5.0)

    def frame(self, job_id: str, n: int) -> bytes:
        """PNG bytes of generated frame ``n`` (zero-based)."""
        return self._bytes(f"{self._job_path(job_id)}/frames/{int(n)}.png")

    def plate(self, job_id: str, n: int) -> bytes:
        """PNG bytes of RGBA plate ``n`` (jobs with ``has_plates``)."""
        return self._bytes(f"{self._job_path(job_id)}/plates/{int(n)}.png")

    def posemap(self, job_id: str, n: int) -> bytes:
        """PNG bytes of the colour preview of pose map ``n``."""
        return self._bytes(f"{self._job_path(job_id)}/posemaps/{int(n)}.png")

    def video(self, job_id: str) -> bytes:
        """The job's MP4."""
        return self._bytes(f"{self._job_path(job_id)}/video.mp4")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", self._job_path(job_id) + "/cancel", body=b"")

    def retry(self, job_id: str, priority: int | None = None) -> dict[str, Any]:
        """``POST /v1/jobs/{id}/retry``: a failed or cancelled job back in the queue (same id)."""
        suffix = "" if priority is None else f"?priority={int(priority)}"
        return self._json("POST", self._job_path(job_id) + "/retry" + suffix, body=b"")

    def delete(self, job_id: str) -> None:
        with self._request("DELETE", self._job_path(job_id)):
            pass
