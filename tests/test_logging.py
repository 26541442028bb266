"""Log lines never carry a secret: not in frame locals, not in a rendered traceback, not in an
encoded form, not in a URL, not from stdlib loggers, whatever the renderer.

Each test configures the real logging pipeline (``configure_logging``) with its own
:class:`Redactor` and an in-memory stream, logs the way the actors do, and reads the lines.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import structlog

from aiimg.services.infra.logging import Redactor, configure_logging
from aiimg.services.infra.redaction import mask_credentials, secret_forms
from aiimg.services.providers._errors import scrub
from aiimg.services.providers._images_api import Caller

KEY = "sk-test-LogKey-0123456789abcdef"
NATS_PASSWORD = "pLogNatsPassw0rd42"
COOKIE = "sessionid=Sec/ret+Cookie~0042;path"
SECRETS = (KEY, NATS_PASSWORD, COOKIE)
UNREGISTERED = "tok-never-registered-5551212"
FORMATS = ("json", "console")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def configured(fmt: str, *secrets: str) -> tuple[io.StringIO, Redactor]:
    redactor = Redactor()
    redactor.register(secrets or SECRETS)
    out = io.StringIO()
    configure_logging("debug", fmt, out, redactor=redactor)
    return out, redactor


def encoded(secret: str) -> dict[str, str]:
    """Every form an upstream has been seen to echo a key in."""
    raw = secret.encode()
    forms = {
        "raw": secret,
        "base64": base64.b64encode(raw).decode(),
        "base64-unpadded": base64.b64encode(raw).decode().rstrip("="),
        "base64-urlsafe": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "quote": quote(secret, safe=""),
        "quote_plus": quote_plus(secret),
        "quote-lower-hex": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(secret, safe="")),
    }
    for user in ("", "u", "us", "use", "user", "apikey"):  # every alignment of the key inside the text
        forms[f"basic({user}:key)"] = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return forms


def leaked(text: str, *secrets: str) -> list[str]:
    """Which secrets appear in ``text`` raw, URL-encoded or base64 at any alignment (an oracle
    independent of ``services.redaction``: the middle of the base64 of the secret after 0, 1 or 2
    bytes, one whole 4-character group dropped at each end)."""
    found = []
    for secret in secrets or SECRETS:
        raw = secret.encode()
        probes = {secret, quote(secret, safe=""), quote_plus(secret)}
        for offset in range(3):
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                probes.add(encode(b"\0" * offset + raw).decode()[4:-4])
        found += [f"{secret[:8]}…: {p[:8]}…" for p in probes if p in text]
    return found


# ---- tracebacks and frame locals -----------------------------------------------------------


def _call_upstream(api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}  # noqa: F841 — a frame local, as in a provider
    session_token = UNREGISTERED  # noqa: F841 — a secret the redactor does not know
    json.loads("[" * 5000 + "]" * 5000)  # RecursionError, as the reported 10 KB reply raised


@pytest.mark.parametrize("fmt", FORMATS)
def test_exception_lines_have_no_frame_locals(fmt: str) -> None:
    out, _ = configured(fmt)
    log = structlog.get_logger("aiimg.provider")
    try:
        _call_upstream(KEY)
    except RecursionError:
        log.exception("provider_bug", job_id="j1")
    text = out.getvalue()
    print(f"\n{fmt}: {len(text)} chars, {text.count(chr(10))} lines")
    assert "provider_bug" in text and "RecursionError" in text and "_call_upstream" in text  # the traceback is there
    assert UNREGISTERED not in text, "frame locals are rendered"
    assert leaked(text) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_exception_message_is_redacted_after_rendering(fmt: str) -> None:
    out, _ = configured(fmt)
    log = structlog.get_logger("aiimg.provider")
    try:
        raise ValueError(f"upstream said: bad key {KEY} (Basic {encoded(KEY)['basic(user:key)']})")
    except ValueError:
        log.exception("provider_bug", job_id="j1")
    text = out.getvalue()
    assert "bad key ***" in text
    assert leaked(text) == []


class _Echo:
    """A value whose text exists only once a renderer calls ``repr`` on it."""

    def __repr__(self) -> str:
        return f"<Echo of {KEY}>"


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_a_renderer_produces_is_redacted(fmt: str) -> None:
    out, _ = configured(fmt)
    structlog.get_logger("t").info("echo", job_id="j1", obj=_Echo(), items={"k": [_Echo()]})
    text = out.getvalue()
    assert "Echo of ***" in text
    assert leaked(text) == []


# ---- encoded forms --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("secret", [KEY, COOKIE], ids=["key", "cookie"])
@pytest.mark.parametrize("form", sorted(encoded(KEY)))
def test_every_encoded_form_is_masked(fmt: str, secret: str, form: str) -> None:
    out, _ = configured(fmt)
    value = encoded(secret)[form]
    log = structlog.get_logger("t")
    log.info("upstream_error", job_id="j1", body=f"the gateway echoed [{value}] back")
    log.info(f"in the event text too: {value}", job_id="j1")
    text = out.getvalue()
    assert value not in text
    assert leaked(text) == [], text


def test_forms_of_one_secret() -> None:
    secret = "sk/with+odd=chars&more-0123456789"
    forms = secret_forms(secret)
    raw = secret.encode()
    assert secret in forms
    assert quote(secret, safe="") in forms and quote_plus(secret) in forms and quote(secret) in forms
    assert "sk%2fwith%2bodd%3dchars%26more-0123456789" in forms  # lower-case hex
    assert base64.b64encode(raw).decode() in forms
    assert base64.b64encode(raw).decode().rstrip("=") in forms
    assert base64.urlsafe_b64encode(raw).decode() in forms
    assert base64.urlsafe_b64encode(raw).decode().rstrip("=") in forms
    quoted = 'q"uote\\0123456789abcdef'
    assert json.dumps(quoted)[1:-1] in secret_forms(quoted) and json.dumps(quoted)[1:-1] != quoted
    # The stable core of the base64 of the secret at each of the three byte alignments,
    # in both alphabets, with arbitrary text before and after it.
    redactor = Redactor.of([secret])
    for prefix in ("", "x", "xy", "xyz", "user:", "Authorization: Bearer "):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode((prefix + secret + "!tail").encode()).decode()
            assert any(f in text for f in forms if f != secret), prefix
            assert leaked(redactor.redact(text), secret) == [], prefix


def test_short_secrets_mask_only_themselves() -> None:
    short = "abcd"
    assert secret_forms(short) == {short}
    assert secret_forms("abc") == set()
    redactor = Redactor.of([short, KEY])
    # Base64 text that merely looks like other text is not masked: only the forms of real secrets.
    junk = base64.b64encode(b"an ordinary image caption of some length").decode()
    assert redactor.redact(junk) == junk
    assert redactor.redact("xx abcd yy") == "xx *** yy"


def test_unbounded_nesting_in_a_log_value() -> None:
    out, _ = configured("json")
    deep: Any = [KEY]
    for _ in range(5000):
        deep = [deep]
    structlog.get_logger("t").info("nested", job_id="j1", body=deep, shallow={"a": {"b": KEY}})
    text = out.getvalue()
    line = json.loads(text.splitlines()[-1])
    assert line["event"] == "nested" and line["shallow"] == {"a": {"b": "***"}}
    assert leaked(text) == []


# ---- URLs with credentials -------------------------------------------------------------------

CREDENTIAL_PARAMS = (
    "key",
    "api_key",
    "apikey",
    "API-Key",
    "token",
    "access_token",
    "password",
    "secret",
    "sig",
    "signature",
    "X-Amz-Signature",
    "x-amz-security-token",
    "X-Tos-Signature",
    "Cookie",
)


@pytest.mark.parametrize("name", CREDENTIAL_PARAMS)
def test_credential_query_parameters_are_masked(name: str) -> None:
    url = f"https://cdn.example/img.png?size=1024&{name}=abcSECRETvalue123&w=2"
    masked = mask_credentials(f"downloading {url} failed")
    assert "abcSECRETvalue123" not in masked
    assert f"{name}=***" in masked and "size=1024" in masked and "w=2" in masked
    upper = mask_credentials(url.replace(name, name.upper()))
    assert "abcSECRETvalue123" not in upper


def test_userinfo_and_auth_headers_are_masked() -> None:
    text = (
        "GET https://user:pa55word@gw.example/v1?x=1 and nats://aiimg:natspw@10.0.0.1:4222 "
        "Authorization: Bearer eyJhbGciOi.fake.token and https://onlytoken@host/x"
    )
    masked = mask_credentials(text)
    for secret in ("pa55word", "natspw", "eyJhbGciOi.fake.token", "onlytoken", "user:"):
        assert secret not in masked, secret
    assert "https://***@gw.example/v1?x=1" in masked and "nats://***@10.0.0.1:4222" in masked
    # Ordinary URLs and words stay as they are.
    plain = (
        "see https://example.com/a?size=1&monkey=3 or key=value in prose; the token exceeded its budget; "
        "the bearer instrument; user@example.com wrote"
    )
    assert mask_credentials(plain) == plain


@pytest.mark.parametrize("fmt", FORMATS)
def test_signed_urls_are_masked_in_log_lines(fmt: str) -> None:
    out, redactor = configured(fmt)
    url = "https://bucket.tos.example/r.png?X-Tos-Signature=deadbeefcafe0042&X-Tos-Expires=60"
    structlog.get_logger("t").info("downloading", job_id="j1", url=url, note=f"see {url}")
    text = out.getvalue()
    assert "deadbeefcafe0042" not in text and "X-Tos-Expires=60" in text
    assert "deadbeefcafe0042" not in redactor.redact(f"failed: {url}")  # failure messages too


# ---- stdlib loggers --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_stdlib_records_reach_our_output_redacted(fmt: str) -> None:
    out, _ = configured(fmt)
    logging.getLogger("nats.aio.client").error("cannot connect to nats://aiimg:%s@h:4222", NATS_PASSWORD)
    try:
        raise ConnectionError(f"key {KEY} refused")
    except ConnectionError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    logging.getLogger("httpx").info("HTTP Request: GET https://x/?key=%s", KEY)  # below WARNING: dropped
    text = out.getvalue()
    print(text)
    assert "cannot connect to nats://***@h:4222" in text
    assert "Task exception was never retrieved" in text and "ConnectionError" in text
    assert "HTTP Request" not in text
    assert leaked(text) == []


def test_json_lines_stay_json() -> None:
    out, _ = configured("json")
    structlog.get_logger("t").info("x", job_id="j1", a='quote " and \\ backslash', key_echo=KEY)
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["job_id"] == "j1" and line["key_echo"] == "***"


# ---- messages built from upstream bodies ---------------------------------------------------------


@pytest.mark.parametrize("form", sorted(encoded(COOKIE)))
def test_scrub_masks_every_form_of_the_secret_of_the_call(form: str) -> None:
    """``scrub`` (provider error messages) masks the call's own secret — not registered with the
    process redactor in this test — in the same forms as the log lines."""
    value = encoded(COOKIE)[form]
    text = scrub(f"upstream said [{value}]", COOKIE)
    assert value not in text and leaked(text, COOKIE) == [], text
    caller = Caller(label="gw", base="http://gw/v1", key=COOKIE, key_index=2, timeout=1.0)
    said = caller.scrub(f"upstream said [{value}]")
    assert value not in said and "key #2" in said and leaked(said, COOKIE) == [], said


def test_an_auth_header_whose_token_is_already_replaced_keeps_its_scheme() -> None:
    assert mask_credentials("Authorization: Bearer key #2") == "Authorization: Bearer key #2"
    assert mask_credentials("authorization=Basic dXNlcjpwYXNzd29yZA==") == "authorization=Basic ***"
