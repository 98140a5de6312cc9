"""The listening event as it travels on Kafka: one schema for the service's producer and the offline consumer.

It lives in ``data/`` (not ``app/``) because the offline side reads the same topic and must
not import the web service. The wire format is msgspec JSON: readable with any Kafka tool,
and decoding validates types, so a malformed or foreign message fails loudly at the
consumer instead of becoming a half-filled record.
"""
from __future__ import annotations

from typing import Annotated, Final

import msgspec

EVENT_TYPES: Final = ("track_view", "skip", "like")
"""The canonical event types; only these are published and accepted on decode."""

TYPE_ALIASES: Final = {"track_view_offline": "track_view", "track_view_online": "track_view"}
"""Spellings a client may send (the seed dataset's); the service maps them before publishing."""

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class Event(msgspec.Struct, frozen=True):
    """One listener action.

    ``position`` is where the track sat in the list the listener saw (None when not from a
    list); ``model_version`` names the artefact set that produced that list, so offline
    evaluation can attribute a like or skip to the model that caused it.
    """

    event_id: NonEmpty
    type: str
    track_id: NonEmpty
    ts: float
    source: str | None
    client_id: NonEmpty
    position: float | None
    model_version: str

    def __post_init__(self) -> None:
        # Raised as ValueError here, msgspec turns it into a ValidationError while decoding.
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}; expected one of {', '.join(EVENT_TYPES)}")


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """The Kafka message value for ``event`` (JSON object, field names as in ``Event``)."""
    return _encoder.encode(event)


def decode_event(raw: bytes) -> Event:
    """Parse and validate one message value.

    Raises ``msgspec.DecodeError`` for bytes that are not JSON and ``msgspec.ValidationError``
    for JSON of the wrong shape or with an unknown event type (aliases are not accepted here:
    producers publish canonical types only).
    """
    return _decoder.decode(raw)
