"""Bad input on the bus: property-based fuzzing of every decoder, and junk on every subject the actors read.

* Decoders (job events, object-store metadata, selfie reference index, config, subject
  parsing) either return a value or raise their documented error — never anything else —
  and valid events survive an encode/decode round trip unchanged.
* Hypothesis-generated junk (raw bytes, JSON of every shape, events with known tags and
  wrong fields) and well-formed-but-wrong events are published on every subject the
  router and the provider actors consume. Nothing crashes an actor: each bad message is
  terminated (delivered once, never redelivered), logged once with the reason, and the
  same actors still complete a normal job afterwards.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import anyio
import msgspec
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js.errors import NoStreamResponseError

from aiimg.messages import (
    FAILURE_REASONS,
    AttemptDispatched,
    AttemptFailed,
    BlobRef,
    CancelRequested,
    DecodeError,
    JobCompleted,
    JobRequested,
    Names,
    decode_event,
    encode,
)
from aiimg.messages._subjects import Kind
from aiimg.services.app import selfie as selfie_mod
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import config_from_dict
from aiimg.services.domain.errors import ConfigError
from aiimg.services.infra import blobs as blobs_mod
from aiimg.services.infra.bus import Bus
from aiimg.services.providers.local import LocalProvider

from ..helpers import ScriptedProvider, succeeding

pytestmark = pytest.mark.anyio

TAGS = [
    "job.requested.v1",
    "job.cancel_requested.v1",
    "attempt.dispatched.v1",
    "attempt.succeeded.v1",
    "attempt.failed.v1",
    "job.completed.v1",
    "job.failed.v1",
    "job.cancelled.v1",
    "job.requested.v2",
    "",
]
FIELDS = ["job_id", "at", "op", "prompt", "inputs", "backend", "output", "attempt", "provider", "reason", "result",
          "deadline", "not_before", "chain", "failures", "message", "origin", "status", "retry_after"]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {"type": st.sampled_from(TAGS)},
    optional={f: json_values for f in FIELDS},
)
junk = st.one_of(
    st.binary(max_size=400),
    json_values.map(lambda v: json.dumps(v).encode()),
    event_like.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=200).map(str.encode),
)

tokens = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
blob_refs = st.builds(
    BlobRef,
    name=tokens.map(lambda t: "sha256-" + t),
    size=st.integers(0, 2**40),
    sha256=st.from_regex(r"\A[0-9a-f]{64}\Z"),
    mime=st.sampled_from(["image/png", "image/jpeg", "video/mp4"]),
    width=st.integers(0, 10_000),
    height=st.integers(0, 10_000),
)
valid_events = st.one_of(
    st.builds(
        JobRequested,
        job_id=tokens,
        op=st.sampled_from(["draw", "edit", "selfie", "video"]),
        prompt=st.text(max_size=200),
        inputs=st.lists(blob_refs, max_size=3),
        backend=st.text(max_size=20),
        output=st.text(max_size=20),
        origin=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    ),
    st.builds(CancelRequested, job_id=tokens, reason=st.text(max_size=100)),
    st.builds(
        AttemptDispatched,
        job_id=tokens,
        attempt=st.integers(1, 50),
        provider=st.from_regex(r"\A[a-z0-9_]{1,32}\Z"),
        op=st.sampled_from(["draw", "edit", "selfie", "video"]),
        chain=st.lists(st.from_regex(r"\A[a-z0-9_]{1,32}\Z"), max_size=4),
        deadline=st.floats(0, 2e9),
    ),
    st.builds(
        AttemptFailed,
        job_id=tokens,
        attempt=st.integers(1, 50),
        provider=st.from_regex(r"\A[a-z0-9_]{1,32}\Z"),
        reason=st.sampled_from(FAILURE_REASONS),
        message=st.text(max_size=200),
        status=st.integers(0, 599),
        retry_after=st.floats(0, 1e4),
    ),
)


# ---- decoders ------------------------------------------------------------------------------------------


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(junk)
def test_event_decoder_returns_an_event_or_raises_decode_error(data: bytes) -> None:
    try:
        event = decode_event(data)
    except DecodeError:
        return
    assert event.__struct_config__.tag in TAGS
    assert decode_event(encode(event)) == event


@settings(max_examples=200)
@given(valid_events)
def test_valid_events_round_trip(event: Any) -> None:
    assert decode_event(encode(event)) == event


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())))
def test_blob_metadata_and_selfie_index_decoders_only_raise_decode_errors(data: bytes) -> None:
    for decoder in (blobs_mod._decode_info, selfie_mod._index_decoder.decode):
        try:
            decoder(data)
        except msgspec.DecodeError:  # ValidationError is a DecodeError
            pass


@settings(max_examples=300)
@given(
    st.dictionaries(st.sampled_from(["draw", "edit", "nats", "actors", "policy", "network", "x", "log"]), json_values)
)
def test_config_from_any_dict_is_a_config_or_a_config_error(data: dict[str, Any]) -> None:
    try:
        config_from_dict(data)
    except ConfigError as exc:
        assert str(exc)


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_subject_parsing_returns_a_token_or_raises_value_error(subject: str) -> None:
    names = Names("aiimg")
    try:
        job_id = names.job_id_of(subject)
    except ValueError:
        return
    assert subject.startswith("aiimg.job.") and job_id == subject.split(".")[2]


# ---- junk on the bus -----------------------------------------------------------------------------------


def _payloads(count: int) -> list[bytes]:
    """``count`` hypothesis-generated messages that do not decode as an event."""
    found: list[bytes] = []

    @settings(max_examples=count * 3, database=None, suppress_health_check=list(HealthCheck))
    @given(junk)
    def collect(data: bytes) -> None:
        if len(found) >= count:
            return
        try:
            decode_event(data)
        except DecodeError:
            found.append(data)

    collect()
    return found


def _wrong_but_valid(names: Names) -> list[tuple[str, bytes]]:
    """Well-formed events that are wrong where they are: each must be refused, not acted on."""
    a, b = f"ghost-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    return [
        # the body names another job than the subject
        (names.subject("requested", a, "local"), encode(JobRequested(job_id=b, op="draw", prompt="mismatch"))),
        # a result and a cancel for a job that was never requested
        (
            names.subject("attempt", a, "local"),
            encode(AttemptFailed(job_id=a, attempt=1, provider="local", reason="network")),
        ),
        (names.subject("cancel", a, "local"), encode(CancelRequested(job_id=a, reason="who?"))),
        # a request published on the attempt subject, and a dispatch for another provider on local's queue
        (names.subject("attempt", a, "local"), encode(JobRequested(job_id=a, op="draw"))),
        # a result that claims another provider's attempt
        (
            names.subject("attempt", a, "grok"),
            encode(AttemptFailed(job_id=a, attempt=1, provider="local", reason="auth")),
        ),
        (
            names.subject("dispatch", a, "local"),
            encode(AttemptDispatched(job_id=a, attempt=1, provider="grok", op="draw", deadline=4e9)),
        ),
    ]


async def test_junk_on_every_consumed_subject_is_terminated_once_and_nothing_crashes(bus: Bus) -> None:
    names = bus.names
    payloads = _payloads(60)
    kinds: list[Kind] = ["requested", "cancel", "attempt", "dispatch"]
    sent: list[tuple[str, bytes]] = []
    for i, data in enumerate(payloads * 1):
        kind = kinds[i % len(kinds)]
        job = f"junk-{i}-{uuid.uuid4().hex[:6]}"
        subject = names.subject(kind, job, "local")
        sent.append((subject, data))
    sent += _wrong_but_valid(names)
    # A subject under the prefix that is not one of the layout's (a job id with dots): no stream
    # takes it, so its publisher hears so at once instead of waiting on a job nobody will see.
    with pytest.raises(NoStreamResponseError):
        await bus.js.publish(f"{names.prefix}.job.x.y.z.requested.local", b"\xff\x00", stream=names.jobs_stream)

    with structlog.testing.capture_logs() as logs:
        async with running(Stack(bus, providers=[LocalProvider(bus.config)])) as stack:
            for subject, data in sent:
                await bus.js.publish(subject, data, stream=names.jobs_stream)
            # Everything consumed and settled: nothing left pending or waiting for an ack.
            with anyio.fail_after(30):
                while True:
                    router = await bus.js.consumer_info(names.jobs_stream, names.router_consumer)
                    local = await bus.js.consumer_info(names.jobs_stream, names.provider_consumer("local"))
                    if (
                        router.num_pending == 0
                        and router.num_ack_pending == 0
                        and local.num_pending == 0
                        and (local.num_ack_pending == 0)
                    ):
                        break
                    await anyio.sleep(0.1)
            # The same actors still do real work.
            end = await Client(bus).wait(await Client(bus).submit("draw", "still alive", output="64x64"), timeout=30)
            assert isinstance(end, JobCompleted)
            assert all(not a.consumer._stopping.is_set() for a in [stack.router, *stack.providers] if a)
        router = await bus.js.consumer_info(names.jobs_stream, names.router_consumer)
        local = await bus.js.consumer_info(names.jobs_stream, names.provider_consumer("local"))

    rejected = [entry for entry in logs if entry.get("event") == "rejected_message"]
    per_message = Counter((entry["subject"], entry.get("seq")) for entry in rejected)
    crashes = [entry for entry in logs if entry.get("event") in ("handler_crashed", "provider_bug")]
    expected = len(sent)
    print(
        f"\nbad input: published={len(sent)} rejected={len(rejected)} redelivered={router.num_redelivered + local.num_redelivered}"
    )
    assert crashes == []
    seen = {entry["subject"] for entry in rejected}
    assert [s for s, _ in sent if s not in seen] == []
    assert len(rejected) == expected, [e for e in rejected][:5]
    assert set(per_message.values()) == {1}, "a bad message was logged (delivered) more than once"
    assert all(entry.get("reason") for entry in rejected)
    assert router.num_redelivered == 0 and local.num_redelivered == 0


async def test_an_event_on_a_subject_where_it_does_not_belong_is_ignored(bus: Bus) -> None:
    """A provider may publish on ``*.attempt``; it must not start or end jobs through it."""
    names = bus.names
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    fake_ref = BlobRef(name="sha256-" + "0" * 64, size=1, sha256="0" * 64, mime="image/png")
    with structlog.testing.capture_logs() as logs:
        provider = ScriptedProvider(bus.config, "local", succeeding(delay=1.0))
        async with running(Stack(bus, providers=[provider])):
            # A request on the attempt subject: refused, no job runs.
            await bus.js.publish(
                names.subject("attempt", ghost, "local"), encode(JobRequested(job_id=ghost, op="draw"))
            )
            # A forged completion of a real job, on the attempt subject, while it runs.
            client = Client(bus)
            real = await client.submit("draw", "real job")
            forged = JobCompleted(job_id=real, result=fake_ref, provider="local", attempt=1)
            await bus.js.publish(names.subject("attempt", real, "local"), encode(forged))
            end = await client.wait(real, timeout=30)
    assert isinstance(end, JobCompleted) and end.result != fake_ref
    assert await bus.history(ghost) == []
    assert all(e.result != fake_ref for _, e in await bus.history(real) if isinstance(e, JobCompleted))
    assert len(provider.calls) == 1
    reasons = [e["reason"] for e in logs if e.get("event") == "rejected_message"]
    assert "job.requested.v1 does not belong on this subject" in reasons
    assert "job.completed.v1 does not belong on this subject" in reasons
