"""The event log on disk, and the near-line consumer against the real Kafka-protocol broker (tansu).

Joining a consumer group costs seconds on tansu, so the Kafka tests share one consumer run
(``first_run``) and assert different things about it.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from musicrec.data.events import EVENT_TYPES, Event, encode_event
from musicrec.indexer.cli import main
from musicrec.indexer.consume import DEAD_LETTER_NAME, ConsumeOptions, ConsumeResult, EventBatcher, consume
from musicrec.indexer.event_dataset import EVENT_COLUMNS, read_events, write_events

REPO = Path(__file__).resolve().parents[1]
DAY = 86_400.0
MIDNIGHT = 1_700_006_400.0  # 2023-11-15T00:00:00Z


def make_event(i: int, ts: float | None = None) -> Event:
    return Event(event_id=f"e{i:05d}-{uuid.uuid4().hex[:6]}", type=EVENT_TYPES[i % 3], track_id=f"track{i % 13}",
                 ts=MIDNIGHT + i * 7.0 if ts is None else ts, source="home" if i % 2 else None,
                 client_id=f"client-{i % 5}", position=float(i % 10) if i % 4 else None, model_version="v-test")


# --- the event log on disk ---------------------------------------------------------------


def test_write_partitions_by_utc_date_with_final_names_only(tmp_path: Path) -> None:
    events = [make_event(0, MIDNIGHT - 0.5), make_event(1, MIDNIGHT), make_event(2, MIDNIGHT + DAY + 1),
              make_event(3, MIDNIGHT + 10)]
    files = write_events(tmp_path, events)
    assert sorted(f.parent.name for f in files) == ["date=2023-11-14", "date=2023-11-15", "date=2023-11-16"]
    on_disk = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert on_disk == sorted(files)  # no temp file left behind
    assert all(re.fullmatch(r"part-[0-9a-f]{32}\.parquet", f.name) for f in files)
    by_file = {f.parent.name: pq.read_table(f).column("event_id").to_pylist() for f in files}
    assert by_file["date=2023-11-15"] == [events[1].event_id, events[3].event_id]
    assert write_events(tmp_path, []) == []


def test_read_sorts_by_client_and_time_and_drops_redelivered_duplicates(tmp_path: Path) -> None:
    events = [make_event(i, MIDNIGHT + (37 * i) % 100) for i in range(40)]
    write_events(tmp_path, events)
    write_events(tmp_path, events[:10])  # Kafka re-delivered the first batch
    frame = read_events(tmp_path)
    assert tuple(frame.columns) == EVENT_COLUMNS
    assert sorted(frame["event_id"]) == sorted(e.event_id for e in events)
    assert list(zip(frame["client_id"], frame["ts"])) == sorted((e.client_id, e.ts) for e in events)
    first = frame.set_index("event_id").loc[events[4].event_id]
    assert (first["track_id"], first["model_version"]) == ("track4", "v-test")
    assert pd.isna(first["source"]) and pd.isna(first["position"])
    assert len(pd.read_parquet(tmp_path)) == 50  # plain pandas sees the raw log, duplicates included


def test_read_of_missing_or_empty_log_is_an_empty_typed_frame(tmp_path: Path) -> None:
    (tmp_path / DEAD_LETTER_NAME).write_text('{"error": "x"}\n')
    (tmp_path / "date=2023-11-15").mkdir()
    (tmp_path / "date=2023-11-15" / ".part-abc.parquet.tmp").write_bytes(b"half a file")
    for path in (tmp_path / "missing", tmp_path):
        frame = read_events(path)
        assert frame.empty and tuple(frame.columns) == EVENT_COLUMNS
        assert frame["ts"].dtype == "float64" and frame["position"].dtype == "float64"
    write_events(tmp_path, [make_event(1)])
    assert len(read_events(tmp_path)) == 1 and len(pd.read_parquet(tmp_path)) == 1  # the temp file is ignored


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(table: object, where: object) -> None:
        where.write(b"PAR1 half")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write_events(tmp_path, [make_event(1)])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    with pytest.raises(ValueError, match="not a date"):
        write_events(tmp_path, [make_event(2), make_event(3, ts=1.7e12)])  # milliseconds sent as seconds
    assert read_events(tmp_path).empty


# --- the consumer's buffer, without a broker ---------------------------------------------


class RecordingConsumer:
    """Stands in for AIOKafkaConsumer where EventBatcher only commits."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


def record(partition: int, offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord("t", partition, offset, 0, 0, None, value, None, 0, len(value), [])


def test_a_failed_write_commits_nothing_and_the_retry_commits_everything(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def full_once(path: Path, batch: list[Event]) -> list[Path]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise OSError("disk full")
        return write_events(path, batch)

    monkeypatch.setattr("musicrec.indexer.consume.write_events", full_once)
    consumer = RecordingConsumer()
    batcher = EventBatcher(consumer, ConsumeOptions(out=tmp_path, bootstrap_servers="unused"))  # type: ignore[arg-type]
    events = [make_event(i) for i in range(4)]
    batcher.add({TopicPartition("t", 0): [record(0, 10 + i, encode_event(e)) for i, e in enumerate(events[:3])],
                 TopicPartition("t", 1): [record(1, 7, encode_event(events[3])), record(1, 8, b"junk")]})
    with pytest.raises(OSError, match="disk full"):
        asyncio.run(batcher.flush())
    assert consumer.commits == [] and batcher.buffered == 4 and isinstance(batcher.failure, OSError)
    asyncio.run(batcher.flush())
    assert calls == [4, 4]
    assert consumer.commits == [{TopicPartition("t", 0): 13, TopicPartition("t", 1): 9}]
    assert sorted(read_events(tmp_path)["event_id"]) == sorted(e.event_id for e in events)
    assert batcher.result.dead_letters == 1 and (tmp_path / DEAD_LETTER_NAME).is_file()


# --- the consumer against tansu ----------------------------------------------------------


MALFORMED = [b"not json", b'{"event_id": "x"}', b"\xff\xfe binary",
             encode_event(make_event(9)).replace(b'"track_view"', b'"purchase"'),
             encode_event(make_event(10, ts=1.7e12))]
"""Not JSON, wrong shape, not UTF-8, unknown type, a time with no date."""


async def produce(bootstrap: str, topic: str, values: list[tuple[str, bytes]], partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for key, value in values:
            await producer.send(topic, value, key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def committed_total(bootstrap: str, topic: str, group: str) -> int:
    """Offsets the group committed on ``topic``, summed (a consumer that never joins: no group rebalance)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetches metadata for every topic
        total = 0
        for partition in consumer.partitions_for_topic(topic) or ():
            total += await consumer.committed(TopicPartition(topic, partition)) or 0
        return total
    finally:
        await consumer.stop()


def quick_consumer(options: ConsumeOptions) -> AIOKafkaConsumer:
    """The indexer's consumer with a short session: tansu numbers a group's first generation 0,
    aiokafka then skips LeaveGroup on stop, and the next member waits for the session to expire."""
    return AIOKafkaConsumer(bootstrap_servers=options.bootstrap_servers, group_id=options.group_id,
                            auto_offset_reset="earliest", enable_auto_commit=False,
                            session_timeout_ms=3000, heartbeat_interval_ms=500)


@dataclass
class Run:
    bootstrap: str
    topic: str
    group: str
    out: Path
    sent: list[Event]
    result: ConsumeResult
    progress: list[str]


@pytest.fixture(scope="module")
def first_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """300 events and the malformed messages on 3 partitions, consumed once with small batches."""
    topic, group = f"events-{uuid.uuid4().hex[:10]}", f"group-{uuid.uuid4().hex[:8]}"
    out = tmp_path_factory.mktemp("events")
    sent = [make_event(i) for i in range(300)]
    values = [(e.client_id, encode_event(e)) for e in sent]
    values[50:50] = [(f"bad-{i}", raw) for i, raw in enumerate(MALFORMED)]
    progress: list[str] = []

    async def run() -> ConsumeResult:
        await produce(kafka_bootstrap, topic, values)
        options = ConsumeOptions(out=out, bootstrap_servers=kafka_bootstrap, topic=topic, group_id=group,
                                 max_events=128, until_idle_s=1.5, progress_interval_s=0.5)
        return await consume(options, progress=progress.append, make_consumer=quick_consumer)

    return Run(kafka_bootstrap, topic, group, out, sent, asyncio.run(run()), progress)


def test_n_events_in_n_rows_out(first_run: Run) -> None:
    ids = sorted(e.event_id for e in first_run.sent)
    assert first_run.result.events_written == 300
    assert len(first_run.result.files) > 1  # max_events=128 forced several flushes
    assert sorted(read_events(first_run.out)["event_id"]) == ids
    assert sorted(pd.read_parquet(first_run.out)["event_id"]) == ids
    assert first_run.result.commit_failures == 0
    assert any("lag" in line and "events/s" in line for line in first_run.progress)


def test_malformed_messages_are_dead_lettered_and_valid_ones_still_land(first_run: Run) -> None:
    lines = [json.loads(line) for line in (first_run.out / DEAD_LETTER_NAME).read_text().splitlines()]
    assert first_run.result.dead_letters == len(lines) == len(MALFORMED)
    assert sorted(base64.b64decode(line["value_base64"]) for line in lines) == sorted(MALFORMED)
    assert {line["topic"] for line in lines} == {first_run.topic}
    assert all(isinstance(line["partition"], int) and isinstance(line["offset"], int) and line["error"]
               for line in lines)
    assert next(line for line in lines if line["value"] == "not json")["error"].startswith("DecodeError")
    not_utf8 = next(line for line in lines if line["value"] is None)
    assert base64.b64decode(not_utf8["value_base64"]) == MALFORMED[2]
    assert len(read_events(first_run.out)) == 300


def test_a_second_run_in_the_group_reads_nothing_and_redelivery_is_deduplicated(first_run: Run,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "events"
    shutil.copytree(first_run.out, out)
    options = ConsumeOptions(out=out, bootstrap_servers=first_run.bootstrap, topic=first_run.topic,
                             group_id=first_run.group, until_idle_s=1.0)
    again = asyncio.run(consume(options, make_consumer=quick_consumer))
    assert (again.events_written, again.dead_letters, again.files) == (0, 0, [])
    assert asyncio.run(committed_total(first_run.bootstrap, first_run.topic, first_run.group)) == 300 + len(MALFORMED)
    write_events(out, first_run.sent[:40])  # what a crash between write and commit re-delivers
    assert len(pd.read_parquet(out)) == 340
    assert sorted(read_events(out)["event_id"]) == sorted(e.event_id for e in first_run.sent)


def test_sigterm_flushes_commits_and_exits_0(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic, group = f"events-{uuid.uuid4().hex[:10]}", f"group-{uuid.uuid4().hex[:8]}"
    sent = [make_event(i) for i in range(50)]
    asyncio.run(produce(kafka_bootstrap, topic, [(e.client_id, encode_event(e)) for e in sent], partitions=2))
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": topic}
    proc = subprocess.Popen([sys.executable, "-m", "musicrec.indexer", "consume", "--out", str(tmp_path), "--group", group,
                             "--max-age-s", "600", "--progress-s", "0.3"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    stderr = proc.stderr
    assert stderr is not None
    threading.Thread(target=lambda: [lines.put(line) for line in stderr], daemon=True).start()
    try:
        deadline = time.monotonic() + 40
        while "buffered 50 " not in (seen[-1] if seen else ""):  # all 50 read, none written yet
            try:
                seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail("no progress line with 50 buffered events; stderr:\n" + "".join(seen))
        assert "written 0 " in seen[-1]
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "events written: 50" in stdout
    assert sorted(read_events(tmp_path)["event_id"]) == sorted(e.event_id for e in sent)
    assert asyncio.run(committed_total(kafka_bootstrap, topic, group)) == 50


@pytest.mark.parametrize("given", ["", "  "])
def test_cli_without_bootstrap_servers_exits_2_with_one_line(given: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", given)
    assert main(["consume", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "KAFKA_BOOTSTRAP_SERVERS" in err
