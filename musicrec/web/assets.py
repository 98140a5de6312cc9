"""Static file routers that answer only for the files their folders hold at start-up.

Why: Litestar's static files router maps the URL onto the file system, and odd paths failed
inside it: ``/static/app.js/x`` (NotADirectoryError) and ``/static/app.js%00`` (embedded null
byte) came back as 500s. A guard checks the requested name against the folders' files, listed
once when the app is built, so anything else is a plain 404 before the file system is asked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from litestar import Router
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.static_files import create_static_files_router

from musicrec.service.errors import NotFound


def static_files_router(path: str, directories: Sequence[Path], **kwargs: Any) -> Router:
    """``create_static_files_router(path, directories, **kwargs)``, serving only the files directly in them."""
    names = frozenset(f.name for d in directories for f in Path(d).iterdir() if f.is_file())
    prefix = path.rstrip("/") + "/"

    def known_file(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        name = connection.scope["path"].removeprefix(prefix)
        if name not in names:
            raise NotFound(f"no static file {name!r}")

    return create_static_files_router(path=path, directories=list(directories), guards=[known_file], **kwargs)
