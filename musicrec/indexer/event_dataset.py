"""The on-disk event log: a hive-partitioned Parquet dataset (``date=YYYY-MM-DD/part-*.parquet``).

The near-line consumer appends to it and offline jobs read it back. Kafka delivery is
at-least-once, so the same event may be written twice; ``read_events`` removes those
duplicates by ``event_id`` rather than trusting the writer. Each file appears under its final
name only once fully written and fsynced, so a reader (or ``pandas.read_parquet(dir)``)
never meets a half-written file; temp names start with ``.`` so pyarrow's dataset discovery
skips them, like it skips ``_dead_letter.jsonl``.
"""
from __future__ import annotations

import os
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from musicrec.data.events import Event

EVENT_COLUMNS: Final = ("event_id", "type", "track_id", "ts", "source", "client_id", "position", "model_version")

SCHEMA: Final = pa.schema([
    ("event_id", pa.string()),
    ("type", pa.string()),
    ("track_id", pa.string()),
    ("ts", pa.float64()),
    ("source", pa.string()),
    ("client_id", pa.string()),
    ("position", pa.float64()),
    ("model_version", pa.string()),
])


def _empty() -> pd.DataFrame:
    # Built from the schema so an empty result has the same dtypes as a full one.
    return SCHEMA.empty_table().to_pandas()


def _part_files(root: Path) -> list[Path]:
    """Finished part files only: temp files (leading ``.``) and ``_``-prefixed files are not data."""
    return sorted(p for p in root.glob("date=*/*.parquet") if not p.name.startswith((".", "_")))


def read_log_table(path: str | Path, columns: tuple[str, ...] = EVENT_COLUMNS) -> pa.Table:
    """Every event under ``path`` as one Arrow table of ``columns``, one row per ``event_id`` (first kept).

    Arrow all the way (no Python object per event), so millions of events read in seconds; an
    empty table with the schema when the directory is missing or empty.
    """
    root = Path(path)
    files = _part_files(root) if root.is_dir() else []
    wanted = list(dict.fromkeys(("event_id", *columns)))
    if not files:
        return SCHEMA.empty_table().select(list(columns))
    # Read files explicitly (not as a dataset) so the schema is ours, not inferred from the first file.
    table = pa.concat_tables(pq.read_table(f, schema=SCHEMA, columns=wanted) for f in files)
    position = pa.array(np.arange(table.num_rows, dtype=np.int64))
    first = table.select(["event_id"]).append_column("position", position) \
        .group_by("event_id", use_threads=False).aggregate([("position", "min")])
    keep = np.sort(first.column("position_min").to_numpy())
    return table.take(pa.array(keep)).select(list(columns))


def read_events(path: str | Path) -> pd.DataFrame:
    """Every event under ``path``, one row per ``event_id`` (first kept), sorted by (client_id, ts).

    Returns an empty frame with ``EVENT_COLUMNS`` when the directory is missing or empty.
    """
    frame = read_log_table(path).to_pandas()
    if frame.empty:
        return _empty()
    frame = frame.sort_values(["client_id", "ts"], kind="stable", ignore_index=True)
    return frame.loc[:, list(EVENT_COLUMNS)]


def partition_date(ts: float) -> str:
    """The UTC date (``YYYY-MM-DD``) that files ``ts`` under.

    Raises ``ValueError`` for a time no date can hold (infinite, or milliseconds sent as
    seconds), so a consumer can dead-letter that event instead of failing a whole batch.
    """
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"timestamp {ts!r} is not a date: {exc}") from None


def _write_atomic(table: pa.Table, folder: Path) -> Path:
    """Write ``table`` to a temp file, fsync it, rename it into place and fsync the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex}.parquet"
    final, temp = folder / name, folder / f".{name}.tmp"
    try:
        with open(temp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return final


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; some platforms cannot open directories.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_events(path: str | Path, events: Iterable[Event]) -> list[Path]:
    """Append ``events`` to the dataset at ``path``: one new file per UTC date of ``ts``.

    Returns the files written (none for no events); raises ``ValueError`` (before writing
    anything) when an event's ``ts`` has no date. When this returns, the files and their
    directory entries are on disk, so the caller may commit the Kafka offsets they cover.
    """
    root = Path(path)
    by_date: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_date[partition_date(event.ts)].append(event)
    written: list[Path] = []
    for date, group in sorted(by_date.items()):
        columns = {c: [getattr(e, c) for e in group] for c in EVENT_COLUMNS}
        written.append(_write_atomic(pa.table(columns, schema=SCHEMA), root / f"date={date}"))
    if written:
        _fsync_dir(root)
    return written
