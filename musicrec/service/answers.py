"""Encoded answers to "what next?", kept per exact session state.

A listener's answer depends only on the model version, the (type, track) sequence of their
session, ``k`` and ``diversity``: the scorer's own memos never change an answer. Asking again
without a new event (a page view in the web UI, an app refreshing its queue, a retry) returns
the same bytes, so they are kept, already JSON, in a bounded LRU per worker. Any event changes
the key, and a new model version never sees the old one's entries, which age out.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

AnswerKey = tuple[str, tuple[tuple[str, str], ...], int, float]


class AnswerCache:
    """A bounded LRU of encoded answers; ``size`` 0 turns it off. Not shared between workers."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[AnswerKey, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_compute(self, key: AnswerKey, compute: Callable[[], bytes]) -> bytes:
        """The kept answer for ``key``, else ``compute()``'s, kept. Synchronous: no await, no lock."""
        if not self.size:
            return compute()
        body = self._entries.get(key)
        if body is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return body
        self.misses += 1
        body = self._entries[key] = compute()
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return body
