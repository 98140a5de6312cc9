"""The co-listening model: sessions from the log, pair weights against a plain-Python oracle, the table."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicrec.data.events import Event
from musicrec.index.colisten import ColistenTable
from musicrec.indexer.colisten import (
    ColistenConfig, fit_colisten, sessions_from_log, table_from_pairs, top_n_table,
)
from musicrec.indexer.event_dataset import EVENT_COLUMNS, SCHEMA, read_log_table, write_events

IDS = [f"t{i}" for i in range(12)]
T0 = 1_767_225_600.0


def log(rows: list[tuple[str, str, str, float]]) -> pa.Table:
    """(client, type, track id, ts) rows as the table ``read_log_table`` gives."""
    return pa.table({"type": [r[1] for r in rows], "track_id": [r[2] for r in rows], "ts": [r[3] for r in rows],
                     "client_id": [r[0] for r in rows]})


def plays_by_session(sessions) -> list[list[int]]:  # type: ignore[no-untyped-def]
    out: dict[int, list[int]] = defaultdict(list)
    for s, r in zip(sessions.play_session.tolist(), sessions.play_row.tolist()):
        out[s].append(r)
    return list(out.values())


def test_sessions_split_at_gaps_by_client_in_time_order() -> None:
    table = log([("b", "track_view", "t3", T0 + 10), ("a", "track_view", "t1", T0 + 60), ("a", "track_view", "t0", T0),
                 ("a", "track_view", "t2", T0 + 60 + 3600), ("b", "track_view", "t4", T0 + 20)])
    sessions = sessions_from_log(table, IDS, ColistenConfig(session_gap_s=1800))
    assert sorted(plays_by_session(sessions)) == [[0, 1], [2], [3, 4]]
    assert sessions.clients == 2 and sessions.events_read == 5 and sessions.unknown_track == 0


def test_the_log_order_changes_nothing() -> None:
    rows = [(f"c{i % 7}", "track_view" if i % 5 else "skip", IDS[(i * 5) % 12], T0 + 60 * i) for i in range(60)]
    config = ColistenConfig(window=3, shrink=1.0)
    a = sessions_from_log(log(rows), IDS, config)
    b = sessions_from_log(log(rows[::-1]), IDS, config)
    for name in ("play_session", "play_row", "play_client", "skip_session", "skip_row", "skip_before"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    assert sorted(set(a.play_client.tolist())) == list(range(7))  # codes by sorted client id


def test_unknown_tracks_are_dropped_before_splitting_and_never_bridge_a_gap() -> None:
    table = log([("a", "track_view", "t0", T0), ("a", "track_view", "gone", T0 + 1000),
                 ("a", "track_view", "t1", T0 + 2000)])
    sessions = sessions_from_log(table, IDS, ColistenConfig(session_gap_s=1500))
    assert plays_by_session(sessions) == [[0], [1]] and sessions.unknown_track == 1


def test_a_skipped_track_is_no_play_of_its_session_and_repeats_count_once() -> None:
    table = log([("a", "track_view", "t0", T0), ("a", "track_view", "t1", T0 + 1), ("a", "skip", "t1", T0 + 2),
                 ("a", "like", "t2", T0 + 3), ("a", "track_view", "t0", T0 + 4), ("a", "track_view", "t3", T0 + 5)])
    sessions = sessions_from_log(table, IDS, ColistenConfig())
    assert plays_by_session(sessions) == [[0, 2, 3]]
    assert sessions.skip_row.tolist() == [1]
    assert sessions.skip_before.tolist() == [1]  # the skip came after one kept play (t0)


def oracle(events: list[tuple[str, str, str, float]], config: ColistenConfig) -> dict[tuple[int, int], float]:
    """The module docstring's weights, one event at a time in plain Python."""
    row_of = {t: i for i, t in enumerate(IDS)}
    by_client: dict[str, list[tuple[float, int, str, int]]] = defaultdict(list)
    for i, (client, kind, track, ts) in enumerate(events):
        if track in row_of:
            by_client[client].append((ts, i, kind, row_of[track]))
    sessions: list[list[tuple[str, int]]] = []
    ends: list[float] = []
    for client in sorted(by_client):
        current: list[tuple[str, int]] = []
        last = None
        for ts, _, kind, row in sorted(by_client[client]):
            if last is not None and ts - last > config.session_gap_s:
                sessions.append(current)
                ends.append(last)
                current = []
            current.append((kind, row))
            last = ts
        sessions.append(current)
        ends.append(last)  # type: ignore[arg-type]
    if not sessions:
        return {}
    newest = max(ends)
    counts: dict[tuple[int, int], float] = defaultdict(float)
    played: dict[int, float] = defaultdict(float)
    for session, end in zip(sessions, ends):
        w = 0.5 ** ((newest - end) / 86_400 / config.half_life_days) if config.half_life_days else 1.0
        skipped = {row for kind, row in session if kind == "skip"}
        plays: list[int] = []
        skip_pairs: list[tuple[int, int]] = []
        for kind, row in session:
            if kind == "skip":
                skip_pairs += [(p, row) for p in plays[-config.window:] if p != row]
            elif row not in skipped and row not in plays:
                plays.append(row)
        for row in plays:
            played[row] += w
        for i, a in enumerate(plays):
            for b in plays[i + 1:i + 1 + config.window]:
                counts[(min(a, b), max(a, b))] += w
        for a, b in skip_pairs:
            counts[(min(a, b), max(a, b))] -= config.skip_weight * w
    weights = {}
    for (a, b), c in counts.items():
        if c > 1e-12:
            weights[(a, b)] = weights[(b, a)] = c / (math.sqrt(played[a] * played[b]) + config.shrink)
    return weights


event_rows = st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["track_view", "like", "skip"]),
                                st.sampled_from(IDS[:8] + ["gone"]), st.integers(0, 40).map(lambda m: T0 + 60 * m)),
                      min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(events=event_rows, window=st.integers(1, 6), half_life=st.sampled_from([None, 0.01]),
       skip_weight=st.sampled_from([0.0, 1.0, 0.5]))
def test_pair_weights_match_the_plain_python_oracle(events, window, half_life, skip_weight) -> None:
    config = ColistenConfig(session_gap_s=600, window=window, shrink=2.0, skip_weight=skip_weight,
                            half_life_days=half_life, top_n=len(IDS))
    table = fit_colisten(sessions_from_log(log(events), IDS, config), len(IDS), config)
    got = {(a, int(b)): float(w) for a in range(len(IDS)) for b, w in zip(*table.neighbours(a))}
    expected = oracle(events, config)
    assert got.keys() == expected.keys()
    for pair, weight in expected.items():
        assert got[pair] == pytest.approx(weight, rel=1e-5)


def test_a_pair_further_apart_than_the_window_is_not_played_together() -> None:
    events = [("a", "track_view", t, T0 + i) for i, t in enumerate(["t0", "t1", "t2", "t3"])]
    config = ColistenConfig(window=2, shrink=0.0)
    table = fit_colisten(sessions_from_log(log(events), IDS, config), len(IDS), config)
    assert set(table.neighbours(0)[0].tolist()) == {1, 2}


def test_top_n_keeps_the_heaviest_first() -> None:
    rows, cols = np.array([0, 0, 0, 1]), np.array([3, 1, 2, 0])
    table = table_from_pairs(rows, cols, np.array([0.2, 0.9, 0.5, 1.0], np.float32), 4, top_n=2)
    assert table.neighbours(0)[0].tolist() == [1, 2] and table.neighbours(1)[0].tolist() == [0]
    assert table.indptr.tolist() == [0, 2, 3, 3, 3]
    owner, row, weight = table.gather(np.array([1, 0, 3]))
    assert owner.tolist() == [0, 1, 1] and row.tolist() == [0, 1, 2]
    np.testing.assert_allclose(weight, [1.0, 0.9, 0.5])


@settings(max_examples=30, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9), st.floats(0.01, 1.0)), max_size=60),
       top_n=st.integers(1, 5), block_nnz=st.integers(1, 8))
def test_ranking_a_block_of_rows_at_a_time_changes_nothing(pairs, top_n, block_nnz) -> None:
    import scipy.sparse as sp

    unique = {(a, b): w for a, b, w in pairs}
    rows, cols = np.array([k[0] for k in unique], dtype=np.int64), np.array([k[1] for k in unique], dtype=np.int64)
    matrix = sp.csr_matrix((np.array(list(unique.values()), np.float32), (rows, cols)), shape=(10, 10))
    whole, blocked = top_n_table(matrix, top_n, block_nnz=1 << 20), top_n_table(matrix, top_n, block_nnz=block_nnz)
    for a in range(10):
        expected = sorted(((-w, b) for (r, b), w in unique.items() if r == a))[:top_n]
        assert [int(b) for b in whole.neighbours(a)[0]] == [b for _, b in expected]
        assert whole.neighbours(a)[0].tolist() == blocked.neighbours(a)[0].tolist()
        assert whole.neighbours(a)[1].tolist() == blocked.neighbours(a)[1].tolist()


def test_read_log_table_keeps_the_first_copy_of_a_redelivered_event(tmp_path: Path) -> None:
    def event(i: int, eid: str) -> Event:
        return Event(event_id=eid, type="track_view", track_id=IDS[i], ts=T0 + i, source=None, client_id="a",
                     position=None, model_version="v")

    write_events(tmp_path, [event(0, "x"), event(1, "y")])
    write_events(tmp_path, [event(0, "x"), event(3, "z")])  # "x" again: at-least-once delivery
    table = read_log_table(tmp_path, ("event_id", "track_id"))
    assert sorted(zip(table.column("event_id").to_pylist(), table.column("track_id").to_pylist())) == \
        [("x", "t0"), ("y", "t1"), ("z", "t3")]
    assert read_log_table(tmp_path / "missing").num_rows == 0
    assert read_log_table(tmp_path / "missing").schema == SCHEMA.empty_table().select(list(EVENT_COLUMNS)).schema


@pytest.mark.parametrize("damage, message", [
    (lambda t: ColistenTable(t.indptr, np.where(t.indices == 1, 99, t.indices).astype(np.int32), t.weights),
     "outside"),
    (lambda t: ColistenTable(t.indptr, t.indices, np.where(t.weights > 0, np.nan, 0).astype(np.float32)), "finite"),
    (lambda t: ColistenTable(t.indptr[::-1].copy(), t.indices, t.weights), "monotone"),
    (lambda t: ColistenTable(t.indptr.astype(np.int32), t.indices, t.weights), "int64"),
    (lambda t: ColistenTable(t.indptr, t.indices[:-1], t.weights), "equal"),
], ids=["row-out-of-range", "nan-weight", "indptr-not-monotone", "indptr-dtype", "length-mismatch"])
def test_a_damaged_table_is_refused_on_load(tmp_path: Path, damage, message: str) -> None:
    table = table_from_pairs(np.array([0, 1, 2]), np.array([1, 0, 0]), np.ones(3, np.float32), 4, top_n=5)
    table.save(tmp_path)
    assert ColistenTable.load(tmp_path, 4).nnz == 3
    damage(table).save(tmp_path)
    with pytest.raises(ValueError, match=message):
        ColistenTable.load(tmp_path, 4)
