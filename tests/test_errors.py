"""The one mapping from errors to reasons (``providers/_errors.py``): what each error from below
the providers means for an attempt, the shared moderation matcher, and the classifier's order —
pure functions, no upstream needed (the provider tests check every upstream's replies)."""

from __future__ import annotations

import re

import httpx
import pytest

from aiimg.services.domain.errors import (
    AddressRefused,
    BadEncoding,
    BlobError,
    BusError,
    HostUnresolved,
    MediaError,
    ProviderFailure,
    ResponseTooLarge,
)
from aiimg.services.providers._errors import Meaning, Said, Words, classify, failure_for, moderated


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (MediaError("no_image", "placeholder image (12 bytes)"), "no_image"),
        (MediaError("invalid", "image cannot be decoded"), "invalid_response"),
        (MediaError("too_large", "image too large"), "invalid_response"),
        (ResponseTooLarge("upstream response exceeds 10 bytes"), "invalid_response"),
        (BadEncoding("upstream compressed body ends early"), "invalid_response"),
        (AddressRefused("refusing a private address: 127.0.0.1"), "invalid_response"),
        (HostUnresolved("cannot resolve x (no address); not fetched"), "network"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectError("refused"), "network"),
    ],
)
def test_each_error_from_below_has_its_reason(exc: Exception, reason: str) -> None:
    failure = failure_for(exc, label="grok image download")
    assert failure.reason == reason
    assert failure.message.startswith("grok image download: ")


def test_an_input_is_the_requests_fault_whatever_it_would_mean_for_a_result() -> None:
    for exc in (MediaError("no_image", "placeholder image (12 bytes)"), BlobError("blob x not found")):
        failure = failure_for(exc, label="input #3", request=True)
        assert failure.reason == "bad_request" and failure.message.startswith("input #3: ")


def test_what_is_not_an_attempts_failure_is_left_alone() -> None:
    failure = ProviderFailure("rate_limited", "slow down", retry_after=3.0)
    assert failure_for(failure) is failure
    assert failure_for(BusError("no JetStream")) is None
    assert failure_for(BlobError("blob store did not answer")) is None  # a result store: the bus's problem
    assert failure_for(KeyError("bug")) is None


@pytest.mark.parametrize(
    "text",
    ["Request blocked by moderation", "content_policy_violation", "your prompt violates our policy", "NSFW",
     "unsafe content", "提示词包含违规内容", "审核未通过", "敏感内容"],
)  # fmt: skip
def test_one_matcher_for_moderation_in_any_upstreams_words(text: str) -> None:
    assert moderated(text)


@pytest.mark.parametrize("text", ["The server had an error", "invalid size", "参数无效 'size'", "too many images"])
def test_ordinary_errors_are_not_moderation(text: str) -> None:
    assert not moderated(text)


def test_the_ladder_codes_then_status_then_words() -> None:
    codes = {"SensitiveContentDetected": Meaning("content_policy", "blocked by moderation"), 402: Meaning("auth")}
    # An upstream's code decides before its status ...
    said = Said("ark", 400, "may contain sensitive information", code="InputTextSensitiveContentDetected")
    assert classify(said, codes=codes).reason == "content_policy"
    assert classify(Said("x", 402, "pay"), codes=codes).reason == "auth"
    # ... a 401/403 or 429 before the words of the message ...
    assert classify(Said("x", 403, "blocked by moderation")).reason == "auth"
    assert classify(Said("x", 429, "nsfw")).reason == "rate_limited"
    # ... the words before the rest of the status ladder.
    assert classify(Said("x", 400, "nsfw content")).reason == "content_policy"
    assert classify(Said("x", 400, "quota exceeded")).reason == "rate_limited"
    assert classify(Said("x", 400, "Incorrect API key provided")).reason == "auth"
    assert classify(Said("x", 404, "no such model")).reason == "unsupported"
    assert classify(Said("x", 524, "")).reason == "timeout"
    assert classify(Said("x", 418, "teapot")).reason == "bad_request"
    assert classify(Said("x", 503, "down")).reason == "upstream_error"
    assert classify(Said("x", 0, "task crashed"), default="bad_request").reason == "bad_request"


def test_an_upstreams_own_words_are_data() -> None:
    said = Said("jimeng", text="cookie 已失效", credential="cookie #1 or apikey")
    assert classify(said).reason == "upstream_error"
    failure = classify(said, words=Words(auth=re.compile("cookie|失效")))
    assert failure.reason == "auth" and failure.message.startswith("jimeng: cookie #1 or apikey rejected")


def test_the_message_names_the_credential_by_position_and_keeps_the_hint() -> None:
    failure = classify(Said("grok", 429, "slow down", code="rate_limit", retry_after=7.0, credential="key #2"))
    assert (failure.status, failure.retry_after) == (429, 7.0)
    assert failure.message == "grok HTTP 429 rate_limit: slow down"
    denied = classify(Said("grok", 401, "no", credential="key #2"))
    assert denied.message == "grok: key #2 rejected (401): no"
