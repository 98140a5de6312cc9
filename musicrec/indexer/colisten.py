"""The co-listening model: for each track, the tracks listeners play with it, from the event log.

Why: what listeners put together (a scene, an era, a mood the charts share) is mostly not in
the 13 audio features, so no function of the features can learn it; a table of who-was-played-
with-whom can. It is an item-to-item model in the style of implicit's nearest-neighbour models
and Gorse's item neighbours: sparse co-occurrence counts, normalised against popularity, pruned
to the top ``top_n`` per track. No user-id model: a listener is only the session being played.

Sessions: one client's events ordered by ``ts``, split where the gap exceeds ``session_gap_s``.
A session's plays are its views and likes in order of first play, without the tracks skipped in
it. Two plays count as played together when at most ``window`` plays apart; each skip subtracts
``skip_weight`` from its pairs with the ``window`` plays just before it (skips are negative
evidence: "not after that"). Sessions older than the newest by ``half_life_days`` count half.

Weight of a pair: cosine with shrinkage, ``c(a, b) / (sqrt(n(a) · n(b)) + shrink)``, where ``c``
counts the sessions that played them together and ``n`` the sessions that played each: a hit
that is played with everything gets no weight from that alone, and a pair seen once among rare
tracks is discounted. Everything is vectorised over numpy arrays and scipy sparse matrices
(no Python loop per event or pair), so a log of millions of events builds in a minute or two.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from musicrec.index.colisten import ColistenTable

log = logging.getLogger(__name__)

DAY_S = 86_400.0
PLAY_TYPES = ("track_view", "like")
SKIP_TYPE = "skip"


@dataclass(frozen=True)
class ColistenConfig:
    session_gap_s: float = 30 * 60
    window: int = 20
    """Plays at most this far apart in a session count as played together."""
    shrink: float = 10.0
    """Added to the cosine's denominator: pairs among rarely played tracks weigh less."""
    skip_weight: float = 1.0
    """What one skip subtracts from its pairs with the plays just before it."""
    half_life_days: float | None = None
    """A session this much older than the newest counts half; None: every session counts the same."""
    top_n: int = 100
    """Co-listened tracks kept per track."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sessions:
    """A log's plays and skips as parallel arrays, grouped by session and in order within one."""

    play_session: np.ndarray   # int64 session number of each play
    play_row: np.ndarray       # int64 catalog row of each play (first play of a track in its session)
    play_client: np.ndarray    # int64 client code of each play
    skip_session: np.ndarray   # int64 session of each skip
    skip_row: np.ndarray       # int64 catalog row skipped
    skip_before: np.ndarray    # int64 index into the play arrays of the first play after the skip
    session_weight: np.ndarray  # float64 per session: recency decay (1.0 without a half-life)
    events_read: int
    unknown_track: int
    clients: int

    @property
    def n_sessions(self) -> int:
        return len(self.session_weight)

    def subset(self, keep_clients: np.ndarray) -> "Sessions":
        """Only the sessions of clients where ``keep_clients[client]`` is True (same session numbers)."""
        plays = keep_clients[self.play_client]
        kept_sessions = np.zeros(self.n_sessions, dtype=bool)
        kept_sessions[self.play_session[plays]] = True
        skips = kept_sessions[self.skip_session]
        # A skip's "first play after it" index must point into the subset's play arrays.
        new_index = np.cumsum(plays) - plays  # plays kept before each old index
        new_index = np.append(new_index, int(plays.sum()))
        return Sessions(self.play_session[plays], self.play_row[plays], self.play_client[plays],
                        self.skip_session[skips], self.skip_row[skips], new_index[self.skip_before[skips]],
                        self.session_weight, self.events_read, self.unknown_track,
                        int(len(np.unique(self.play_client[plays]))))


def sessions_from_log(table: pa.Table, track_ids: pa.Array | np.ndarray, config: ColistenConfig) -> Sessions:
    """Split a log (``event_dataset.read_log_table``) into sessions of catalog rows.

    Events about tracks this catalog lacks are dropped first, so they neither count as plays nor
    bridge a gap. ``track_ids`` are the catalog's ids in row order.
    """
    ids = track_ids if isinstance(track_ids, (pa.Array, pa.ChunkedArray)) else pa.array(track_ids, type=pa.string())
    rows = pc.index_in(table.column("track_id"), value_set=ids)
    known = pc.is_valid(rows)
    events_read = table.num_rows
    unknown = events_read - int(pc.sum(known).as_py() or 0)
    table = table.filter(known)
    row = pc.filter(rows, known).to_numpy(zero_copy_only=False).astype(np.int64)
    # Client codes by sorted id, not by first appearance: the log's order (Kafka partitions
    # interleave) then changes nothing, so the same events always give the same folds and table.
    encoded = table.column("client_id").combine_chunks().dictionary_encode()
    rank = np.empty(len(encoded.dictionary), dtype=np.int64)
    rank[pc.array_sort_indices(encoded.dictionary).to_numpy()] = np.arange(len(encoded.dictionary))
    client = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    ts = table.column("ts").to_numpy().astype(np.float64)
    kind = table.column("type")
    is_play = pc.is_in(kind, value_set=pa.array(PLAY_TYPES)).to_numpy(zero_copy_only=False)
    is_skip = pc.equal(kind, SKIP_TYPE).to_numpy(zero_copy_only=False)
    empty = np.empty(0, np.int64)
    if not len(row):
        return Sessions(empty, empty, empty, empty, empty, empty, np.empty(0), events_read, unknown, 0)

    order = np.lexsort((ts, client))  # by client, then time; equal times keep log order
    row, client, ts, is_play, is_skip = row[order], client[order], ts[order], is_play[order], is_skip[order]
    starts = np.ones(len(row), dtype=bool)
    starts[1:] = (client[1:] != client[:-1]) | (np.diff(ts) > config.session_gap_s)
    session = np.cumsum(starts) - 1
    n_sessions = int(session[-1]) + 1
    end_ts = np.full(n_sessions, -np.inf)
    np.maximum.at(end_ts, session, ts)
    if config.half_life_days:
        age_days = (end_ts.max() - end_ts) / DAY_S
        weight = np.power(0.5, age_days / config.half_life_days)
    else:
        weight = np.ones(n_sessions)

    # A track skipped anywhere in a session is no play of that session; a track played twice
    # counts once, at its first play. Pairs of (session, row) are encoded as one int64 key.
    key = session * (int(row.max()) + 1) + row
    skipped_keys = np.unique(key[is_skip])
    candidate = is_play & ~np.isin(key, skipped_keys)
    positions = np.flatnonzero(candidate)
    _, first = np.unique(key[positions], return_index=True)
    plays = np.sort(positions[first])  # event positions of the kept plays, in session order
    skips = np.flatnonzero(is_skip)
    return Sessions(
        play_session=session[plays], play_row=row[plays], play_client=client[plays],
        skip_session=session[skips], skip_row=row[skips],
        skip_before=np.searchsorted(plays, skips),
        session_weight=weight, events_read=events_read, unknown_track=unknown,
        clients=int(len(np.unique(client))),
    )


def _pair_counts(sessions: Sessions, n: int, config: ColistenConfig) -> sp.csr_matrix:
    """Upper-triangle (a < b) weighted co-play counts minus skip counts, summed over sessions.

    One offset at a time (plays ``d`` apart), so the arrays alive at once are a few times the
    number of plays, whatever the window.
    """
    s, r = sessions.play_session, sessions.play_row
    w = sessions.session_weight.astype(np.float32)
    total = sp.csr_matrix((n, n), dtype=np.float32)
    for d in range(1, config.window + 1):
        if d >= len(r):
            break
        same = np.flatnonzero(s[d:] == s[:-d])
        if not len(same):
            break  # no session has more than d plays
        a, b = r[same], r[same + d]
        total = total + _upper(a, b, w[s[same]], n)
    if config.skip_weight > 0 and len(sessions.skip_row):
        for d in range(1, config.window + 1):
            before = sessions.skip_before - d
            ok = np.flatnonzero(before >= 0)
            ok = ok[s[before[ok]] == sessions.skip_session[ok]]
            if not len(ok):
                break
            a, b = r[before[ok]], sessions.skip_row[ok]
            differ = a != b
            total = total + _upper(a[differ], b[differ],
                                   -config.skip_weight * w[sessions.skip_session[ok][differ]], n)
    return total


def _upper(a: np.ndarray, b: np.ndarray, weight: np.ndarray, n: int) -> sp.csr_matrix:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return sp.csr_matrix((weight, (lo, hi)), shape=(n, n))  # duplicates are summed


def fit_colisten(sessions: Sessions, n: int, config: ColistenConfig = ColistenConfig()) -> ColistenTable:
    """The top-``top_n`` co-listened tracks of every catalog row, by shrunk cosine (module docstring)."""
    upper = _pair_counts(sessions, n, config)
    upper.data[upper.data <= 0] = 0  # pairs whose skips outweigh their plays together carry nothing
    upper.eliminate_zeros()
    plays = np.bincount(sessions.play_row, weights=sessions.session_weight[sessions.play_session], minlength=n)
    rows = np.repeat(np.arange(n, dtype=np.int32), np.diff(upper.indptr))
    upper.data /= (np.sqrt(plays[rows] * plays[upper.indices]) + config.shrink).astype(np.float32)
    del rows
    return top_n_table((upper + upper.T).tocsr(), config.top_n)


def table_from_pairs(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, n: int, top_n: int) -> ColistenTable:
    """A table from (row, col, weight) triples, each pair once (for tests and small tools)."""
    return top_n_table(sp.csr_matrix((weights.astype(np.float32), (rows, cols)), shape=(n, n)), top_n)


def top_n_table(matrix: sp.csr_matrix, top_n: int, block_nnz: int = 1 << 22) -> ColistenTable:
    """Each row's ``top_n`` heaviest entries, heaviest first (ties: lower column first).

    Rows are ranked a block at a time (about ``block_nnz`` entries each), so the sort's
    temporaries stay small whatever the matrix holds.
    """
    n = matrix.shape[0]
    lengths = np.diff(matrix.indptr)
    indptr = np.concatenate([[0], np.cumsum(np.minimum(lengths, top_n))]).astype(np.int64)
    indices = np.empty(indptr[-1], dtype=np.int32)
    weights = np.empty(indptr[-1], dtype=np.float32)
    # Block edges: row numbers where the running entry count crosses a multiple of block_nnz.
    edges = np.unique(np.concatenate([[0], np.searchsorted(matrix.indptr, np.arange(0, matrix.nnz, block_nnz)), [n]]))
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        lo, hi = int(matrix.indptr[a]), int(matrix.indptr[b])
        if lo == hi:
            continue
        data, cols = matrix.data[lo:hi], matrix.indices[lo:hi]
        row = np.repeat(np.arange(b - a), lengths[a:b])
        order = np.lexsort((cols, -data, row))
        rank = np.arange(hi - lo) - (matrix.indptr[a:b] - lo)[row]
        keep = order[rank < top_n]
        indices[indptr[a]:indptr[b]] = cols[keep]
        weights[indptr[a]:indptr[b]] = data[keep]
    return ColistenTable(indptr, indices, weights)


def describe(sessions: Sessions, table: ColistenTable) -> dict[str, Any]:
    """Counts for the manifest and the build's summary."""
    return {
        "events_read": sessions.events_read, "events_unknown_track": sessions.unknown_track,
        "clients": sessions.clients, "sessions": int(len(np.unique(sessions.play_session))),
        "plays": int(len(sessions.play_row)), "skips": int(len(sessions.skip_row)),
        "tracks_with_colisten": int(np.count_nonzero(np.diff(table.indptr))), "pairs_kept": int(table.nnz),
    }
