"""Encoders and decoders, built once. JSON on the wire so any NATS client can take part."""

from __future__ import annotations

import msgspec

from ._events import JobEvent

__all__ = ("DecodeError", "decode_event", "encode")

DecodeError = msgspec.DecodeError
"""Raised when bytes are not valid JSON or not a known, well-formed event (includes ValidationError)."""

_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(JobEvent)

encode = _encoder.encode
"""Encode any message Struct to JSON bytes."""


def decode_event(data: bytes | bytearray | memoryview) -> JobEvent:
    """Decode one job event. Raises :data:`DecodeError` with a JSON path on bad input."""
    event: JobEvent = _event_decoder.decode(data)
    return event
