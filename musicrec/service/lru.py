"""The one bounded cache type of the service: least recently used first out, optional expiry per entry.

The encoded-answer cache, the in-process session store and the online-track cache each kept an
``OrderedDict`` of their own with the same move-to-end and evict-oldest steps (and two of them an
expiry time beside each value). They use this instead. Not thread-safe: every user runs on one
event loop and never awaits between a read and its write.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``max_items`` entries; a read or write is a use; an entry past its ``ttl_s`` is gone."""

    def __init__(self, max_items: int, *, clock: Callable[[], float] = time.monotonic,
                 on_evict: Callable[[K, V], None] | None = None) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self._clock = clock
        self._on_evict = on_evict
        """Called with each unexpired entry ``put`` pushes out (an expired one held nothing anyone could read)."""
        self._entries: OrderedDict[K, tuple[V, float | None]] = OrderedDict()

    def __len__(self) -> int:
        """Entries held (expired ones may linger until read or evicted)."""
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, ttl_s: float | None = None) -> None:
        """Keep ``value`` (for ``ttl_s`` seconds, or until evicted); the least recently used entry goes first."""
        self._entries[key] = (value, None if ttl_s is None else self._clock() + ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_items:
            evicted, (old, expires) = self._entries.popitem(last=False)
            if self._on_evict is not None and (expires is None or expires > self._clock()):
                self._on_evict(evicted, old)

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[0]

    def live(self) -> Iterator[tuple[K, V, float | None]]:
        """(key, value, seconds left or None) of every unexpired entry, least recently used first."""
        now = self._clock()
        for key, (value, expires) in self._entries.items():
            if expires is None:
                yield key, value, None
            elif expires > now:
                yield key, value, expires - now

    def clear(self) -> None:
        self._entries.clear()
