"""The wire contract: explicit tags, strict decoding, subject building, and the public surface."""

from __future__ import annotations

import msgspec
import pytest

import messages
from messages import DecodeError, JobRequested, Names, decode_event, encode, subject


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
    assert subject("requested", "j1") == "aiimg.job.j1.requested"
    assert subject("dispatch", provider="grok") == "aiimg.job.*.dispatch.grok"
    assert subject("history", "j1") == "aiimg.job.j1.>"
    n = Names("t1")
    assert n.jobs_stream == "T1_JOBS" and n.job_id_of("t1.job.xyz.done") == "xyz"
    with pytest.raises(ValueError):
        subject("requested", "bad.id")
    with pytest.raises(ValueError):
        n.job_id_of("other.job.x.done")


def test_exports_are_sorted_and_importable() -> None:
    assert list(messages.__all__) == sorted(messages.__all__)
    for name in messages.__all__:
        assert hasattr(messages, name)
