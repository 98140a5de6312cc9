"""Encoded answers to "what next?", kept per exact session state.

A listener's answer depends only on the model version, the (type, track) sequence of their
session, ``k`` and ``diversity``: the scorer's own memos never change an answer. Asking again
without a new event (a page view in the web UI, an app refreshing its queue, a retry) returns
the same bytes, so they are kept, already JSON, in a bounded LRU per worker. Any event changes
the key, and a new model version never sees the old one's entries, which age out.

A key is one msgpack ``bytes`` (``answer_key``), not a tuple of (type, track) tuples: the cache
holds thousands of keys, and as tuples they were most of the objects the garbage collector had to
walk. In the player mix every answer adds an entry and evicts one, so the young generation filled
with them between collections, and the collections that walked them paused a worker for tens of
milliseconds, long enough to shed requests (benchmarks/README.md).
"""
from __future__ import annotations

from typing import Callable, Sequence

import msgspec

from musicrec.service.lru import LRU
from musicrec.service.sessions import SessionEvent

AnswerKey = bytes
_encode_key = msgspec.msgpack.Encoder().encode


def answer_key(model_version: str, events: Sequence[SessionEvent], k: int, diversity: float) -> AnswerKey:
    """What an answer depends on, as one object: msgpack's length-prefixed strings keep it exact."""
    parts: list[str | int | float] = [model_version, k, diversity]
    for event in events:
        parts.append(event.type)
        parts.append(event.track_id)
    return _encode_key(parts)


class AnswerCache:
    """A bounded LRU of encoded answers; ``size`` 0 turns it off. Not shared between workers."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: LRU[AnswerKey, bytes] = LRU(max(size, 1))

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_compute(self, key: AnswerKey, compute: Callable[[], bytes]) -> bytes:
        """The kept answer for ``key``, else ``compute()``'s, kept. Synchronous: no await, no lock."""
        if not self.size:
            return compute()
        body = self._entries.get(key)
        if body is not None:
            self.hits += 1
            return body
        self.misses += 1
        body = compute()
        self._entries.put(key, body)
        return body
