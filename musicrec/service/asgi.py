"""ASGI entry for uvicorn (``factory=True``): settings from the environment, read at call time."""
from litestar import Litestar

from musicrec.service.main import create_app


def create_from_env() -> Litestar:
    return create_app()
