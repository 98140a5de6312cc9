"""Who is calling: API keys for apps, a signed cookie for browsers, and same-origin checks.

* Calling apps send ``Authorization: Bearer <key>`` or ``X-Api-Key: <key>`` (``API_KEYS``, several
  at once for rotation). Keys are kept only as SHA-256 digests, computed at start-up, and a
  presented key is compared with every one of them by ``hmac.compare_digest``, so neither the
  time taken nor a log line says anything about the keys. Only a caller with a valid key may name
  a listener (``X-Client-Id``, ``client_id`` in an event): without keys configured anyone could
  read, erase or poison the session of any listener whose id they knew.
* Browsers are identified by the ``client_id`` cookie, ``<id>.<HMAC-SHA256(COOKIE_SECRET, id)>``,
  HttpOnly, SameSite=Lax, Secure over HTTPS. A forged or unsigned cookie is a new listener.
* A state change made with that cookie (an event, a like from the form, clearing the session)
  must come from this site: a cross-site ``Origin`` (or Fetch Metadata saying cross-site) is a 403.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Final, Iterable
from urllib.parse import urlsplit

from litestar import Request

from musicrec.service.errors import Forbidden
from musicrec.service.settings import Settings

log = logging.getLogger(__name__)

API_KEY_STATE: Final = "musicrec.api_key"
"""``scope["state"]`` key: the id (``key_id``) of the valid API key the request carries; absent without one."""
_SIG_BYTES: Final = 16  # 128 bits of HMAC: forging one is out of reach, and the cookie stays short


def key_id(key: str) -> str:
    """A short, stable, non-secret name for a key (for rate-limit buckets and logs; never the key itself)."""
    return hashlib.sha256(b"musicrec-api-key:" + key.encode()).hexdigest()[:12]


class ApiKeys:
    """The configured API keys as digests; ``identify`` compares in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [(key_id(k), hashlib.sha256(k.encode()).digest()) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, presented: str) -> str | None:
        """The id of the key ``presented`` is, or None. Every key is compared, match or not."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for kid, known in self._digests:
            if hmac.compare_digest(digest, known):
                found = kid
        return found


def raw_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first ``name`` header's value (``name`` in lower case), from the raw ASGI headers.

    Why: the request path reads a few single headers, and building Litestar's header map for
    each of them cost more than the check that needed it."""
    for key, value in headers:
        if key == name:
            return value
    return None


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The API key in ``Authorization: Bearer <key>`` or ``X-Api-Key`` (raw ASGI headers), if any."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return None


class CookieSigner:
    """``<client id>.<signature>`` for the listener cookie; ``verify`` gives the id back only if it is ours."""

    def __init__(self, secret: str) -> None:
        self._mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def _signature(self, client_id: str) -> str:
        mac = self._mac.copy()
        mac.update(client_id.encode())
        return base64.urlsafe_b64encode(mac.digest()[:_SIG_BYTES]).rstrip(b"=").decode()

    def sign(self, client_id: str) -> str:
        return f"{client_id}.{self._signature(client_id)}"

    def verify(self, value: str) -> str | None:
        client_id, dot, signature = value.rpartition(".")
        if not dot or not client_id:
            return None
        return client_id if hmac.compare_digest(signature, self._signature(client_id)) else None


@dataclass(frozen=True)
class Security:
    """What the request path needs to tell callers apart, built once at start-up."""

    api_keys: ApiKeys
    signer: CookieSigner
    trusted_origins: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> "Security":
        secret = settings.cookie_secret
        if not secret:
            secret = secrets.token_urlsafe(32)
            log.warning("COOKIE_SECRET is not set: listener cookies are signed with a random secret for this start "
                        "only (after a restart every browser is a new listener); set COOKIE_SECRET to keep them")
        if not settings.api_keys:
            log.warning("API_KEYS is not set: /api/* and /events are open, and any caller may name a listener "
                        "with X-Client-Id")
        return cls(ApiKeys(settings.api_keys), CookieSigner(secret), frozenset(settings.trusted_origins))


def own_origin(request: Request) -> str:
    """``scheme://host[:port]`` as this request reached us (the Host header; uvicorn's proxy headers set the scheme)."""
    return f"{request.scope['scheme']}://{request.headers.get('host', '')}".lower()


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def is_same_origin(request: Request, trusted: frozenset[str] = frozenset()) -> bool:
    """False when a browser tells us the request comes from another site.

    ``Origin`` decides when present (every browser sends it on a POST or DELETE); else Fetch
    Metadata (``Sec-Fetch-Site``); a request with neither comes from no web page (curl, an app).
    """
    headers = request.scope["headers"]
    declared = raw_header(headers, b"origin")
    if declared is not None:
        origin = declared.decode("latin-1").lower()
        return origin == own_origin(request) or origin in trusted
    site = raw_header(headers, b"sec-fetch-site")
    return site is None or site in (b"same-origin", b"none")


def is_same_site_navigation(request: Request, trusted: frozenset[str] = frozenset()) -> bool:
    """May opening this page record a view? Only when this site (or the user, typing or bookmarking) asked for it.

    A GET must not write state across sites: a link or a hidden image on another site would
    otherwise put views into the visitor's session. Without Fetch Metadata, the Referer decides;
    with neither, nothing says another site is involved.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    referer = request.headers.get("referer")
    if referer is None:
        return True
    origin = _origin_of(referer)
    return origin == own_origin(request) or origin in trusted


def require_same_origin(request: Request) -> None:
    """For cookie-identified state changes: a 403 when the request comes from another site.

    A caller with an API key is an app, not a browser session, so no check applies to it.
    """
    if request.scope["state"].get(API_KEY_STATE) is not None:
        return
    security: Security = request.app.state.security
    if not is_same_origin(request, security.trusted_origins):
        raise Forbidden("cross-site request refused: this change needs a request from this site "
                        "(or an API key)")
