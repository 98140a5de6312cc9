"""The near-line consumer: listener events from Kafka into the Parquet event log, at least once.

Offsets are committed only after the Parquet files holding those events (and the dead-letter
lines of the messages that could not be read) are fsynced. A crash therefore re-delivers,
never loses: the same event may land twice, and ``read_events`` removes duplicates by
``event_id``. A malformed message is written to ``_dead_letter.jsonl`` and skipped, because
one bad producer must not stop the log for everyone.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from musicrec.config import DEFAULT_KAFKA_TOPIC, KafkaSecurity
from musicrec.data.events import Event, decode_event
from musicrec.indexer.event_dataset import partition_date, write_events

log = logging.getLogger(__name__)

DEFAULT_TOPIC: Final = DEFAULT_KAFKA_TOPIC
DEFAULT_GROUP: Final = "musicrec-indexer"
DEAD_LETTER_NAME: Final = "_dead_letter.jsonl"
"""Leading ``_``: Parquet readers skip it when reading the event directory as a dataset."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ConsumeOptions:
    """What to read, where to write, and when to flush.

    ``until_idle_s`` (batch use) ends the run after that many seconds without a message,
    counted from the moment the group assigned partitions, since joining a group can take
    seconds on its own. None runs until ``stop`` is set.
    """

    out: Path
    bootstrap_servers: str
    topic: str = DEFAULT_TOPIC
    group_id: str = DEFAULT_GROUP
    max_events: int = 50_000
    max_age_s: float = 60.0
    until_idle_s: float | None = None
    progress_interval_s: float = 5.0
    poll_s: float = 0.5
    """Longest wait for messages before the loop re-checks stop, age and idleness."""
    security: KafkaSecurity = KafkaSecurity()
    """SASL/SSL, as the service's producer uses (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``)."""


@dataclass
class ConsumeResult:
    """Counts of one run (for the CLI summary and for tests)."""

    events_written: int = 0
    dead_letters: int = 0
    files: list[Path] = field(default_factory=list)
    commit_failures: int = 0


def kafka_consumer(options: ConsumeOptions) -> AIOKafkaConsumer:
    """The consumer the indexer uses: a group member that commits by hand, from the start when new."""
    return AIOKafkaConsumer(bootstrap_servers=options.bootstrap_servers, group_id=options.group_id,
                            client_id="musicrec-indexer", auto_offset_reset="earliest",
                            enable_auto_commit=False, **options.security.client_kwargs())


class DeadLetters:
    """Appends one JSON line per unreadable message to ``_dead_letter.jsonl``; opened on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._encoder = msgspec.json.Encoder()

    def add(self, record: ConsumerRecord, error: str) -> None:
        raw: bytes | None = record.value
        text: str | None = None
        if raw is not None:
            with contextlib.suppress(UnicodeDecodeError):
                text = raw.decode("utf-8")
        line = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                "timestamp_ms": record.timestamp, "error": error, "value": text,
                "value_base64": None if raw is None else base64.b64encode(raw).decode("ascii")}
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
        self._file.write(self._encoder.encode(line) + b"\n")

    def sync(self) -> None:
        """Make every line so far durable: called before the offsets covering them are committed."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _read(record: ConsumerRecord) -> Event | str:
    """The event in ``record``, or why it cannot be one."""
    if record.value is None:
        return "empty message value"
    try:
        event = decode_event(record.value)
        partition_date(event.ts)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return event


class EventBatcher(ConsumerRebalanceListener):
    """The buffer between Kafka and the event log, and the only place that commits offsets.

    It is also the rebalance listener: before partitions are taken away it flushes and
    commits, so the next owner starts where this one stopped instead of re-reading a batch.
    """

    def __init__(self, consumer: AIOKafkaConsumer, options: ConsumeOptions) -> None:
        self.consumer = consumer
        self.options = options
        self.result = ConsumeResult()
        self.dead = DeadLetters(options.out / DEAD_LETTER_NAME)
        self.read = 0
        """Messages taken from Kafka so far (events and dead letters)."""
        self.assigned_at: float | None = None
        self.last_message_at: float | None = None
        self._events: list[Event] = []
        self._offsets: dict[TopicPartition, int] = {}
        self._oldest: float | None = None
        self._lock = asyncio.Lock()
        self.failure: BaseException | None = None
        """Why the last flush failed; the main loop re-raises it (see ``flush``)."""

    @property
    def buffered(self) -> int:
        return len(self._events)

    def add(self, records: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        now = time.monotonic()
        for tp, batch in records.items():
            for record in batch:
                item = _read(record)
                if isinstance(item, str):
                    self.dead.add(record, item)
                    self.result.dead_letters += 1
                else:
                    self._events.append(item)
                self._offsets[tp] = record.offset + 1
                self.read += 1
                self.last_message_at = now
                if self._oldest is None:
                    self._oldest = now

    def due(self, now: float) -> bool:
        """A flush is due: the buffer is full or its oldest message waited ``max_age_s``."""
        return (len(self._events) >= self.options.max_events
                or (self._oldest is not None and now - self._oldest >= self.options.max_age_s))

    async def flush(self) -> None:
        """Write the buffer durably, then commit the offsets it covers; a no-op when nothing is pending."""
        async with self._lock:
            if not self._offsets:
                return
            events, offsets = self._events, self._offsets
            self._events, self._offsets, self._oldest = [], {}, None
            try:
                # Off the event loop: fsync may take a while and the group heartbeat must go on.
                files = await asyncio.to_thread(write_events, self.options.out, events)
                self.dead.sync()
            except BaseException as exc:
                # Put the batch back and remember why: aiokafka swallows errors raised in a
                # rebalance listener, and a later flush must not commit past unwritten events.
                self._events[:0] = events
                self._offsets = {**offsets, **self._offsets}
                self._oldest = time.monotonic()
                self.failure = exc
                raise
            self.result.files.extend(files)
            self.result.events_written += len(events)
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:
                # The data is on disk; Kafka will re-deliver it and read_events drops the duplicates.
                self.result.commit_failures += 1
                log.warning("commit of %d partition(s) failed (%s: %s); those events will be re-delivered",
                            len(offsets), type(exc).__name__, exc)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.flush()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned_at = time.monotonic()
        log.info("assigned %d partition(s) of %s in group %s", len(assigned), self.options.topic,
                 self.options.group_id)

    async def lag(self) -> int | None:
        """End offsets minus positions over the assigned partitions; None when Kafka cannot tell now."""
        partitions = list(self.consumer.assignment())
        if not partitions:
            return None
        try:
            async with asyncio.timeout(5):
                ends = await self.consumer.end_offsets(partitions)
                positions = {tp: await self.consumer.position(tp) for tp in partitions}
        except (KafkaError, TimeoutError):
            return None
        return sum(max(0, ends[tp] - positions[tp]) for tp in partitions)


async def _report(batcher: EventBatcher, progress: Progress, interval_s: float) -> None:
    """Emit a progress line every ``interval_s``; its own task so a slow lag query never delays reading."""
    last_read, last_t = batcher.read, time.monotonic()
    while True:
        await asyncio.sleep(interval_s)
        lag = await batcher.lag()
        now = time.monotonic()
        rate = (batcher.read - last_read) / max(now - last_t, 1e-9)
        last_read, last_t = batcher.read, now
        progress(f"consume: {rate:.1f} events/s  written {batcher.result.events_written}  "
                 f"buffered {batcher.buffered}  dead letters {batcher.result.dead_letters}  "
                 f"lag {'?' if lag is None else lag}")


async def consume(options: ConsumeOptions, *, stop: asyncio.Event | None = None, progress: Progress | None = None,
                  make_consumer: Callable[[ConsumeOptions], AIOKafkaConsumer] = kafka_consumer) -> ConsumeResult:
    """Read ``options.topic`` into ``options.out`` until ``stop`` is set or the topic stays idle.

    On a normal end the buffer is flushed and committed. If writing fails the error
    propagates and nothing more is committed, so the unwritten events are re-delivered.
    Kafka errors from ``start`` (broker unreachable) propagate as ``KafkaError``.
    """
    stop = stop or asyncio.Event()
    consumer = make_consumer(options)
    batcher = EventBatcher(consumer, options)
    consumer.subscribe([options.topic], listener=batcher)
    reporter: asyncio.Task[None] | None = None
    try:
        await consumer.start()
        if progress is not None:
            reporter = asyncio.get_running_loop().create_task(_report(batcher, progress, options.progress_interval_s))
        while not stop.is_set():
            records = await consumer.getmany(timeout_ms=int(options.poll_s * 1000),
                                             max_records=max(1, options.max_events - batcher.buffered))
            if batcher.failure is not None:
                raise batcher.failure
            batcher.add(records)
            now = time.monotonic()
            if batcher.due(now):
                await batcher.flush()
            if options.until_idle_s is not None and batcher.assigned_at is not None:
                since = max(batcher.assigned_at, batcher.last_message_at or batcher.assigned_at)
                if now - since >= options.until_idle_s:
                    break
        await batcher.flush()
    finally:
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        batcher.dead.close()
        await consumer.stop()
    return batcher.result


async def consume_until_signalled(options: ConsumeOptions, *, progress: Progress | None = None) -> ConsumeResult:
    """``consume`` with SIGTERM and SIGINT turned into a clean stop (flush, commit, return)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await consume(options, stop=stop, progress=progress)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
