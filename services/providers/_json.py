"""Reading upstream JSON: bounded in depth, strict about what a 2xx answer must be.

A body that is HTML, empty, malformed or nested deeper than :data:`MAX_JSON_DEPTH` is
``invalid_response``; error bodies are read leniently (:func:`json_body`: callers fall back
to the text).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgspec

from ..domain.errors import ProviderFailure

__all__ = ("MAX_JSON_DEPTH", "check_json_reply", "json_body", "json_value", "parse_json")

MAX_JSON_DEPTH = 64
"""Deepest nesting accepted in an upstream JSON body. Real replies are under 10 levels; a
5,000-deep body (10 KB) used to raise ``RecursionError`` in the decoder — a ``provider_bug``
whose logged traceback held the key — and a body just under the decoder's limit would raise
it later, in whatever walks it (``json.dumps``, ``repr``, the log redactor)."""


def check_json_reply(label: str, response: httpx.Response | Any) -> None:
    """Raise ``invalid_response`` for a 2xx answer that is an HTML page or empty."""
    ctype = response.headers.get("content-type", "")
    content = response.content
    text_head = content[:64].lstrip().lower()
    if "html" in ctype or text_head.startswith((b"<!doctype", b"<html")):
        raise ProviderFailure(
            "invalid_response", f"{label} returned an HTML page instead of JSON", status=response.status_code
        )
    if not content[:4096].strip() and not content.strip():
        raise ProviderFailure("invalid_response", f"{label} returned an empty body", status=response.status_code)


def _too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when containers in ``value`` nest deeper than ``limit``. Iterative; only containers
    are visited, so a ``b64_json`` reply (a few dicts, one long string) costs microseconds."""
    if type(value) is not dict and type(value) is not list:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        for child in container.values() if type(container) is dict else container:
            kind = type(child)
            if kind is dict or kind is list:
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _nested_too_deeply(label: str, status: int) -> ProviderFailure:
    return ProviderFailure(
        "invalid_response", f"{label} returned JSON nested deeper than {MAX_JSON_DEPTH} levels", status=status
    )


def json_value(label: str, content: bytes | str, *, status: int = 0) -> Any:
    """Decode a JSON body: the value, ``ValueError`` when it is not JSON, and
    ``ProviderFailure(invalid_response)`` when it nests deeper than :data:`MAX_JSON_DEPTH`."""
    try:
        # msgspec parses straight from the bytes: ``response.json()`` would first decode the
        # whole body into a str and then copy every string out of it — for a 4K ``b64_json``
        # answer that is two extra copies of ~35 MB (docs/benchmarks.md, memory figure).
        value = msgspec.json.decode(content)
    except RecursionError:
        raise _nested_too_deeply(label, status) from None
    except (msgspec.DecodeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    if _too_deep(value):
        raise _nested_too_deeply(label, status)
    return value


def json_body(label: str, response: Any) -> Any:
    """``response.json()`` for error bodies and polls, with the depth bound of :func:`json_value`.

    Like ``httpx.Response.json`` it raises ``ValueError`` for a body that is not JSON (callers
    then use the text), and like :func:`parse_json` ``invalid_response`` for one nested too deeply.
    """
    content = response.content
    try:
        return json_value(label, content, status=response.status_code)
    except ValueError:
        pass  # not UTF-8 JSON for msgspec; tried once more below
    # The stdlib decoder also takes UTF-16/32 and NaN, as httpx does.
    try:
        value = json.loads(content)
    except RecursionError:
        raise _nested_too_deeply(label, response.status_code) from None
    if _too_deep(value):
        raise _nested_too_deeply(label, response.status_code)
    return value


def parse_json(label: str, response: Any) -> Any:
    """The JSON body of a 2xx response, or ``invalid_response`` for HTML / malformed / empty /
    too deeply nested bodies."""
    check_json_reply(label, response)
    try:
        return json_value(label, response.content, status=response.status_code)
    except ValueError:
        raise ProviderFailure(
            "invalid_response", f"{label} returned malformed JSON", status=response.status_code
        ) from None
