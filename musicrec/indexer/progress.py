"""Build steps as the person waiting sees them: one line as each step starts, its seconds at the end.

Training has its own progress bar (musicrec/indexer/train.py); the steps after it (embedding,
fine-tuning, indexing, neighbour tables, evaluation, writing, the pre-publication check) used to
pass in silence. The CLI routes log records around the bar (``logging_redirect_tqdm``), so these
lines never break it.
"""
from __future__ import annotations

import logging
import time


class Steps:
    """Logs ``step i/n name: what`` when a step starts; ``seconds`` holds each finished step's duration."""

    def __init__(self, total: int, logger: logging.Logger) -> None:
        self.total = total
        self.log = logger
        self.seconds: dict[str, float] = {}
        self._current: str | None = None
        self._started = 0.0

    def start(self, name: str, what: str) -> None:
        """Finish the running step (if any) and start ``name``."""
        self.finish()
        self._current, self._started = name, time.perf_counter()
        self.log.info("step %d/%d %s: %s", len(self.seconds) + 1, max(self.total, len(self.seconds) + 1), name, what)

    def finish(self) -> dict[str, float]:
        """Close the running step; returns every step's seconds so far, in order."""
        if self._current is not None:
            self.seconds[self._current] = round(time.perf_counter() - self._started, 3)
            self._current = None
        return self.seconds
