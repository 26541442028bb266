#!/usr/bin/env python3
"""The wire contract as data: a JSON Schema per message and an AsyncAPI 3.0 document of every subject.

Usage::

    python deploy/contract.py            # rewrite docs/schema/*.json and docs/asyncapi.json
    python deploy/contract.py --check    # exit 1 if any of them is out of date (CI)

Why generated: ``messages/`` is the contract (msgspec structs, decoded strictly by every
actor), and a hand-written schema would drift from it. Here:

* the schemas (JSON Schema draft 2020-12) come from the structs through
  ``msgspec.json.schema_components`` — required fields, the tagged union on ``type``, the
  ``msgspec.Meta`` constraints (``prompt`` ≤ 8000 …) — and each field's docstring in
  ``messages/`` becomes its ``description`` (limits enforced by configuration, not by the
  decoder, are stated there);
* every channel address of the AsyncAPI document is the subject the bus really writes
  (``messages.event_subject`` / ``Names.subject``) with the job id, client and provider
  tokens turned into parameters, so a change of the subject layout regenerates it;
* the operations say which role (client, router, provider) sends or receives on each
  channel; ``tests/test_contract.py`` checks them against the NATS permissions of
  ``deploy/permissions.py`` and the consumers' filters.

Needs the project importable (``pip install -e .``): it imports ``aiimg``.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import json
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCHEMA_DIR = DOCS / "schema"
ASYNCAPI = DOCS / "asyncapi.json"

sys.path.insert(0, str(ROOT))
from aiimg import messages  # noqa: E402
from aiimg.messages import (  # noqa: E402
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    BlobRef,
    CancelRequested,
    FailureSummary,
    JobCancelled,
    JobCompleted,
    JobEvent,
    JobFailed,
    JobRejected,
    JobRequested,
    Names,
    ProviderHealth,
    event_subject,
    kind_of,
)
from aiimg.services import __version__  # noqa: E402
from aiimg.services.config import CAPABILITIES  # noqa: E402

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
UNION_FILE = "job-event.json"
BLOB_REF_FILE = "blob-ref.json"
HEALTH_FILE = "provider.health.v1.json"
"""The circuit-breaker record in the KV bucket (``health.<provider>.<op>``), not a stream message."""

EVENTS: tuple[type[msgspec.Struct], ...] = typing.get_args(JobEvent)
"""Every message of the job stream, in the union's order."""

# ---- examples: one realistic message of each type (also the AsyncAPI examples) ---------------

_RESULT = BlobRef(
    name="sha256-" + "ab" * 32,
    size=1843211,
    sha256="ab" * 32,
    mime="image/png",
    width=2048,
    height=2048,
    bucket="aiimg_blobs",
)
_JOB = "1a2b3c-demo"
_T0 = 1764057600.0

EXAMPLES: tuple[JobEvent, ...] = (
    JobRequested(job_id=_JOB, at=_T0, op="draw", prompt="a red fox in snow", output="16:9", origin={"user": "10001"}),
    CancelRequested(job_id=_JOB, at=_T0 + 1, reason="user cancelled"),
    AttemptDispatched(
        job_id=_JOB,
        at=_T0 + 0.01,
        attempt=1,
        provider="grok",
        op="draw",
        prompt="a red fox in snow",
        output="16:9",
        chain=["grok", "gemini_native"],
        deadline=_T0 + 135,
    ),
    AttemptSucceeded(job_id=_JOB, at=_T0 + 11.5, attempt=2, provider="gemini_native", result=_RESULT, elapsed_ms=8211),
    AttemptFailed(
        job_id=_JOB,
        at=_T0 + 3.2,
        attempt=1,
        provider="grok",
        reason="content_policy",
        message="grok: generated image rejected by moderation",
        status=200,
        elapsed_ms=3180,
    ),
    JobCompleted(job_id=_JOB, at=_T0 + 11.51, result=_RESULT, provider="gemini_native", attempt=2),
    JobFailed(
        job_id=_JOB,
        at=_T0 + 11.51,
        failures=[
            FailureSummary(attempt=1, provider="grok", reason="content_policy", message="blocked"),
            FailureSummary(attempt=2, provider="gemini_native", reason="rate_limited", message="429"),
        ],
        message="every provider failed",
    ),
    JobCancelled(job_id=_JOB, at=_T0 + 1.1, reason="user cancelled"),
    JobRejected(
        job_id=_JOB,
        at=_T0 + 0.01,
        reason="bad_request",
        message="300 input images; at most 16 per job (limits.max_inputs)",
    ),
)


def tag(cls: type[msgspec.Struct]) -> str:
    value = cls.__struct_config__.tag
    assert isinstance(value, str), cls
    return value


def schema_file(cls: type[msgspec.Struct]) -> str:
    return f"{tag(cls)}.json"


# ---- JSON Schemas ------------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of ``cls`` and its bases: a string right after an annotated field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith(messages.__name__ + "."):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _components() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The union's schema and every struct's schema (``$ref``s as ``#/$defs/<Name>``), with field docs."""
    (union, _), defs = msgspec.json.schema_components([JobEvent, ProviderHealth], ref_template="#/$defs/{name}")
    classes = {cls.__name__: cls for cls in (*EVENTS, BlobRef, FailureSummary, ProviderHealth)}
    for name, schema in defs.items():
        for field, doc in field_docs(classes[name]).items():
            prop = schema.get("properties", {}).get(field)
            if prop is not None and "description" not in prop:
                prop["description"] = doc
        if "type" in schema.get("properties", {}):
            schema["properties"]["type"]["description"] = "The message's versioned tag."
    return union, defs


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rpartition("/")[2]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


def _document(schema: dict[str, Any], defs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``schema`` as a self-contained file: every definition it needs under ``$defs``."""
    needed: set[str] = set()
    todo = _refs(schema)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo |= _refs(defs[name])
    doc = {"$schema": DRAFT, **schema}
    if needed:
        doc["$defs"] = {name: defs[name] for name in sorted(needed)}
    return doc


def schemas() -> dict[str, dict[str, Any]]:
    """``{file name: schema}``: one per message type, the union of all of them, and the blob reference."""
    union, defs = _components()
    out = {schema_file(cls): _document(defs[cls.__name__], defs) for cls in EVENTS}
    out[UNION_FILE] = _document(
        {
            "title": "JobEvent",
            "description": "Any message of the job stream (`<prefix>.job.>`), told apart by its `type` tag.",
            **union,
        },
        defs,
    )
    out[BLOB_REF_FILE] = _document(defs["BlobRef"], defs)
    out[HEALTH_FILE] = _document(defs["ProviderHealth"], defs)
    return out


# ---- AsyncAPI -----------------------------------------------------------------------------------

_SENTINEL_JOB = "x-job-id-x"
_SENTINEL_CLIENT = "x-client-x"
_SENTINEL_PROVIDER = "xproviderx"
_PARAMS = {_SENTINEL_JOB: "job_id", _SENTINEL_CLIENT: "client", _SENTINEL_PROVIDER: "provider"}

CHANNELS: dict[str, dict[str, str]] = {
    "requested": {
        "title": "Job requests",
        "description": "A client submits a job under its own name (`client`); always the job's first "
        "event, refused by the server if the id has any event already.",
    },
    "cancel": {
        "title": "Cancel requests",
        "description": "A client asks to cancel a job; honoured only from the client that requested it, "
        "and only while the job has no terminal event.",
    },
    "dispatch": {
        "title": "Work items",
        "description": "The router hands an attempt to provider `provider`. `<prefix>.job.*.dispatch.<provider>` "
        "is the provider's work queue (durable pull consumer `provider-<provider>`).",
    },
    "attempt": {
        "title": "Attempt results",
        "description": "Provider `provider` reports an attempt's outcome; the router writes an "
        "`attempt.failed.v1` (reason `timeout`) here when the provider stays silent past the deadline. "
        "A result whose subject names another provider than its body is ignored.",
    },
    "done": {
        "title": "Terminal events",
        "description": "The job ended: exactly one of these is the job's outcome (the first one stored). "
        "`client` is the client that requested the job: `<prefix>.job.*.done.<client>` is every result of "
        "one client (its durable consumer `deliver-<client>`).",
    },
    "history": {
        "title": "A job's history",
        "description": "Every event of one job, in order: a subscription (or direct gets on the stream "
        "`<PREFIX>_JOBS`) to follow a job or read its state.",
    },
}
"""Channel ids (the subject kinds of ``messages._subjects``) with their words; the addresses are derived."""

Role = str
OPERATIONS: tuple[tuple[Role, str, str, tuple[type[msgspec.Struct], ...] | None, str], ...] = (
    ("client", "send", "requested", None, "Submit a job."),
    ("client", "send", "cancel", None, "Ask to cancel a job this client requested."),
    (
        "client",
        "receive",
        "done",
        None,
        "Wait for the job's outcome (subscribe before submitting), or pull every result of this client "
        "from its durable consumer `deliver-<client>`.",
    ),
    ("client", "receive", "history", None, "Follow a job: its events as they are written."),
    ("router", "receive", "requested", None, "Take a request (durable consumer `router`)."),
    ("router", "receive", "cancel", None, "Take a cancel (durable consumer `router`)."),
    ("router", "receive", "attempt", None, "Take an attempt's outcome (durable consumer `router`)."),
    ("router", "send", "dispatch", None, "Dispatch an attempt to a provider."),
    ("router", "send", "attempt", (AttemptFailed,), "Count a silent attempt as a timeout."),
    ("router", "send", "done", None, "End the job."),
    ("provider", "receive", "dispatch", None, "Take a work item (durable consumer `provider-<provider>`)."),
    ("provider", "send", "attempt", None, "Report the attempt's outcome, as itself."),
    ("provider", "receive", "done", None, "Stop an attempt whose job already ended."),
)
"""(role, action, channel, messages or ``None`` for all of the channel's, summary)."""


def _address(names: Names, kind: str, cls: type[msgspec.Struct] | None) -> str:
    """The channel address: the subject the bus writes ``cls`` on, its tokens as ``{parameters}``."""
    if cls is None:  # history: not written as such, a filter over every subject of one job
        subject = names.subject("history", _SENTINEL_JOB)
    else:
        sample = next(e for e in EXAMPLES if type(e) is cls)
        fields = {"job_id": _SENTINEL_JOB}
        if "provider" in cls.__struct_fields__:
            fields["provider"] = _SENTINEL_PROVIDER
        subject = event_subject(names, msgspec.structs.replace(sample, **fields), _SENTINEL_CLIENT)
    tokens = [f"{{{_PARAMS[t]}}}" if t in _PARAMS else t for t in subject.split(".")]
    return ".".join(tokens)


def _channel_messages() -> dict[str, list[type[msgspec.Struct]]]:
    by_kind: dict[str, list[type[msgspec.Struct]]] = {}
    for event in EXAMPLES:
        by_kind.setdefault(kind_of(event), []).append(type(event))
    by_kind["history"] = list(EVENTS)
    return by_kind


def _message(cls: type[msgspec.Struct]) -> dict[str, Any]:
    doc = inspect.cleandoc(cls.__doc__ or "")
    sample = next(e for e in EXAMPLES if type(e) is cls)
    message: dict[str, Any] = {
        "name": tag(cls),
        "title": cls.__name__,
        "summary": doc.split("\n\n")[0].replace("\n", " "),
        "contentType": "application/json",
        "payload": {"schemaFormat": SCHEMA_FORMAT, "schema": {"$ref": f"schema/{schema_file(cls)}"}},
        "examples": [{"name": "example", "payload": json.loads(messages.encode(sample))}],
    }
    if cls is JobRequested:
        message["headers"] = {
            "type": "object",
            "description": "Optional JetStream headers of a submit.",
            "properties": {
                "Nats-Expected-Last-Subject-Sequence": {
                    "type": "string",
                    "const": "0",
                    "description": "With the next header: refused unless the job id was never used.",
                },
                "Nats-Expected-Last-Subject-Sequence-Subject": {
                    "type": "string",
                    "description": "`<prefix>.job.<job_id>.>`: the whole job.",
                },
                "Nats-Msg-Id": {
                    "type": "string",
                    "description": "A random value, the same on each retry of one submit: it lands once "
                    "(within the stream's 2-minute duplicate window).",
                },
            },
        }
    return message


def asyncapi(names: Names | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every job subject under ``names``' prefix."""
    names = names or Names()
    by_kind = _channel_messages()
    if set(by_kind) != set(CHANNELS):
        raise SystemExit(f"subject kinds {sorted(by_kind)} differ from the described {sorted(CHANNELS)}")
    channels: dict[str, Any] = {}
    for kind, words in CHANNELS.items():
        classes = by_kind[kind]
        addresses = {_address(names, kind, None if kind == "history" else cls) for cls in classes}
        if len(addresses) != 1:
            raise SystemExit(f"the messages of channel {kind} are written on different subjects: {addresses}")
        address = addresses.pop()
        params = [p for p in ("job_id", "client", "provider") if f"{{{p}}}" in address]
        channels[kind] = {
            "address": address,
            **words,
            "parameters": {p: {"$ref": f"#/components/parameters/{p}"} for p in params},
            "messages": {cls.__name__: {"$ref": f"#/components/messages/{cls.__name__}"} for cls in classes},
        }
    operations: dict[str, Any] = {}
    for role, action, kind, only, summary in OPERATIONS:
        classes = list(only) if only is not None else by_kind[kind]
        operations[f"{role}_{action}_{kind}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{kind}"},
            "summary": summary,
            "tags": [{"name": role}],
            "messages": [{"$ref": f"#/channels/{kind}/messages/{cls.__name__}"} for cls in classes],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "aiimg",
            "version": __version__,
            "description": "Image and video generation jobs as events on NATS JetStream. Subjects are shown "
            f"under the prefix `{names.prefix}` (setting `nats.prefix`). Every message is JSON with a "
            "versioned `type` tag; unknown fields are ignored. Bytes are never in events: a blob "
            "reference names an object in a JetStream object store. The prose contract is "
            "docs/nats-api.md; this file and docs/schema/ are generated by deploy/contract.py.",
            "tags": [
                {"name": "client", "description": "A bot or application submitting jobs (NATS user `aiimg-<client>`)."},
                {"name": "router", "description": "The router actor (NATS user `aiimg-router`)."},
                {"name": "provider", "description": "A provider actor (NATS user `aiimg-<provider>`)."},
            ],
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "A NATS server with JetStream (2.11 or newer); the embedded one by default.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "parameters": {
                "job_id": {
                    "description": "The job id, chosen by the client and used once: `^[A-Za-z0-9_-]{1,64}$`.",
                    "examples": [_JOB],
                },
                "client": {
                    "description": "A client's name (its setting `nats.client_id`): the writer of requests "
                    "and cancels — NATS permissions let a client publish only under its own — and, on "
                    "terminal events, the client that requested the job.",
                    "examples": ["bridge"],
                },
                "provider": {
                    "description": "A provider alias.",
                    "enum": sorted(CAPABILITIES),
                    "examples": ["grok"],
                },
            },
            "messages": {cls.__name__: _message(cls) for cls in EVENTS},
        },
    }


# ---- files --------------------------------------------------------------------------------------


def _json(doc: Any) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def wanted() -> dict[Path, str]:
    """Every generated file and the text it must have."""
    files = {SCHEMA_DIR / name: _json(doc) for name, doc in schemas().items()}
    files[ASYNCAPI] = _json(asyncapi())
    return files


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--check", action="store_true", help="fail if a generated file is out of date")
    args = p.parse_args(argv)
    files = wanted()
    stale = [path for path, text in files.items() if not path.is_file() or path.read_text(encoding="utf-8") != text]
    extra = sorted(set(SCHEMA_DIR.glob("*.json")) - set(files)) if SCHEMA_DIR.is_dir() else []
    if args.check:
        if stale or extra:
            names = ", ".join(_shown(path) for path in [*stale, *extra])
            print(f"out of date (run python deploy/contract.py): {names}", file=sys.stderr)
            return 1
        return 0
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.write_text(files[path], encoding="utf-8")
        print(f"wrote {_shown(path)}")
    for path in extra:
        path.unlink()
        print(f"removed {_shown(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
