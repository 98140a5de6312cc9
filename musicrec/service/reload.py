"""Hot swap: notice a new ``current`` artefact version and serve it without a restart.

The watcher polls where ``current`` points (cheap: one readlink) and loads a new target
in a worker thread, off the event loop. A version that fails to load, in any way, is refused,
logged once, and not retried until ``current`` moves again; the old one keeps serving.
Requests that already took the old Engine finish on it. The watcher itself never dies of a
bad version: one that raised an error ``load_artifacts`` did not expect used to end the task
silently in every worker, so later switches of ``current`` were ignored until a restart.
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
            except (ArtifactError, OSError) as exc:
                return ReloadResult(False, engine.model_version, str(engine.artifacts.path), str(exc))
            if target == engine.artifacts.path.resolve() or (target == self._refused and not force):
                return ReloadResult(False, engine.model_version, str(target))
            try:
                new = await anyio.to_thread.run_sync(Engine.load, target)
            except Exception as exc:  # noqa: BLE001 - any failure refuses the version; the old one serves on
                self._refused = target
                expected = isinstance(exc, ArtifactError)
                log.error("refused artefact version %s: %s (still serving %s)", target,
                          exc if expected else f"{type(exc).__name__}: {exc}", engine.model_version,
                          exc_info=None if expected else exc)
                return ReloadResult(False, engine.model_version, str(engine.artifacts.path), str(exc))
            self._refused = None
            self.holder.swap(new)
            return ReloadResult(True, new.model_version, str(target))

    async def watch(self, interval_s: float) -> None:
        """Poll forever (cancelled at shutdown); a failed check is logged and the next one runs as usual."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad check
                log.exception("artefact watcher: checking %s failed; trying again in %.1fs", self.artifacts_dir,
                              interval_s)


def watcher_done(task: "asyncio.Task[None]") -> None:
    """Done callback of the watcher task: it only ends by cancellation, so anything else gets an ERROR line."""
    if not task.cancelled() and task.exception() is not None:
        log.error("artefact watcher stopped: new versions will not be picked up", exc_info=task.exception())
