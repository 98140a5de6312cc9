"""Hot swap: notice a new ``current`` artefact version and serve it without a restart.

The watcher polls where ``current`` points (cheap: one readlink) and loads a new target
in a worker thread, off the event loop. A version that fails to load is refused,
logged once, and not retried until ``current`` moves again; the old one keeps serving.
Requests that already took the old Engine finish on it.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import anyio

from musicrec.index.engine import Engine, EngineHolder
from musicrec.index.artifacts import ArtifactError, resolve_version_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadResult:
    swapped: bool
    model_version: str
    path: str
    error: str | None = None


class Reloader:
    def __init__(self, artifacts_dir: str | Path, holder: EngineHolder) -> None:
        self.artifacts_dir = Path(artifacts_dir)
        self.holder = holder
        self._lock = asyncio.Lock()
        self._refused: Path | None = None

    def _target(self) -> Path:
        return resolve_version_dir(self.artifacts_dir).resolve()

    async def check(self, *, force: bool = False) -> ReloadResult:
        """Load and swap in the version ``current`` points at, if it is new (or ``force``)."""
        async with self._lock:
            engine = self.holder.current
            try:
                target = self._target()
            except ArtifactError as exc:
                return ReloadResult(False, engine.model_version, str(engine.artifacts.path), str(exc))
            if target == engine.artifacts.path.resolve() or (target == self._refused and not force):
                return ReloadResult(False, engine.model_version, str(target))
            try:
                new = await anyio.to_thread.run_sync(Engine.load, target)
            except ArtifactError as exc:
                self._refused = target
                log.error("refused artefact version %s: %s (still serving %s)", target, exc, engine.model_version)
                return ReloadResult(False, engine.model_version, str(engine.artifacts.path), str(exc))
            self._refused = None
            self.holder.swap(new)
            return ReloadResult(True, new.model_version, str(target))

    async def watch(self, interval_s: float) -> None:
        """Poll forever (cancelled at shutdown)."""
        while True:
            await asyncio.sleep(interval_s)
            await self.check()
