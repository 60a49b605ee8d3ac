"""Bearer tokens with roles: who may read, who may submit, who may manage every job.

=========  ====================================================================================
role       may
=========  ====================================================================================
``read``   every ``GET``: health, limits, models, jobs, events, frames, plates, video, ``/metrics``
``submit`` what ``read`` may, submit jobs, and cancel, retry and delete the jobs it submitted
``admin``  everything, on every job
=========  ====================================================================================

``btdm serve --token T`` is an ``admin`` token named ``admin`` (as before: it may do everything);
``--read-token T`` a ``read`` token named ``read``; ``--token-file FILE`` holds one token (the old
format: an ``admin`` token) or one ``NAME ROLE TOKEN`` line per token (``#`` comments, blank lines).
A job records the ``name`` of the token that submitted it (its ``client``), never the token; an
unnamed token would be called ``token-`` and the first 8 hex digits of its SHA-256.

:meth:`Tokens.match` compares the presented token with every token, each in constant time
(``secrets.compare_digest``) and without stopping at the first match, so the time taken says nothing
about which token, or how much of one, was right.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from btdm_engine.service.schemas import CLIENT_NAME_PATTERN

ROLES = ("read", "submit", "admin")
MIN_TOKEN_CHARS = 16


class TokenError(ValueError):
    """A token or token file that cannot be used (the message names the line)."""


@dataclass(frozen=True)
class ApiToken:
    """One token: its ``name`` (what jobs record), ``role`` and the ``secret`` itself (never shown)."""

    name: str
    role: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise TokenError(f"token {self.name}: role {self.role!r} is not one of {', '.join(ROLES)}")
        if not re.match(CLIENT_NAME_PATTERN, self.name):
            raise TokenError(f"token name {self.name[:70]!r}: 1..64 of A-Z a-z 0-9 _ . @ -, starting alphanumeric")
        if len(self.secret) < MIN_TOKEN_CHARS or any(c.isspace() for c in self.secret) or not self.secret.isascii():
            raise TokenError(f"token {self.name}: the token must be at least {MIN_TOKEN_CHARS} characters, ASCII "
                             "without spaces (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def hashed_name(secret: str) -> str:
    """A name for a token nobody named: ``token-`` and 8 hex digits of its SHA-256."""
    return "token-" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:8]


def parse_token_file(text: str) -> list[ApiToken]:
    """A ``--token-file``: one bare token (an ``admin`` token named ``admin``, the old format) or
    ``NAME ROLE TOKEN`` lines; ``#`` starts a comment."""
    lines = [(n, line.split("#", 1)[0].split()) for n, line in enumerate(text.splitlines(), start=1)]
    lines = [(n, fields) for n, fields in lines if fields]
    if len(lines) == 1 and len(lines[0][1]) == 1:
        return [ApiToken("admin", "admin", lines[0][1][0])]
    tokens = []
    for n, fields in lines:
        if len(fields) != 3:
            raise TokenError(f"line {n}: expected NAME ROLE TOKEN (role: {', '.join(ROLES)}), got {len(fields)} "
                             "field(s)")
        try:
            tokens.append(ApiToken(fields[0], fields[1], fields[2]))
        except TokenError as exc:
            raise TokenError(f"line {n}: {exc}") from None
    if not tokens:
        raise TokenError("no token in the file")
    return tokens


class Tokens:
    """The tokens a server accepts; empty: a server without tokens (loopback only, everyone is ``admin``)."""

    def __init__(self, tokens: Iterable[ApiToken] = ()) -> None:
        self.tokens = tuple(tokens)
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise TokenError(f"two tokens are named {next(n for n in names if names.count(n) > 1)}")
        if len({t.secret for t in self.tokens}) != len(self.tokens):
            raise TokenError("the same token is given twice (with two names or roles)")
        self._secrets = [(t, t.secret.encode("utf-8")) for t in self.tokens]

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def match(self, given: str | bytes | None) -> ApiToken | None:
        """The token ``given`` is, or None (each compared in constant time, all of them every time)."""
        if given is None:
            return None
        raw = given if isinstance(given, bytes) else given.encode("utf-8", "surrogateescape")
        found = None
        for token, secret in self._secrets:
            if secrets.compare_digest(raw, secret) and found is None:
                found = token
        return found

    @classmethod
    def of(cls, token: str | None = None, tokens: Iterable[ApiToken] = ()) -> Tokens:
        """``create_app``'s ``token`` (an ``admin`` token named ``admin``) and ``tokens`` together."""
        extra = [] if token is None else [ApiToken("admin", "admin", token)]
        return cls([*extra, *tokens])


def required_role(method: str, path: str) -> str:
    """What a request needs: ``read`` for ``GET``/``HEAD``, ``submit`` for anything that changes a job."""
    return "read" if method in ("GET", "HEAD") else "submit"


__all__ = ["MIN_TOKEN_CHARS", "ROLES", "ApiToken", "TokenError", "Tokens", "hashed_name", "parse_token_file",
           "required_role"]
