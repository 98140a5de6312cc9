"""One log format for every process: the indexer, ``musicrec serve``'s parent and its uvicorn workers.

``log_config`` is a ``logging.config.dictConfig`` dict. The serve command hands it to uvicorn,
which applies it in the parent and again in each worker it spawns, so uvicorn's own records and
ours leave through one handler with one formatter. ``LOG_FORMAT=json`` writes one JSON object per
line for log collectors. A record written while a request is being handled carries that
request's id (``request_id``, set by musicrec/service/request_id.py), so its lines can be found
from the ``X-Request-Id`` a client saw.
"""
from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Final

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the request the current task is handling; None outside requests."""

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"
_RECORD_FIELDS: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_tag", "taskName"}


class RequestIdFilter(logging.Filter):
    """Copies the current request id onto each record (``record.request_id``, None outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [request id]: message``; the bracket only when there is a request id."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        record.request_tag = f" [{rid}]" if rid else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, request_id, any ``extra=`` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in out and key != "request_id":
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (a test's capture, a redirect)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


def log_config(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    """The dictConfig for ``level`` and ``fmt`` ("text" or "json"): one stderr handler on the root logger.

    uvicorn's loggers are emptied of their own handlers and propagate to the root, so its
    start-up, error and access lines look like ours.
    """
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": {"()": formatter}},
        "handlers": {"stderr": {"()": StderrHandler, "formatter": "default", "filters": ["request_id"]}},
        "loggers": {**{name: {"level": level, "handlers": [], "propagate": True}
                       for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
                    "faiss.loader": {"level": "WARNING"}},  # which CPU build it picked: noise at INFO
        "root": {"level": level, "handlers": ["stderr"]},
    }


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """The same handler and format for a command that does not go through uvicorn (build, eval, …).

    Unlike ``dictConfig`` this leaves other handlers on the root logger alone (a test runner's) and
    replaces only the one it added before, so calling it twice in a process does not log twice.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
