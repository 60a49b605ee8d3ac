"""What the endpoints of :mod:`.app` get through ``Depends``: the store, the worker, the model
registry, the server's settings, the queue's admission and the bearer-token check.

:func:`~btdm_engine.service.app.create_app` keeps each on ``app.state``; the ``get_*`` functions
read them from there, so a test swaps one with ``app.dependency_overrides[get_store] = ...``
without building the others. The ``Annotated`` aliases (:data:`StoreDep`, ...) are what the
endpoints declare.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from btdm_engine.service.auth import ApiToken, Tokens
from btdm_engine.service.errors import Forbidden, QueueFull, ServiceError, Unauthorized
from btdm_engine.service.store import JobStore
from btdm_engine.service.worker import ModelRegistry, Worker

__all__ = [
    "Admission",
    "AdmissionDep",
    "Principal",
    "PrincipalDep",
    "RegistryDep",
    "ServiceSettings",
    "SettingsDep",
    "StoreDep",
    "WorkerDep",
    "bearer_auth",
    "get_admission",
    "get_registry",
    "get_settings",
    "get_store",
    "get_worker",
    "known_query",
]


@dataclass(frozen=True)
class ServiceSettings:
    """What ``btdm serve`` was started with, as the endpoints read it (``GET /v1/health``, the token)."""

    token: str | None = None
    max_queued: int = 100
    device: str = "cpu"
    device_name: str = "CPU"
    retry_after_s: int = 10
    worker_started: bool = True
    tokens: tuple[ApiToken, ...] = ()
    """Tokens with roles besides ``token`` (which is an ``admin`` token named ``admin``)."""

    @functools.cached_property
    def auth(self) -> Tokens:
        """Every token the server accepts (empty: a server without tokens)."""
        return Tokens.of(self.token, self.tokens)


@dataclass
class Admission:
    """The queue's door: at most ``max_queued`` jobs wait; more are 429 with ``Retry-After``.

    :meth:`check` answers at once (before the uploads are copied); :meth:`slot` checks again and
    holds the lock while the job row is inserted, so two uploads finishing together cannot both
    take the last place.
    """

    max_queued: int
    retry_after_s: int
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self, store: JobStore) -> None:
        if store.counts()["queued"] >= self.max_queued:
            raise QueueFull(f"{self.max_queued} jobs are already queued; retry later",
                            headers={"Retry-After": str(self.retry_after_s)})

    @contextlib.contextmanager
    def slot(self, store: JobStore) -> Iterator[None]:
        with self._lock:
            self.check(store)
            yield


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_worker(request: Request) -> Worker:
    return request.app.state.worker


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def get_admission(request: Request) -> Admission:
    return request.app.state.admission


StoreDep = Annotated[JobStore, Depends(get_store)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>` when the server has a token")


@dataclass(frozen=True)
class Principal:
    """Who sent a request: the token's ``name`` (None on a server without tokens) and its ``role``."""

    name: str | None
    role: str = "admin"


def bearer_auth(settings: SettingsDep,
                credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """Every endpoint but ``/v1/health`` depends on this: a server started with a token needs it.

    :class:`~btdm_engine.service.guard.RequestGuard` refuses the same requests before their body
    is read; this is the check ``/openapi.json`` shows, and the one a test's overridden
    :func:`get_settings` reaches.
    """
    tokens = settings.auth
    if not tokens:
        return Principal(None)
    found = tokens.match(None if credentials is None else credentials.credentials)
    if found is None:
        raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)",
                           headers={"WWW-Authenticate": "Bearer"})
    return Principal(found.name, found.role)


PrincipalDep = Annotated[Principal, Depends(bearer_auth)]


def require_submit(principal: PrincipalDep) -> Principal:
    """The operations that change jobs depend on this: a ``read`` token is refused (403)."""
    if principal.role not in ("submit", "admin"):
        raise Forbidden(f"the token {principal.name} is read-only (role {principal.role}); this operation needs a "
                        "submit or admin token")
    return principal


def check_owner(principal: Principal, job: dict[str, Any], action: str) -> None:
    """A ``submit`` token manages the jobs it submitted; ``admin`` (and a server without tokens) any job."""
    if principal.role != "admin" and job.get("client") != principal.name:
        raise Forbidden(f"job {job['id']} was submitted by {job.get('client') or 'no token'}; the token "
                        f"{principal.name} (role {principal.role}) may {action} only its own jobs", field="job_id")


_QUERY_NAMES: dict[int, tuple[Any, frozenset[str]]] = {}


def _query_names(route: Any) -> frozenset[str]:
    """The query parameters a route declares, its dependencies' included (kept per route: routes are not hashable)."""
    known = _QUERY_NAMES.get(id(route))
    if known is not None and known[0] is route:
        return known[1]
    names: set[str] = set()
    todo = [getattr(route, "dependant", None)]
    while todo:
        dependant = todo.pop()
        if dependant is not None:
            names.update(param.alias for param in dependant.query_params)
            todo.extend(dependant.dependencies)
    _QUERY_NAMES[id(route)] = (route, frozenset(names))
    return frozenset(names)


def known_query(request: Request) -> None:
    """Every ``/v1`` endpoint depends on this: a query parameter the operation does not declare is a 422
    naming it (``?state=queued`` on a server that ignored it would have listed every job)."""
    allowed = _query_names(request.scope.get("route"))
    for name in request.query_params:
        if name not in allowed:
            takes = f"it takes {', '.join(sorted(allowed))}" if allowed else "it takes none"
            raise ServiceError(f"{name[:64]}: unknown query parameter for {request.method} {request.url.path} "
                               f"({takes})", field=name[:64], status=422, code="unknown_parameter")
