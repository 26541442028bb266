"""The wire contract: explicit tags, strict decoding, subject building, and the public surface."""

from __future__ import annotations

import msgspec
import pytest

from aiimg import messages
from aiimg.messages import (
    AttemptFailed,
    DecodeError,
    JobCancelled,
    JobRequested,
    Names,
    decode_event,
    encode,
    event_subject,
    placed,
    subject,
)


def test_every_event_has_an_explicit_versioned_tag() -> None:
    union = messages.JobEvent.__args__  # type: ignore[attr-defined]
    tags = [cls.__struct_config__.tag for cls in union]
    assert len(set(tags)) == len(tags)
    for cls, tag in zip(union, tags, strict=True):
        assert isinstance(tag, str) and tag.endswith(".v1") and tag != cls.__name__


def test_round_trip_and_json_shape() -> None:
    ev = JobRequested(job_id="abc", op="draw", prompt="猫", output="16:9", at=1.5)
    raw = encode(ev)
    assert msgspec.json.decode(raw)["type"] == "job.requested.v1"
    assert decode_event(raw) == ev


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"type":"job.nope.v1","job_id":"a"}',
        b'{"type":"job.requested.v1","job_id":"a.b","op":"draw"}',  # dot would break subjects
        b'{"type":"job.requested.v1","job_id":"a","op":"paint"}',
        b'{"job_id":"a","op":"draw"}',
    ],
)
def test_bad_input_is_a_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_event(raw)


def test_unknown_fields_are_ignored_for_evolution() -> None:
    ev = decode_event(b'{"type":"job.requested.v1","job_id":"a","op":"draw","future_field":1}')
    assert isinstance(ev, JobRequested)


def test_subjects_come_from_one_builder() -> None:
    assert subject("requested", "j1", "bridge") == "aiimg.job.j1.requested.bridge"
    assert subject("cancel", "j1", "bridge") == "aiimg.job.j1.cancel.bridge"
    assert subject("attempt", "j1", "grok") == "aiimg.job.j1.attempt.grok"
    assert subject("attempt", "j1") == "aiimg.job.j1.attempt.*"
    assert subject("dispatch", token="grok") == "aiimg.job.*.dispatch.grok"
    assert subject("done", "j1", "bridge") == "aiimg.job.j1.done.bridge"
    assert subject("done", "j1") == "aiimg.job.j1.done.*"
    assert subject("done", token="bridge") == "aiimg.job.*.done.bridge"  # one client's results
    assert subject("history", "j1") == "aiimg.job.j1.>"
    n = Names("t1")
    assert n.jobs_stream == "T1_JOBS" and n.job_id_of("t1.job.xyz.done.bridge") == "xyz"
    assert n.parse("t1.job.xyz.done.bridge") == ("xyz", "done", "bridge")
    # A terminal event of the layout before ``done.<client>`` still reads as one (no client).
    assert n.parse("t1.job.xyz.done") == ("xyz", "done", "")
    assert n.deliver_consumer("bridge") == "deliver-bridge"
    assert n.parse("t1.job.xyz.attempt.grok") == ("xyz", "attempt", "grok")
    assert n.input_bucket("bridge") == "t1_in_bridge" and n.refs_bucket("bridge") == "t1_refs_bridge"
    assert n.selfie_key("bridge", "QQ:123") == "selfie.bridge.QQ_123"
    with pytest.raises(ValueError):
        subject("requested", "bad.id", "bridge")
    with pytest.raises(ValueError):
        subject("requested", "j1", "two.tokens")
    for bad in (
        "other.job.x.done.bridge",
        "t1.job.x.requested",  # no writer token
        "t1.job.x.attempt",
        "t1.job.x.done.bridge.extra",
        "t1.job.x.attempt.a.b",
        "t1.job.a*b.done.bridge",
        "t1.job.x.unknown.y",
    ):
        with pytest.raises(ValueError):
            n.parse(bad)


def test_an_event_is_placed_only_where_its_kind_and_writer_say() -> None:
    n = Names()
    ok = AttemptFailed(job_id="j", attempt=1, provider="grok", reason="timeout")
    assert placed(n.parse(event_subject(n, ok)), ok)
    assert not placed(n.parse("aiimg.job.j.attempt.local"), ok)  # another provider answering grok's attempt
    assert not placed(n.parse("aiimg.job.j.done.bridge"), ok)
    assert not placed(n.parse("aiimg.job.other.attempt.grok"), ok)
    req = JobRequested(job_id="j", op="draw")
    assert event_subject(n, req, "bridge") == "aiimg.job.j.requested.bridge"
    assert placed(n.parse("aiimg.job.j.requested.anyclient"), req)
    with pytest.raises(ValueError):
        event_subject(n, req)  # requests are always written under a client
    end = JobCancelled(job_id="j")
    assert event_subject(n, end, "bridge") == "aiimg.job.j.done.bridge"  # for the client that asked
    assert placed(n.parse("aiimg.job.j.done.bridge"), end)
    with pytest.raises(ValueError):
        event_subject(n, end)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"attempt.failed.v1","job_id":"j","attempt":1,"provider":"x","reason":"timeout","retry_after":1e400}',
        b'{"type":"attempt.dispatched.v1","job_id":"j","attempt":1,"provider":"x","op":"draw","deadline":-1e999}',
        b'{"type":"job.requested.v1","job_id":"j","op":"draw","at":1e309}',
    ],
)
def test_non_finite_numbers_do_not_decode(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_event(raw)


def test_non_finite_numbers_cannot_be_built() -> None:
    # msgspec would encode them as null, and no reader could decode the event again.
    with pytest.raises(ValueError, match="finite"):
        AttemptFailed(job_id="j", attempt=1, provider="x", reason="rate_limited", retry_after=float("inf"))
    with pytest.raises(ValueError, match="finite"):
        JobRequested(job_id="j", op="draw", at=float("nan"))


def test_exports_are_sorted_and_importable() -> None:
    assert list(messages.__all__) == sorted(messages.__all__)
    for name in messages.__all__:
        assert hasattr(messages, name)
