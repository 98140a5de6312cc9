"""The event wire format, and the EventSink against the real Kafka-protocol broker (tansu)."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from hypothesis import given
from hypothesis import strategies as st

from musicrec.service.events import EventSink, open_event_sink
from musicrec.service.settings import Settings, SettingsError
from musicrec.data.events import EVENT_TYPES, TYPE_ALIASES, Event, decode_event, encode_event
from benchmarks.kafka import run_tansu
from tests.conftest import free_port

CLIENTS = [f"client-{i}" for i in range(7)]


def make_event(i: int, client_id: str | None = None) -> Event:
    return Event(event_id=f"e{i:05d}-{uuid.uuid4().hex[:6]}", type=EVENT_TYPES[i % 3], track_id=f"track{i % 13}",
                 ts=1_700_000_000.0 + i, source="home" if i % 2 else None,
                 client_id=client_id or CLIENTS[i % len(CLIENTS)], position=float(i % 10) if i % 4 else None,
                 model_version="v-test")


def new_topic() -> str:
    return f"events-{uuid.uuid4().hex[:10]}"


async def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 15.0) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record on ``topic``, read from the start until ``expected`` arrive or time runs out."""
    # No consumer group: joining one costs ~5 s on tansu, and a test reads everything anyway.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    got: list[tuple[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                got.extend((r.key, r.value) for r in records)
        if len(got) >= expected:  # anything extra (a duplicate) would show up in one more poll
            for records in (await consumer.getmany(timeout_ms=300)).values():
                got.extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return got


# --- wire format -------------------------------------------------------------------------

events = st.builds(Event, event_id=st.text(min_size=1), type=st.sampled_from(EVENT_TYPES), track_id=st.text(min_size=1),
                   ts=st.floats(allow_nan=False, allow_infinity=False), source=st.none() | st.text(),
                   client_id=st.text(min_size=1), position=st.none() | st.floats(allow_nan=False, allow_infinity=False),
                   model_version=st.text())


@given(events)
def test_encode_decode_round_trip(event: Event) -> None:
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize("raw", [
    b"not json", b"{", b"[]", b'{"event_id": "e1"}',
    encode_event(make_event(1)).replace(b'"type":"skip"', b'"type":"dance"'),
    encode_event(make_event(1)).replace(b'"type":"skip"', b'"type":"track_view_offline"'),
    encode_event(make_event(1)).replace(b'"ts":1700000001.0', b'"ts":"yesterday"'),
    encode_event(make_event(1)).replace(b'"client_id":"client-1"', b'"client_id":""'),
], ids=["garbage", "truncated", "array", "missing-fields", "unknown-type", "alias-not-canonical", "ts-string",
        "empty-client"])
def test_bad_messages_are_rejected(raw: bytes) -> None:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        decode_event(raw)


def test_aliases_map_to_canonical_types_and_constructing_an_unknown_type_fails() -> None:
    assert set(TYPE_ALIASES.values()) <= set(EVENT_TYPES)
    with pytest.raises(ValueError, match="unknown event type"):
        Event("e", "dance", "t", 0.0, None, "c", None, "v")


# --- the sink without Kafka --------------------------------------------------------------


@pytest.mark.anyio
async def test_disabled_sink_keeps_a_bounded_buffer_dropping_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="musicrec.service.events")
    settings = Settings.from_env({"EVENT_BUFFER_SIZE": "3"}, env_file=None)
    async with open_event_sink(settings) as sink:
        assert sink.status == "disabled"
        for i in range(100):
            sink.publish(make_event(i))
        assert (sink.buffered, sink.dropped, sink.produced) == (3, 97, 0)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("kept locally" in m for m in messages) == 1
    assert sum("buffer full" in m for m in messages) == 1  # rate-limited, not one line per drop


@pytest.mark.anyio
async def test_kafka_down_never_raises_and_buffers(closed_port: int, caplog: pytest.LogCaptureFixture,
                                                  tmp_path: Path) -> None:
    caplog.set_level(logging.WARNING, logger="musicrec.service.events")
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port}",
                                  "EVENT_SPILL_DIR": str(tmp_path)}, env_file=None)
    started = time.perf_counter()
    async with open_event_sink(settings) as sink:
        assert time.perf_counter() - started < 3.0  # start-up does not wait for Kafka
        assert sink.status == "degraded"
        for i in range(5):
            sink.publish(make_event(i))
        await asyncio.sleep(0.7)  # a reconnect attempt or two happen meanwhile
        assert (sink.status, sink.buffered, sink.dropped, sink.produced) == ("degraded", 5, 0, 0)
    assert time.perf_counter() - started < 5.0
    assert sum("kafka unreachable" in r.getMessage() for r in caplog.records) == 1  # once per outage


# --- the sink with the real broker --------------------------------------------------------

@pytest.mark.anyio
async def test_n_events_in_n_records_out_keyed_by_client(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = new_topic()
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": topic,
                                  "EVENT_SPILL_DIR": str(tmp_path)}, env_file=None)
    sent = [make_event(i) for i in range(300)]
    async with open_event_sink(settings) as sink:
        assert sink.status == "ok"
        for event in sent[:150]:
            sink.publish(event)
        await asyncio.sleep(0.05)  # some go while others are still being published
        for event in sent[150:]:
            sink.publish(event)
    assert (sink.produced, sink.dropped, sink.buffered) == (len(sent), 0, 0)
    records = await consume(kafka_bootstrap, topic, len(sent))
    assert len(records) == len(sent)
    received = [(key, decode_event(value)) for key, value in records]
    assert all(key == event.client_id.encode() for key, event in received)
    assert sorted(e.event_id for _, e in received) == sorted(e.event_id for e in sent)
    assert {e.event_id: e for _, e in received} == {e.event_id: e for e in sent}
    for client in CLIENTS:  # one key, one partition: each listener's events keep their order
        assert [e for _, e in received if e.client_id == client] == [e for e in sent if e.client_id == client]


@pytest.mark.anyio
async def test_a_full_buffer_drops_the_oldest_before_kafka_takes_the_rest(kafka_bootstrap: str) -> None:
    topic = new_topic()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)  # tansu also auto-creates on produce
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    sink = EventSink(kafka_bootstrap, topic, buffer_size=4)
    sent = [make_event(i, "one-client") for i in range(10)]
    for event in sent:  # before start: nothing can drain yet
        sink.publish(event)
    assert (sink.buffered, sink.dropped) == (4, 6)
    await sink.start()
    await sink.close()
    assert (sink.produced, sink.dropped, sink.buffered) == (4, 6, 0)
    records = await consume(kafka_bootstrap, topic, 4)
    assert [decode_event(v) for _, v in records] == sent[-4:]


@pytest.mark.anyio
async def test_kafka_down_at_start_then_up_delivers_everything_buffered(tmp_path: Path) -> None:
    port, topic = free_port(), new_topic()
    sink = EventSink(f"127.0.0.1:{port}", topic, backoff_initial_s=0.1, backoff_max_s=0.2, first_connect_wait_s=1.0)
    await sink.start()
    try:
        assert sink.status == "degraded"
        sent = [make_event(i) for i in range(40)]
        for event in sent:
            sink.publish(event)
        with run_tansu(port, tmp_path / "tansu.log") as bootstrap:
            deadline = time.monotonic() + 15
            while (sink.status != "ok" or sink.buffered) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert (sink.status, sink.produced, sink.buffered, sink.dropped) == ("ok", 40, 0, 0)
            records = await consume(bootstrap, topic, len(sent))
            assert sorted(decode_event(v).event_id for _, v in records) == sorted(e.event_id for e in sent)
            await sink.close()
    finally:
        await sink.close()


# --- credentials never in clear (issue 13) --------------------------------------------------------

def test_credentials_in_the_bootstrap_servers_are_refused_without_echoing_them() -> None:
    """``user:pass@host`` used to be accepted, and reached the service's and aiokafka's log lines."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "app:hunter2@broker:9092"}, env_file=None)
    message = str(info.value)
    assert "hunter2" not in message and "KAFKA_BOOTSTRAP_SERVERS" in message and "KAFKA_SASL_USERNAME" in message


@pytest.mark.parametrize(("env", "problem"), [
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SASL_USERNAME": "app", "KAFKA_SASL_PASSWORD": "pw"}, "need KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "GSSAPI", "KAFKA_SASL_USERNAME": "a",
      "KAFKA_SASL_PASSWORD": "b"}, "KAFKA_SASL_MECHANISM must be one of"),
], ids=["sasl-without-creds", "creds-without-sasl", "bad-protocol", "bad-mechanism"])
def test_kafka_security_settings_are_validated(env: dict, problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        Settings.from_env(env, env_file=None)


def test_the_sasl_password_is_a_secret() -> None:
    s = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": "scram-sha-512",
                           "KAFKA_SASL_USERNAME": "app", "KAFKA_SASL_PASSWORD": "hunter2"}, env_file=None)
    assert "hunter2" not in repr(s) and s.masked()["kafka_sasl_password"] == "***"
    kwargs = s.kafka_security.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "app" and kwargs["sasl_plain_password"] == "hunter2"
    assert kwargs["ssl_context"] is not None


@pytest.mark.anyio
async def test_the_producer_authenticates_over_sasl_and_no_log_line_has_the_password(
        kafka_bootstrap: str, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """tansu speaks no SASL: a producer that really tries SASL fails its handshake (a plain one would connect)."""
    caplog.set_level(logging.DEBUG)  # every logger, aiokafka's included
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                  "EVENT_SPILL_DIR": str(tmp_path),
                                  "KAFKA_SASL_USERNAME": "app", "KAFKA_SASL_PASSWORD": "hunter2-secret"}, env_file=None)
    async with open_event_sink(settings) as sink:
        sink.publish(make_event(1))
        await asyncio.sleep(0.5)
        assert sink.status == "degraded" and sink.produced == 0
    assert caplog.records and not [r for r in caplog.records if "hunter2" in r.getMessage()]
    assert any("kafka unreachable" in r.getMessage() for r in caplog.records)


def test_the_consumer_refuses_credentials_in_the_servers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from musicrec.indexer.cli import main

    assert main(["consume", "--out", str(tmp_path), "--bootstrap-servers", "app:hunter2@127.0.0.1:9092",
                 "--until-idle", "1"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "KAFKA_SASL_PASSWORD" in err


# --- nothing accepted is lost at shutdown (issue 13) ----------------------------------------------

def _pid_listening_as(listener_url: str) -> int:
    """The pid of the tansu process started with ``listener_url`` (from /proc, to freeze it with SIGSTOP)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if listener_url.encode() in cmdline.read_bytes().split(b"\0"):
                return int(cmdline.parent.name)
        except OSError:
            continue  # a process that ended meanwhile
    raise LookupError(f"no process runs with {listener_url}")


@pytest.mark.anyio
async def test_events_a_hung_broker_did_not_take_are_spilled_at_shutdown_and_sent_on_the_next_start(
        tmp_path: Path) -> None:
    """Broker hung (SIGSTOP), SIGTERM: the buffered events used to be dropped with a log line."""
    import os
    import signal

    port, topic, spill = free_port(), new_topic(), tmp_path / "spill"
    with run_tansu(port, tmp_path / "tansu.log") as bootstrap:
        tansu_pid = _pid_listening_as(f"tcp://127.0.0.1:{port}")
        sink = EventSink(bootstrap, topic, request_timeout_ms=1500, spill_dir=spill)
        await sink.start()
        first = [make_event(i) for i in range(20)]
        for event in first:
            sink.publish(event)
        deadline = time.monotonic() + 15
        while sink.produced < len(first) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sink.produced == len(first)
        os.kill(tansu_pid, signal.SIGSTOP)  # hung: connections stay open, nothing is answered
        try:
            later = [make_event(100 + i) for i in range(30)]
            for event in later:
                sink.publish(event)
            await asyncio.sleep(0.2)
            await sink.close(timeout_s=1.0)
            assert sink.spilled == len(later) and sink.buffered == 0
            files = sorted(spill.glob(f"{topic}+*.jsonl"))
            assert len(files) == 1
            assert [decode_event(line).event_id for line in files[0].read_bytes().splitlines()] == \
                [e.event_id for e in later]
        finally:
            os.kill(tansu_pid, signal.SIGCONT)
        again = EventSink(bootstrap, topic, spill_dir=spill)
        await again.start()
        assert again.restored == len(later) and not list(spill.glob(f"{topic}+*.jsonl"))
        deadline = time.monotonic() + 15
        while again.buffered and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await again.close()
        records = await consume(bootstrap, topic, len(first) + len(later))
        # Every accepted event arrived (a batch cut off by the hang may arrive twice: consumers dedupe on event_id).
        assert {decode_event(v).event_id for _, v in records} == {e.event_id for e in first + later}


@pytest.mark.anyio
async def test_a_spill_bigger_than_the_buffer_is_kept_not_dropped(closed_port: int, tmp_path: Path) -> None:
    topic = new_topic()
    down = f"127.0.0.1:{closed_port}"
    sink = EventSink(down, topic, first_connect_wait_s=0.2, spill_dir=tmp_path)
    await sink.start()
    events = [make_event(i) for i in range(8)]
    for event in events:
        sink.publish(event)
    await sink.close()
    assert sink.spilled == 8
    small = EventSink(down, topic, buffer_size=5, first_connect_wait_s=0.2, spill_dir=tmp_path)
    await small.start()
    assert (small.restored, small.buffered, small.dropped) == (5, 5, 0)
    rest = list(tmp_path.glob(f"{topic}+*.jsonl"))
    assert len(rest) == 1 and len(rest[0].read_bytes().splitlines()) == 3
    await small.close()  # its 5 are spilled again beside the 3: all 8 still on disk, in two files
    lines = [decode_event(line) for f in sorted(tmp_path.glob(f"{topic}+*.jsonl")) for line in f.read_bytes().splitlines()]
    assert sorted(e.event_id for e in lines) == sorted(e.event_id for e in events)
    other = EventSink(down, new_topic(), first_connect_wait_s=0.2, spill_dir=tmp_path)  # another topic's files stay
    await other.start()
    assert other.restored == 0
    await other.close()


@pytest.mark.anyio
async def test_without_kafka_nothing_is_spilled(tmp_path: Path) -> None:
    sink = EventSink("", "music-events", spill_dir=tmp_path)
    await sink.start()
    sink.publish(make_event(1))
    await sink.close()
    assert sink.spilled == 0 and not list(tmp_path.iterdir())


def test_the_spill_directory_is_a_setting() -> None:
    assert Settings().event_spill_dir == Path("var/event-spill")
    assert Settings.from_env({"EVENT_SPILL_DIR": "/srv/spill"}, env_file=None).event_spill_dir == Path("/srv/spill")
    assert Settings.from_env({"EVENT_SPILL_DIR": ""}, env_file=None).event_spill_dir is None
