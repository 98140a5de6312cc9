"""ASGI entry for uvicorn (``factory=True``): settings from the environment, read at call time."""
import os

from litestar import Litestar

from musicrec.service.main import create_app
from musicrec.service.protocol import GuardedHttpToolsProtocol
from musicrec.service.serve import VERIFIED_ENV
from musicrec.service.settings import Settings


def create_from_env() -> Litestar:
    settings = Settings.from_env()
    # uvicorn calls this in each worker before it accepts a connection, so the limits apply to all of them.
    GuardedHttpToolsProtocol.configure(settings)
    return create_app(settings, verified=os.environ.get(VERIFIED_ENV))
