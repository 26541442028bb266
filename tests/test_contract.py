"""The contract as data (``deploy/contract.py``): current, well-formed, and true to the code.

* ``docs/schema/*.json`` and ``docs/asyncapi.json`` are what the generator writes now;
* every schema is a valid draft 2020-12 schema, and real encoded messages (the codec's
  output, the examples in ``docs/nats-api.md``, events the router's decisions produce)
  validate against them, while messages the decoder refuses are refused by the schema too;
* the AsyncAPI document has the AsyncAPI 3.0 structure (checked offline against the spec's
  object fields, re-stated below, plus the reference and parameter rules the spec adds), its
  channel addresses are the subjects the bus writes, and its operations agree with the NATS
  permissions and consumer filters each role really has.
"""

from __future__ import annotations

import copy
import json
import re
import typing
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from aiimg import messages
from aiimg.messages import JobEvent, JobRequested, Names, ProviderHealth, decode_event, encode
from aiimg.services.config import Config
from aiimg.services.domain.routing import decide
from aiimg.services.domain.state import fold
from aiimg.services.infra.bus import consumer_configs

from .reliability.procs import ROOT, deploy_module

contract = deploy_module("contract")
perms = deploy_module("permissions")

DOCS = ROOT / "docs"
Validator = jsonschema.Draft202012Validator


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _schema(name: str) -> Validator:
    return Validator(_load(DOCS / "schema" / name), format_checker=Validator.FORMAT_CHECKER)


def test_generated_files_are_current() -> None:
    assert contract.main(["--check"]) == 0, "run: python deploy/contract.py"


def test_check_notices_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--check`` is not vacuous: a changed or missing file fails it."""
    monkeypatch.setattr(contract, "SCHEMA_DIR", tmp_path / "schema")
    monkeypatch.setattr(contract, "ASYNCAPI", tmp_path / "asyncapi.json")
    assert contract.main(["--check"]) == 1
    assert contract.main([]) == 0
    assert contract.main(["--check"]) == 0
    (tmp_path / "schema" / "job.requested.v1.json").write_text("{}\n")
    assert contract.main(["--check"]) == 1


# ---- JSON Schemas ---------------------------------------------------------------------------


def test_one_schema_per_message_and_each_is_valid() -> None:
    tags = [cls.__struct_config__.tag for cls in typing.get_args(JobEvent)]
    files = sorted(p.name for p in (DOCS / "schema").glob("*.json"))
    extra = ["blob-ref.json", "job-event.json", "provider.health.v1.json"]
    assert files == sorted([f"{t}.json" for t in tags] + extra)
    for name in files:
        doc = _load(DOCS / "schema" / name)
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Validator.check_schema(doc)


def test_schemas_state_what_the_decoder_enforces() -> None:
    req = _load(DOCS / "schema" / "job.requested.v1.json")
    props = req["properties"]
    assert req["required"] == ["type", "job_id", "op"]
    assert props["type"]["enum"] == ["job.requested.v1"]
    assert props["prompt"]["maxLength"] == 8000
    assert props["job_id"]["pattern"] == "^[A-Za-z0-9_-]{1,64}$"
    assert props["origin"]["maxProperties"] == 16
    # Limits set by configuration are not schema constraints; the field descriptions state them.
    assert "limits.max_inputs" in props["inputs"]["description"]
    assert "limits.max_input_bytes" in props["inputs"]["description"]
    assert "replaces the configured primary" in props["backend"]["description"]
    union = _load(DOCS / "schema" / "job-event.json")
    assert union["discriminator"]["propertyName"] == "type"
    assert len(union["anyOf"]) == len(typing.get_args(JobEvent))


HEALTH_TAG = "provider.health.v1"
"""The breaker record: a KV value, not a job event (its example is checked on its own)."""


def _nats_api_examples(*, health: bool = False) -> list[dict[str, Any]]:
    """The JSON examples of docs/nats-api.md: the job events', or (``health``) the breaker record's."""
    text = (DOCS / "nats-api.md").read_text(encoding="utf-8")
    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, flags=re.S)]
    return [doc for doc in blocks if (doc.get("type") == HEALTH_TAG) == health]


def _real_messages() -> list[bytes]:
    """Encoded by the codec: the generator's examples, the doc's examples, and the router's decisions."""
    out = [encode(event) for event in contract.EXAMPLES]
    out += [encode(decode_event(json.dumps(doc).encode())) for doc in _nats_api_examples()]
    config = Config()
    request = JobRequested(job_id="real-1", op="draw", prompt="p" * 8000, at=1.0, origin={"user": "u"})
    state = fold("real-1", [("bridge", request)])
    decided = decide(state, config, 2.0).event  # no provider configured: job.failed.v1, no failures
    assert decided is not None
    out.append(encode(decided))
    bad = JobRequested(job_id="real-2", op="edit", at=1.0)
    rejected = decide(fold("real-2", [("bridge", bad)]), config, 2.0).event
    assert rejected is not None
    out.append(encode(rejected))
    return out


def test_nats_api_examples_are_real_messages() -> None:
    docs = _nats_api_examples()
    tags = {cls.__struct_config__.tag for cls in typing.get_args(JobEvent)}
    assert {doc["type"] for doc in docs} == tags, "docs/nats-api.md shows one example of every message"


def test_real_encoded_messages_validate() -> None:
    union = _schema("job-event.json")
    seen = set()
    for raw in _real_messages():
        doc = json.loads(raw)
        seen.add(doc["type"])
        _schema(f"{doc['type']}.json").validate(doc)
        union.validate(doc)
    assert len(seen) == len(typing.get_args(JobEvent))


def _mutated(tag: str, change: Any) -> dict[str, Any]:
    base = next(json.loads(encode(e)) for e in contract.EXAMPLES if e.__struct_config__.tag == tag)
    doc = copy.deepcopy(base)
    change(doc)
    return doc


CASES: list[tuple[str, str, Any, bool]] = [
    ("prompt at the limit", "job.requested.v1", lambda d: d.update(prompt="x" * 8000), True),
    ("prompt over the limit", "job.requested.v1", lambda d: d.update(prompt="x" * 8001), False),
    ("unknown field", "job.requested.v1", lambda d: d.update(future="ok"), True),
    ("job id with a dot", "job.requested.v1", lambda d: d.update(job_id="a.b"), False),
    ("job id too long", "job.requested.v1", lambda d: d.update(job_id="a" * 65), False),
    ("missing op", "job.requested.v1", lambda d: d.pop("op"), False),
    ("unknown op", "job.requested.v1", lambda d: d.update(op="paint"), False),
    ("missing job id", "job.cancel_requested.v1", lambda d: d.pop("job_id"), False),
    ("unknown type", "job.requested.v1", lambda d: d.update(type="job.requested.v9"), False),
    ("17 origin keys", "job.requested.v1", lambda d: d.update(origin={str(i): "v" for i in range(17)}), False),
    ("long origin key", "job.requested.v1", lambda d: d.update(origin={"k" * 65: "v"}), False),
    ("long origin value", "job.requested.v1", lambda d: d.update(origin={"k": "v" * 513}), False),
    ("backend over 64", "job.requested.v1", lambda d: d.update(backend="b" * 65), False),
    ("bad sha256", "attempt.succeeded.v1", lambda d: d["result"].update(sha256="XYZ"), False),
    ("negative size", "job.completed.v1", lambda d: d["result"].update(size=-1), False),
    ("empty blob name", "job.completed.v1", lambda d: d["result"].update(name=""), False),
    ("blob without mime", "job.completed.v1", lambda d: d["result"].pop("mime"), False),
    ("attempt 0", "attempt.dispatched.v1", lambda d: d.update(attempt=0), False),
    ("attempt 1001", "attempt.failed.v1", lambda d: d.update(attempt=1001), False),
    ("provider alias with capitals", "attempt.dispatched.v1", lambda d: d.update(provider="Grok"), False),
    ("status 1000", "attempt.failed.v1", lambda d: d.update(status=1000), False),
    ("negative retry_after", "attempt.failed.v1", lambda d: d.update(retry_after=-1), False),
    ("unknown reason", "attempt.failed.v1", lambda d: d.update(reason="bogus"), False),
    ("message over 2000", "job.cancelled.v1", lambda d: d.update(reason="r" * 2001), False),
    ("reject reason not a reject reason", "job.rejected.v1", lambda d: d.update(reason="timeout"), False),
    ("empty failures", "job.failed.v1", lambda d: d.update(failures=[]), True),
    ("at as a string", "job.cancelled.v1", lambda d: d.update(at="now"), False),
]


@pytest.mark.parametrize(("what", "tag", "change", "valid"), CASES, ids=[c[0] for c in CASES])
def test_schema_and_decoder_agree(what: str, tag: str, change: Any, valid: bool) -> None:
    doc = _mutated(tag, change)
    try:
        decode_event(json.dumps(doc).encode())
        decoded = True
    except messages.DecodeError:
        decoded = False
    schema_ok = _schema("job-event.json").is_valid(doc)
    assert (decoded, schema_ok) == (valid, valid), what


# ---- AsyncAPI: structure ------------------------------------------------------------------------

_X = {"^x-[\\w\\d.\\x2d_]+$": {}}


def _obj(fields: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": fields,
        "required": list(required),
        "patternProperties": _X,
        "additionalProperties": False,
    }


def _or_ref(target: str) -> dict[str, Any]:
    return {"oneOf": [{"$ref": "#/$defs/reference"}, {"$ref": f"#/$defs/{target}"}]}


_MAP = "^[A-Za-z0-9_.\\-]+$"  # component and map keys


def _map(target: str) -> dict[str, Any]:
    return {"type": "object", "propertyNames": {"pattern": _MAP}, "additionalProperties": _or_ref(target)}


ASYNCAPI_3_0 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$comment": "The AsyncAPI 3.0.0 objects this project uses, with the fields the specification allows.",
    "$ref": "#/$defs/root",
    "$defs": {
        "reference": {
            "type": "object",
            "properties": {"$ref": {"type": "string"}},
            "required": ["$ref"],
            "additionalProperties": False,
        },
        "root": _obj(
            {
                "asyncapi": {"const": "3.0.0"},
                "id": {"type": "string"},
                "info": {"$ref": "#/$defs/info"},
                "servers": _map("server"),
                "defaultContentType": {"type": "string"},
                "channels": _map("channel"),
                "operations": _map("operation"),
                "components": {"$ref": "#/$defs/components"},
            },
            ("asyncapi", "info"),
        ),
        "info": _obj(
            {
                "title": {"type": "string"},
                "version": {"type": "string"},
                "description": {"type": "string"},
                "termsOfService": {"type": "string"},
                "contact": {"type": "object"},
                "license": {"type": "object"},
                "tags": {"type": "array", "items": _or_ref("tag")},
                "externalDocs": {"type": "object"},
            },
            ("title", "version"),
        ),
        "tag": _obj({"name": {"type": "string"}, "description": {"type": "string"}, "externalDocs": {}}, ("name",)),
        "server": _obj(
            {
                "host": {"type": "string"},
                "protocol": {"type": "string"},
                "protocolVersion": {"type": "string"},
                "pathname": {"type": "string"},
                "description": {"type": "string"},
                "title": {"type": "string"},
                "summary": {"type": "string"},
                "variables": {"type": "object"},
                "security": {"type": "array"},
                "tags": {"type": "array"},
                "externalDocs": {},
                "bindings": {},
            },
            ("host", "protocol"),
        ),
        "channel": _obj(
            {
                "address": {"type": ["string", "null"]},
                "messages": _map("message"),
                "title": {"type": "string"},
                "summary": {"type": "string"},
                "description": {"type": "string"},
                "servers": {"type": "array", "items": {"$ref": "#/$defs/reference"}},
                "parameters": _map("parameter"),
                "tags": {"type": "array", "items": _or_ref("tag")},
                "externalDocs": {},
                "bindings": {},
            }
        ),
        "parameter": _obj(
            {
                "enum": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                "default": {"type": "string"},
                "description": {"type": "string"},
                "examples": {"type": "array", "items": {"type": "string"}},
                "location": {"type": "string", "pattern": "^\\$message\\.(header|payload)#"},
            }
        ),
        "operation": _obj(
            {
                "action": {"enum": ["send", "receive"]},
                "channel": {"$ref": "#/$defs/reference"},
                "title": {"type": "string"},
                "summary": {"type": "string"},
                "description": {"type": "string"},
                "security": {"type": "array"},
                "tags": {"type": "array", "items": _or_ref("tag")},
                "externalDocs": {},
                "bindings": {},
                "traits": {"type": "array"},
                "messages": {"type": "array", "items": {"$ref": "#/$defs/reference"}},
                "reply": {},
            },
            ("action", "channel"),
        ),
        "message": _obj(
            {
                "headers": {
                    "oneOf": [
                        {"$ref": "#/$defs/reference"},
                        {"$ref": "#/$defs/multiFormat"},
                        {"type": "object", "properties": {"type": {"const": "object"}}},
                    ]
                },
                "payload": {
                    "oneOf": [
                        {"$ref": "#/$defs/reference"},
                        {"$ref": "#/$defs/multiFormat"},
                        {"type": "object", "not": {"required": ["schemaFormat"]}},
                    ]
                },
                "correlationId": {},
                "contentType": {"type": "string"},
                "name": {"type": "string"},
                "title": {"type": "string"},
                "summary": {"type": "string"},
                "description": {"type": "string"},
                "tags": {"type": "array", "items": _or_ref("tag")},
                "externalDocs": {},
                "bindings": {},
                "examples": {"type": "array", "items": {"$ref": "#/$defs/messageExample"}},
                "traits": {"type": "array"},
            }
        ),
        "messageExample": {
            **_obj(
                {
                    "headers": {"type": "object"},
                    "payload": {},
                    "name": {"type": "string"},
                    "summary": {"type": "string"},
                }
            ),
            "anyOf": [{"required": ["payload"]}, {"required": ["headers"]}],
        },
        "multiFormat": _obj({"schemaFormat": {"type": "string"}, "schema": {}}, ("schemaFormat", "schema")),
        "components": _obj(
            {
                key: _map(target)
                for key, target in {
                    "schemas": "anything",
                    "servers": "server",
                    "channels": "channel",
                    "operations": "operation",
                    "messages": "message",
                    "parameters": "parameter",
                    "tags": "tag",
                }.items()
            }
        ),
        "anything": {},
    },
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = _load(DOCS / "asyncapi.json")
    return loaded


def test_the_structure_checker_refuses_what_the_spec_refuses(doc: dict[str, Any]) -> None:
    checker = Validator(ASYNCAPI_3_0)
    Validator.check_schema(ASYNCAPI_3_0)
    assert checker.is_valid(doc)
    broken = copy.deepcopy(doc)
    broken["operations"]["client_send_requested"]["action"] = "publish"  # AsyncAPI 2 wording
    assert not checker.is_valid(broken)
    broken = copy.deepcopy(doc)
    broken["channels"]["requested"]["subscribe"] = {}  # an AsyncAPI 2 field
    assert not checker.is_valid(broken)
    broken = copy.deepcopy(doc)
    del broken["info"]["version"]
    assert not checker.is_valid(broken)


def test_asyncapi_has_the_3_0_structure(doc: dict[str, Any]) -> None:
    errors = sorted(Validator(ASYNCAPI_3_0).iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    """A local ``#/…`` pointer in ``doc``, or a file relative to ``docs/``."""
    if not ref.startswith("#/"):
        path = (DOCS / ref).resolve()
        assert path.is_file(), f"{ref} does not exist"
        return _load(path)
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def _all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _all_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _all_refs(v)]
    return []


def test_asyncapi_references_resolve(doc: dict[str, Any]) -> None:
    refs = _all_refs(doc)
    assert refs
    for ref in refs:
        _resolve(doc, ref)
    for message in doc["components"]["messages"].values():
        payload = message["payload"]
        assert payload["schemaFormat"] == "application/schema+json;version=draft-2020-12"
        schema = _resolve(doc, payload["schema"]["$ref"])
        for example in message["examples"]:
            Validator(schema).validate(example["payload"])
        assert Validator(schema).is_valid({"type": message["name"]}) is False


def test_channel_parameters_match_addresses(doc: dict[str, Any]) -> None:
    for cid, channel in doc["channels"].items():
        in_address = set(re.findall(r"\{([^}]+)\}", channel["address"]))
        assert in_address == set(channel.get("parameters", {})), cid
        assert "job_id" in in_address, cid


def test_operations_use_their_channels_messages(doc: dict[str, Any]) -> None:
    """AsyncAPI 3: an operation's messages are a subset of its channel's messages."""
    for oid, op in doc["operations"].items():
        channel_ref = op["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), oid
        assert op["messages"], oid
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), oid
            _resolve(doc, message["$ref"])


# ---- AsyncAPI: true to the code ----------------------------------------------------------------

SAMPLE = {"job_id": "j-1", "client": "bridge", "provider": "grok"}


def _concrete(address: str, **values: str) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: {**SAMPLE, **values}[m.group(1)], address)


def test_addresses_are_the_subjects_events_are_written_on(doc: dict[str, Any]) -> None:
    names = Names()
    by_name = {type(e).__name__: e for e in contract.EXAMPLES}
    for cid, channel in doc["channels"].items():
        if cid == "history":
            assert channel["address"] == names.subject("history", "x-j").replace("x-j", "{job_id}")
            continue
        subj = _concrete(channel["address"])
        parsed = names.parse(subj)
        for name in channel["messages"]:
            event = msgspec.structs.replace(by_name[name], job_id=SAMPLE["job_id"])
            if "provider" in event.__struct_fields__:
                event = msgspec.structs.replace(event, provider=SAMPLE["provider"])
            assert messages.event_subject(names, event, SAMPLE["client"]) == subj, (cid, name)
            assert messages.placed(parsed, event), (cid, name)


def test_another_prefix_regenerates_every_address() -> None:
    other = contract.asyncapi(Names("acme-img"))
    for channel in other["channels"].values():
        assert channel["address"].startswith("acme-img.job.{job_id}.")
    assert "`acme-img`" in other["info"]["description"]


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching; ``subject`` may itself hold wildcards, compared as literal tokens."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


ROLE_NAME = {"client": "bridge", "router": "router", "provider": "grok"}


def _receives(role: str) -> list[str]:
    """Where ``role`` may read job events: its subscriptions (not its inbox) and its consumer's filters."""
    _, subscribe = perms.permissions(ROLE_NAME[role])
    out = [s for s in subscribe if not s.startswith("_INBOX")]
    for cfg in consumer_configs(Names(), Config()):
        if cfg.name == ("router" if role == "router" else f"provider-{ROLE_NAME[role]}"):
            out += list(cfg.filter_subjects or []) + ([cfg.filter_subject] if cfg.filter_subject else [])
    return out


def test_operations_agree_with_permissions_and_consumers(doc: dict[str, Any]) -> None:
    declared = {
        (op["tags"][0]["name"], op["action"], op["channel"]["$ref"].rpartition("/")[2])
        for op in doc["operations"].values()
    }
    for role, name in ROLE_NAME.items():
        publish, _ = perms.permissions(name)
        receive = _receives(role)
        own = {"client": name} if role == "client" else {"provider": name} if role == "provider" else {}
        for cid, channel in doc["channels"].items():
            subj = _concrete(channel["address"], **own)
            may_send = any(_matches(p, subj) for p in publish)
            may_receive = any(_matches(p, subj) for p in receive)
            assert ((role, "send", cid) in declared) == may_send, (role, "send", cid, subj)
            if (role, "receive", cid) in declared:
                assert may_receive, (role, "receive", cid, subj)
            elif role != "client":  # a client may follow any job subject; only the useful ones are listed
                assert not may_receive, (role, "receive", cid, subj)


def test_the_breaker_record_validates_against_its_schema() -> None:
    doc = _load(DOCS / "schema" / "provider.health.v1.json")
    record = ProviderHealth(provider="grok", op="draw", state="open", failures=3, reason="auth", until=1.0e9)
    Validator(doc).validate(json.loads(msgspec.json.encode(record)))
    assert list(Validator(doc).iter_errors({"type": "provider.health.v1", "provider": "grok", "op": "paint"}))
    [example] = _nats_api_examples(health=True)  # the doc's example is a real record
    real = msgspec.json.decode(json.dumps(example).encode(), type=ProviderHealth)
    Validator(doc).validate(json.loads(msgspec.json.encode(real)))
