"""The OpenAPI document and its pages: tags, declared errors, the listener's id, examples, offline assets.

Routes describe themselves with their docstrings (``use_handler_docstrings``) and take the rest
from ``documented(...)``: their tag, the error statuses they can answer (each with the one JSON
error body, ``ErrorBody``), the ``X-Client-Id`` header and ``client_id`` cookie for routes that
act for a listener, and request/response examples. A client generated from the document
(``openapi-python-client``) therefore gets every error model and the event types as an enum.

Swagger UI (``/schema``, ``/schema/swagger``) and Redoc (``/schema/redoc``) load their scripts
from this app (``/docs-assets``): Swagger UI from the ``swagger-ui-bundle-v2`` package, Redoc
vendored in docs_assets/redoc (MIT). On a machine without internet the pages still render.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from litestar.datastructures import Cookie, ResponseHeader
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, Example, OpenAPIHeader, Operation, Parameter, Schema, SecurityScheme, Tag
from litestar.openapi.spec.enums import OpenAPIType
from litestar.router import Router

from musicrec import __version__
from musicrec.service.schemas import ErrorBody
from musicrec.web.assets import static_files_router  # odd paths are 404s, not 500s (see there)

ASSETS_PATH = "/docs-assets"
REDOC_DIR = Path(__file__).parent / "docs_assets" / "redoc"
FAVICON = "<link rel='icon' type='image/svg+xml' href='/static/favicon.svg'>"
ADMIN_SCHEME = "adminToken"
API_KEY_SCHEME = "apiKey"
EXAMPLE_TRACK = "5SuOikwiRyPMVoIQDJUgSV"
EXAMPLE_CLIENT = "3f2b8c0e9d6a4b1f8e7c6d5a4b3c2d1e"

TAGS = [
    Tag(name="recommendations", description="What to play next: for the caller's session, or for given tracks."),
    Tag(name="events", description="What the listener did (view, like, skip): it shapes their next answers."),
    Tag(name="session", description="The caller's recent events, as the recommender sees them."),
    Tag(name="catalog", description="Search, filter and page the tracks of the artefact version being served."),
    Tag(name="operations", description="Liveness, readiness, Prometheus metrics and the admin reload."),
]

ERRORS: dict[int, str] = {
    400: "Bad input: a value out of range, an unknown field, genre or event type, malformed JSON or client id",
    401: "Missing or wrong credentials",
    403: "The admin API is disabled (no ADMIN_TOKEN), or a change made with the browser cookie came from another site",
    404: "No such track, or none of the given tracks is in the catalog",
    409: "The service's state refuses the request (a new artefact version that failed to load)",
    413: "The body is larger than the service accepts (1 MiB)",
    415: "The body is not JSON (send Content-Type: application/json)",
    429: "Too many requests: wait as long as Retry-After says",
    503: "Overloaded, or a dependency the request cannot do without is unavailable: retry after Retry-After",
}
ERROR_EXAMPLES: dict[int, dict[str, Any]] = {
    400: {"status_code": 400, "detail": "Validation failed for POST /events",
          "extra": [{"message": "Invalid enum value 'dance'", "key": "type", "source": "body"}]},
    404: {"status_code": 404, "detail": f"no track with id '{EXAMPLE_TRACK[::-1]}'"},
}
API_ERRORS = (400, 401, 429, 503)
"""What any JSON route can answer besides its own errors: bad input, a missing or wrong API key (with API_KEYS set),
rate limits, overload (bodies add 413, 415)."""

CLIENT_HEADER = Parameter(
    name="X-Client-Id", param_in="header", required=False,  # type: ignore[arg-type]
    description="Who is listening: 1–64 characters of [A-Za-z0-9_-]. Wins over the cookie; without either a new "
                "listener is named and given the `client_id` cookie. A malformed id is a 400. With API_KEYS set it "
                "is honoured only from a caller with a valid API key (else a 401).",
    schema=Schema(type=OpenAPIType.STRING, pattern=r"^[A-Za-z0-9_-]{1,64}$", examples=[EXAMPLE_CLIENT]))
CLIENT_COOKIE = Parameter(
    name="client_id", param_in="cookie", required=False,  # type: ignore[arg-type]
    description="The listener id the service set on a first visit, signed (`<id>.<signature>`; a forged or "
                "unsigned one is a new listener); used when there is no X-Client-Id header.",
    schema=Schema(type=OpenAPIType.STRING, pattern=r"^[A-Za-z0-9_-]{1,64}$", examples=[EXAMPLE_CLIENT]))
CLIENT_COOKIE_SET = Cookie(key="client_id", documentation_only=True, max_age=365 * 24 * 3600, path="/",
                           samesite="lax", httponly=True,
                           description="Set for a caller that sent no listener id: their session id, signed.")
REQUEST_ID_HEADER = ResponseHeader(name="X-Request-Id", documentation_only=True,
                                   description="The request's id: the caller's own X-Request-Id when it is a plain "
                                               "token, else a fresh one; the service's log lines for it carry it.")

# The same two headers as OpenAPI entries, for success responses declared as a ``ResponseSpec`` (routes that
# answer raw, already-encoded JSON): Litestar adds the route's own headers only to responses it generates.
_ID_HEADER_DOC = OpenAPIHeader(description=REQUEST_ID_HEADER.description, schema=Schema(type=OpenAPIType.STRING))
_COOKIE_HEADER_DOC = OpenAPIHeader(
    description=CLIENT_COOKIE_SET.description,
    schema=Schema(type=OpenAPIType.STRING,
                  examples=["client_id=<id>.<signature>; HttpOnly; Max-Age=31536000; Path=/; SameSite=lax"]))


def _error_response(status: int) -> ResponseSpec:
    example = ERROR_EXAMPLES.get(status, {"status_code": status, "detail": ERRORS[status]})
    return ResponseSpec(data_container=ErrorBody, description=ERRORS[status], generate_examples=False,
                        examples=[Example(summary=ERRORS[status].split(":")[0], value=example)])


def documented(tag: str, *, errors: Iterable[int] = API_ERRORS, listener: bool = False, example: Any = None,
               body_example: Any = None, admin: bool = False) -> dict[str, Any]:
    """Route-decorator keyword arguments that document one route (see the module docstring)."""
    operation = _operation_class(listener, example, body_example)
    kwargs: dict[str, Any] = {
        "tags": [tag],
        "responses": {status: _error_response(status) for status in sorted(set(errors))},
        "operation_class": operation,
    }
    if listener:
        kwargs["response_cookies"] = [CLIENT_COOKIE_SET]
    if admin:
        kwargs["security"] = [{ADMIN_SCHEME: []}]
    return kwargs


def _operation_class(listener: bool, example: Any, body_example: Any) -> type[Operation]:
    @dataclass
    class DocumentedOperation(Operation):
        """An Operation completed after Litestar built it: the listener's id and the examples."""

        def __post_init__(self) -> None:
            if listener:
                self.parameters = [*(self.parameters or []), CLIENT_HEADER, CLIENT_COOKIE]
            for code, response in (self.responses or {}).items():
                if str(code).startswith("2") and not getattr(response, "headers", True):
                    response.headers = {"X-Request-Id": _ID_HEADER_DOC} | \
                        ({"Set-Cookie": _COOKIE_HEADER_DOC} if listener else {})
            if example is not None and self.responses:
                ok = next(code for code in self.responses if str(code).startswith("2"))
                for media in (getattr(self.responses[ok], "content", None) or {}).values():
                    media.examples = {"example": Example(value=example)}
            if body_example is not None and self.request_body is not None:
                for media in (getattr(self.request_body, "content", None) or {}).values():
                    media.examples = {"example": Example(value=body_example)}

    return DocumentedOperation


def openapi_config() -> OpenAPIConfig:
    """The document at /schema/openapi.json and the pages that render it from local assets."""
    swagger = SwaggerRenderPlugin(path=["/", "/swagger"], js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                                  css_url=f"{ASSETS_PATH}/swagger-ui.css",
                                  standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
                                  favicon=FAVICON)
    redoc = RedocRenderPlugin(path="/redoc", js_url=f"{ASSETS_PATH}/redoc.standalone.js", google_fonts=False,
                              favicon=FAVICON)
    return OpenAPIConfig(
        title="musicrec", version=__version__, path="/schema", use_handler_docstrings=True, tags=TAGS,
        description="Low-latency music recommendations from audio features. Errors are JSON: "
                    "`{\"status_code\", \"detail\", \"extra\"?}`. A listener is named by the `X-Client-Id` header, "
                    "else the `client_id` cookie (set on a first visit). With API_KEYS set, /api/* and /events need "
                    "`Authorization: Bearer <key>` or `X-Api-Key: <key>` (or the browser cookie), and only a caller "
                    "with a key may send `X-Client-Id`.",
        components=Components(security_schemes={
            ADMIN_SCHEME: SecurityScheme(type="http", scheme="bearer",
                                         description="`Authorization: Bearer <ADMIN_TOKEN>` (admin routes only)"),
            API_KEY_SCHEME: SecurityScheme(type="http", scheme="bearer",
                                           description="`Authorization: Bearer <key>` or `X-Api-Key: <key>`, one of "
                                                       "API_KEYS (when set; /api/* and /events)")}),
        render_plugins=[swagger, redoc, JsonRenderPlugin()],
    )


def docs_assets_router() -> Router:
    """The Swagger UI and Redoc scripts and styles, served by the app itself."""
    from swagger_ui_bundle import swagger_ui_path

    return static_files_router(ASSETS_PATH, [Path(swagger_ui_path), REDOC_DIR], include_in_schema=False,
                               name="docs-assets")
