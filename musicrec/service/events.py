"""The near-line event producer: listener events to Kafka without ever slowing a request.

``publish()`` only appends to a bounded in-process buffer; one background task owns the
Kafka producer and drains the buffer in batches. Kafka being slow, down at start-up or
gone mid-flight therefore never reaches a request: events wait in the buffer (the oldest
dropped, and counted, once it is full), unsent ones go back to its front in order, and
the task reconnects with backoff. With no bootstrap servers configured the buffer is all
there is (``status == "disabled"``), which keeps development free of a broker.

At shutdown, what Kafka has not acknowledged (after a bounded flush) is written to a spill
file (``EVENT_SPILL_DIR``) and sent first on the next start: with the broker hung, a SIGTERM
used to lose every buffered event (1,663 of 3,164 in one test). What a spill cannot save: a
worker killed outright (SIGKILL, OOM) loses its buffer, and a full buffer drops its oldest.
"""
from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import time
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Final

import msgspec

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ClusterAuthorizationFailedError, KafkaError, UnknownError, UnsupportedVersionError

from musicrec.config import KafkaSecurity, mask_url
from musicrec.data.events import Event, decode_event, encode_event

if TYPE_CHECKING:
    from musicrec.service.settings import Settings

log = logging.getLogger(__name__)

# Errors a broker gives when it cannot grant an idempotent producer id (InitProducerId). The
# tansu broker used in tests answers aiokafka's InitProducerId v0 with UnknownError; old or
# locked-down Kafka clusters give the other two. The sink then carries on without idempotence.
IDEMPOTENCE_REFUSED: Final = (UnknownError, UnsupportedVersionError, ClusterAuthorizationFailedError)
KAFKA_DOWN: Final = (KafkaError, OSError, TimeoutError)


class EventSink:
    """Accepts events synchronously and ships them to Kafka from one background task.

    Counters: ``produced`` (acknowledged by Kafka), ``dropped`` (lost to a full buffer),
    ``buffered`` (accepted, not yet acknowledged). ``status`` is "ok", "degraded" (Kafka
    configured but not reachable; events are being kept) or "disabled" (no Kafka configured).
    """

    def __init__(self, bootstrap_servers: str, topic: str, *, buffer_size: int = 10_000,
                 batch_size: int = 500, backoff_initial_s: float = 0.5, backoff_max_s: float = 10.0,
                 drop_log_interval_s: float = 10.0, request_timeout_ms: int = 15_000,
                 first_connect_wait_s: float = 2.0, security: KafkaSecurity = KafkaSecurity(),
                 spill_dir: Path | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers.strip()
        self.spill_dir = spill_dir
        """Where undelivered events go at shutdown and come back from at start; None: nowhere."""
        self.spilled = 0
        """Events this sink wrote to a spill file at close."""
        self.restored = 0
        """Events this sink took back from spill files at start (sent before any new one)."""
        self.security = security
        # What log lines name: never a password, even if one was put in the servers (Settings refuses that).
        self._where = ",".join(mask_url(part) for part in self.bootstrap_servers.split(","))
        self.topic = topic
        self.batch_size = batch_size
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.drop_log_interval_s = drop_log_interval_s
        self.request_timeout_ms = request_timeout_ms
        self.first_connect_wait_s = first_connect_wait_s
        self.produced = 0
        self.dropped = 0
        self.idempotent = True
        """False once the broker refused an idempotent producer id and the sink went on without."""
        self._buffer: deque[Event] = deque(maxlen=buffer_size)
        self._in_flight = 0
        self._status = "disabled" if not self.bootstrap_servers else "degraded"
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._outage_logged = False
        self._last_drop_log = float("-inf")

    @classmethod
    def from_settings(cls, settings: "Settings") -> "EventSink":
        return cls(settings.kafka_bootstrap_servers, settings.kafka_topic, buffer_size=settings.event_buffer_size,
                   security=settings.kafka_security, spill_dir=settings.event_spill_dir)

    @property
    def status(self) -> str:
        return self._status

    @property
    def buffered(self) -> int:
        return len(self._buffer) + self._in_flight

    @property
    def buffer_size(self) -> int:
        return self._buffer.maxlen or 0

    async def start(self) -> None:
        """Start the sender task; wait briefly for a first connection so status is meaningful at once.

        Returns within ``first_connect_wait_s`` whatever Kafka does: the service must start
        and serve with Kafka down.
        """
        if not self.bootstrap_servers:
            log.info("no KAFKA_BOOTSTRAP_SERVERS: events are kept locally in a buffer of %d (oldest dropped)",
                     self.buffer_size)
            return
        if self._task is not None:
            return
        self._restore_spilled()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-sink")
        self._task.add_done_callback(self._task_done)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.first_connect_wait_s):
                await self._first_attempt.wait()

    def publish(self, event: Event) -> None:
        """Accept ``event``; never blocks and never raises for Kafka trouble."""
        if len(self._buffer) == self._buffer.maxlen:
            self._count_dropped(1)  # deque(maxlen) drops the oldest on append
        self._buffer.append(event)
        self._idle.clear()
        self._wakeup.set()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flush what Kafka will take within ``timeout_s``, then stop the task and the producer."""
        if self._task is not None:
            if self._status == "ok" and self.buffered:
                try:
                    async with asyncio.timeout(timeout_s):
                        await self._idle.wait()
                except TimeoutError:
                    log.warning("event sink: flush timed out after %.1fs", timeout_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.buffered and self.bootstrap_servers:
            if self.spill_dir is None:
                log.warning("event sink closed with %d events not delivered to kafka (no EVENT_SPILL_DIR: lost)",
                            self.buffered)
            else:
                self._spill(self.spill_dir)

    # --- spill files -------------------------------------------------------------------

    def _spill_pattern(self) -> str:
        # "+" cannot occur in a topic name, so one topic's files never match another's.
        return f"{glob.escape(self.topic)}+*.jsonl"

    def _write_spill(self, directory: Path, events: list[Event]) -> Path:
        """Events, one JSON line each, into a new file made visible only once complete and fsynced."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.topic}+{time.time_ns()}-{os.getpid()}.jsonl"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            fh.writelines(encode_event(e) + b"\n" for e in events)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    def _spill(self, directory: Path) -> None:
        """At close: whatever Kafka did not acknowledge (the task is stopped, so the buffer holds it all)."""
        events = list(self._buffer)
        try:
            path = self._write_spill(directory, events)
        except OSError as exc:
            log.error("event sink closed with %d events not delivered to kafka, and writing them to %s failed "
                      "(%s): they are lost", len(events), self.spill_dir, exc)
            return
        self._buffer.clear()
        self.spilled += len(events)
        log.warning("event sink closed with %d events not delivered to kafka: spilled to %s, sent on the next start",
                    len(events), path)

    def _restore_spilled(self) -> None:
        """At start: take earlier spill files (oldest first) into the buffer, ahead of any new event.

        Each file is claimed by a rename first, so with several workers starting at once each file
        goes to exactly one. What does not fit the buffer is spilled again, not dropped.
        """
        directory = self.spill_dir
        if directory is None or not directory.is_dir():
            return
        for path in sorted(directory.glob(self._spill_pattern())):
            claimed = path.with_name(f".claimed-{os.getpid()}-{path.name}")
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another worker took it
            events, unreadable = [], 0
            with open(claimed, "rb") as fh:
                for line in fh:
                    try:
                        events.append(decode_event(line))
                    except msgspec.MsgspecError:
                        unreadable += 1
            room = self.buffer_size - len(self._buffer)
            taken, rest = events[:room], events[room:]
            self._buffer.extend(taken)
            if rest:
                self._write_spill(directory, rest)
            claimed.unlink()
            self.restored += len(taken)
            log.warning("event sink: %d events spilled at an earlier shutdown (%s) go to kafka first%s%s",
                        len(taken), path.name, f"; {len(rest)} wait in a new spill file (buffer full)" if rest else "",
                        f"; {unreadable} unreadable lines skipped" if unreadable else "")
        if self._buffer:
            self._idle.clear()
            self._wakeup.set()

    # --- the sender task ---------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.backoff_initial_s
        try:
            while True:
                producer = await self._connect()
                if producer is None:
                    self._first_attempt.set()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff_max_s)
                    continue
                self._producer = producer
                self._connected()
                self._first_attempt.set()
                delay = self.backoff_initial_s
                try:
                    await self._drain(producer)
                except KAFKA_DOWN as exc:
                    self._disconnected(exc)
                finally:
                    self._producer = None
                    await self._stop_producer(producer)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
        finally:
            self._first_attempt.set()

    async def _connect(self) -> AIOKafkaProducer | None:
        """One connection attempt (two when the broker refuses idempotence); None on failure."""
        while True:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all",
                                        enable_idempotence=self.idempotent, linger_ms=5,
                                        request_timeout_ms=self.request_timeout_ms, **self.security.client_kwargs())
            try:
                await producer.start()
                return producer
            except IDEMPOTENCE_REFUSED as exc:
                await self._stop_producer(producer)
                if not self.idempotent:
                    self._disconnected(exc)
                    return None
                self.idempotent = False
                log.warning("kafka refused an idempotent producer (%s); producing with acks=all without "
                            "idempotence (a retried batch may be duplicated; consumers dedupe on event_id)",
                            type(exc).__name__)
            except KAFKA_DOWN as exc:
                await self._stop_producer(producer)
                self._disconnected(exc)
                return None

    async def _drain(self, producer: AIOKafkaProducer) -> None:
        """Send batches until the buffer is empty, then sleep until publish() wakes us."""
        while True:
            if not self._buffer:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
            self._in_flight = len(batch)
            try:
                error = await self._send(producer, batch)
            finally:
                self._in_flight = 0
            if error is not None:
                raise error

    async def _send(self, producer: AIOKafkaProducer, batch: list[Event]) -> BaseException | None:
        """Send ``batch`` and wait for Kafka's acknowledgements; return the first error, if any.

        Whatever Kafka did not acknowledge goes back to the front of the buffer in order,
        also when the task is cancelled mid-batch (at close), so no accepted event vanishes
        from the counters.
        """
        futures: list[asyncio.Future[object]] = []
        error: BaseException | None = None
        try:
            try:
                for event in batch:
                    futures.append(await producer.send(self.topic, value=encode_event(event),
                                                       key=event.client_id.encode("utf-8")))
            except KAFKA_DOWN as exc:
                error = exc
            if futures:
                await asyncio.wait(futures)
        finally:
            failed: list[Event] = []
            for i, event in enumerate(batch):
                future = futures[i] if i < len(futures) else None
                if future is not None and future.done() and not future.cancelled() and future.exception() is None:
                    self.produced += 1
                    continue
                failed.append(event)
                if future is not None and future.done() and not future.cancelled():
                    error = error or future.exception()
            self._requeue(failed)
        return error

    def _requeue(self, events: list[Event]) -> None:
        """Put unsent events back at the front, in order; if the buffer filled meanwhile, the oldest go."""
        room = (self._buffer.maxlen or 0) - len(self._buffer)
        if len(events) > room:
            self._count_dropped(len(events) - room)
            events = events[len(events) - room:] if room > 0 else []
        self._buffer.extendleft(reversed(events))

    def _count_dropped(self, n: int) -> None:
        self.dropped += n
        now = time.monotonic()
        if now - self._last_drop_log >= self.drop_log_interval_s:
            self._last_drop_log = now
            log.warning("event buffer full (%d): dropping the oldest events, %d dropped so far",
                        self.buffer_size, self.dropped)

    def _connected(self) -> None:
        if self._outage_logged:
            log.warning("kafka reachable again at %s; sending %d buffered events", self._where, self.buffered)
        self._outage_logged = False
        self._status = "ok"

    def _disconnected(self, exc: BaseException) -> None:
        self._status = "degraded"
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("kafka unreachable at %s (%s: %s); buffering events (up to %d) and retrying with backoff",
                        self._where, type(exc).__name__, exc, self.buffer_size)
        else:
            log.debug("kafka still unreachable: %s", exc)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """The sender loop only ends by cancellation; anything else is a bug worth an ERROR line."""
        if not task.cancelled() and task.exception() is not None:
            self._status = "degraded"
            log.error("event sink task died; events now stay in the buffer", exc_info=task.exception())

    async def _stop_producer(self, producer: AIOKafkaProducer) -> None:
        try:
            async with asyncio.timeout(2.0):
                await producer.stop()
        except (*KAFKA_DOWN, TimeoutError) as exc:
            log.debug("kafka producer did not stop cleanly: %s", exc)


@asynccontextmanager
async def open_event_sink(settings: "Settings") -> AsyncIterator[EventSink]:
    """An EventSink from settings, started; flushed (up to 5 s) and stopped on exit."""
    sink = EventSink.from_settings(settings)
    try:
        await sink.start()
        yield sink
    finally:
        await sink.close()
