"""The one cache type: least recently used out first, a read is a use, entries expire on their own clock."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from musicrec.service.lru import LRU


def test_the_least_recently_used_goes_first_and_a_read_counts_as_a_use() -> None:
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # now b is the least recent
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c"), len(lru)) == (1, None, 3, 2)
    assert lru.pop("a") == 1 and lru.pop("a") is None and len(lru) == 1


def test_entries_expire_and_live_reports_what_is_left() -> None:
    now = [100.0]
    lru: LRU[str, str] = LRU(10, clock=lambda: now[0])
    lru.put("short", "x", ttl_s=5)
    lru.put("long", "y", ttl_s=50)
    lru.put("forever", "z")
    now[0] = 104.0
    assert sorted(lru.live()) == [("forever", "z", None), ("long", "y", 46.0), ("short", "x", 1.0)]
    now[0] = 105.0
    assert lru.get("short") is None and lru.get("long") == "y" and lru.get("forever") == "z"
    lru.put("long", "y2", ttl_s=1)  # a write sets a new time to live
    now[0] = 106.5
    assert lru.get("long") is None
    lru.clear()
    assert len(lru) == 0


def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_items"):
        LRU(0)


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans()), max_size=60), st.integers(1, 5))
def test_it_behaves_like_a_reference_model(ops: list[tuple[str, bool]], size: int) -> None:
    lru: LRU[str, int] = LRU(size)
    model: list[str] = []  # least recent first
    for i, (key, write) in enumerate(ops):
        if write:
            lru.put(key, i)
            model = [k for k in model if k != key] + [key]
            model = model[-size:]
        else:
            found = lru.get(key) is not None
            assert found == (key in model)
            if found:
                model = [k for k in model if k != key] + [key]
    assert [k for k, _, _ in lru.live()] == model
