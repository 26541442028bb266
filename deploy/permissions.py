#!/usr/bin/env python3
"""Per-actor NATS permissions for aiimg: writes ``deploy/nats/auth.conf`` and the Helm values.

Usage::

    python deploy/permissions.py            # rewrite deploy/nats/auth.conf, the Helm values and the docs table
    python deploy/permissions.py --check    # exit 1 if any of them is out of date (CI)
    python deploy/permissions.py --print    # the auth.conf text on stdout

Why generated: every provider alias and every client needs its own user whose rights differ
only in that name, and NATS config has no loops. One Python table here is the source; the
single node, the docker-compose cluster, the Kubernetes chart values and the loopback test
cluster all include the same generated text, so the permissions the tests exercise are the
permissions that ship. :data:`MATRIX` states what each role may and may not do, in words and
as one probe subject per cell; ``tests/reliability/test_role_matrix.py`` tries every cell
against a real nats-server, and ``docs/operations.md`` shows the same table.

Roles (user names; passwords come from the environment of the nats-server process,
``$AIIMG_PW_<ROLE>``, so no secret is in this repository):

* ``aiimg-router`` — consumes ``router``, writes dispatches, timeouts and terminal events,
  and owns the JetStream layout: the only aiimg role that may create, update or delete the
  stream, its consumers and the shared buckets (start it first);
* ``aiimg-<alias>`` (one per provider) — may pull only from its durable consumer
  ``provider-<alias>``, answer attempts only as itself (``<prefix>.job.*.attempt.<alias>``),
  write results, and read histories, results and clients' inputs;
* ``aiimg-<client>`` (one per client: the AstrBot plugin ``bridge``, the CLI …) — may submit
  and cancel only under its own name (``<prefix>.job.*.requested.<client>``), write only its
  own input and reference buckets and its own selfie keys, and read histories and results;
  it may create, pull from and ack exactly one durable consumer, its ``deliver-<client>`` on
  its own results (``<prefix>.job.*.done.<client>``: the create subject names the consumer and
  its filter), and no other; it cannot dispatch, answer an attempt or end a job;
* ``aiimg-admin`` — everything in the account, for operators (``nats`` CLI, upgrades).

Each user has its own inbox prefix (``_INBOX_<user>``; set ``nats.inbox_prefix`` to it) and
may subscribe only there (plus what it must follow), so no actor reads another's replies.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AUTH_CONF = ROOT / "deploy" / "nats" / "auth.conf"
HELM_VALUES = ROOT / "deploy" / "k8s" / "nats-values.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"

sys.path.insert(0, str(ROOT))
from aiimg.messages import Names  # noqa: E402
from aiimg.services.config import CAPABILITIES  # noqa: E402

PROVIDERS: tuple[str, ...] = tuple(sorted(CAPABILITIES))
"""Every provider alias aiimg knows (one user each)."""

CLIENTS: tuple[str, ...] = ("bridge",)
"""Client ids, one NATS user each (``aiimg-<client>``; its ``nats.client_id`` is the same name).
Add a name here (and run this script) for each further bot or application that submits jobs."""

ACCOUNT = "AIIMG"


def user_name(role: str) -> str:
    """``router`` → ``aiimg-router``; a provider alias or client id → ``aiimg-<name>``."""
    return f"aiimg-{role}"


def password_var(role: str) -> str:
    """The environment variable the nats-server reads this role's password from."""
    return "AIIMG_PW_" + role.upper().replace("-", "_")


def inbox_prefix(role: str) -> str:
    return f"_INBOX_{user_name(role)}"


def roles() -> list[str]:
    return ["router", *PROVIDERS, *CLIENTS, "admin"]


def _direct_get(stream: str) -> list[str]:
    return [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>"]


def _micro(n: Names, actor: str) -> list[str]:
    """A micro service's subscriptions: the ``$SRV`` discovery verbs and its ``status`` endpoint.
    Its replies go to the asker's inbox, which ``allow_responses`` permits (only as replies)."""
    return ["$SRV.>", n.service_subject(actor)]


def responds(role: str) -> bool:
    """Whether ``role`` answers requests (micro services): its user gets ``allow_responses``."""
    return role == "router" or role in PROVIDERS


def permissions(role: str, prefix: str = "aiimg") -> tuple[list[str], list[str]]:
    """(publish allow-list, subscribe allow-list) of ``role``; everything else is denied."""
    if role == "admin":
        return [">"], [">"]
    n = Names(prefix)
    stream = n.jobs_stream
    results, kv = n.blob_bucket, n.kv_bucket
    health = n.health_key().replace("*.*", ">")
    inbox = [f"{inbox_prefix(role)}.>"]

    # Every role: see that the layout exists, read job histories and results (direct gets).
    read = [
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.INFO.OBJ_{results}",
        f"$JS.API.STREAM.INFO.KV_{kv}",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        *_direct_get(stream),
        *_direct_get(f"OBJ_{results}"),
        # Provider health (circuit breakers): readable by all, for `aiimg status` too.
        f"$JS.API.DIRECT.GET.KV_{kv}.$KV.{kv}.{health}",
    ]

    if role == "router":
        layout = [
            f"$JS.API.STREAM.CREATE.{stream}",
            f"$JS.API.STREAM.UPDATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.*",
            f"$JS.API.STREAM.CREATE.OBJ_{results}",
            f"$JS.API.STREAM.CREATE.KV_{kv}",
            f"$JS.API.STREAM.UPDATE.KV_{kv}",
        ]
        work = [
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{n.router_consumer}",
            f"$JS.ACK.{stream}.{n.router_consumer}.>",
            n.subject("dispatch"),
            n.subject("attempt"),  # timeouts, as the provider that went silent
            n.subject("done"),  # <prefix>.job.*.done.*: every client's results
            f"$KV.{kv}.{health}",  # breakers: written compare-and-set by routers only
        ]
        return read + layout + work, [*inbox, f"$KV.{kv}.{health}", *_micro(n, "router")]
    if role in PROVIDERS:
        consumer = n.provider_consumer(role)
        work = [
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"$JS.ACK.{stream}.{consumer}.>",
            n.subject("attempt", token=role),
            f"$O.{results}.>",  # results: chunks and metadata (no purge: the bucket is shared)
        ]
        inputs: list[str] = []
        for client in CLIENTS:
            inputs += _direct_get(f"OBJ_{n.input_bucket(client)}") + _direct_get(f"OBJ_{n.refs_bucket(client)}")
        # Terminal events, to stop an attempt whose job already ended.
        return read + work + inputs, [*inbox, n.subject("done"), *_micro(n, role)]
    if role in CLIENTS:
        own = [n.input_bucket(role), n.refs_bucket(role)]
        buckets: list[str] = []
        for bucket in own:
            buckets += [
                f"$O.{bucket}.>",
                f"$JS.API.STREAM.CREATE.OBJ_{bucket}",
                f"$JS.API.STREAM.INFO.OBJ_{bucket}",
                f"$JS.API.STREAM.PURGE.OBJ_{bucket}",  # only its own buckets: abandoned uploads
                *_direct_get(f"OBJ_{bucket}"),
            ]
        selfie = n.selfie_key(role, "x").rsplit(".", 1)[0]
        submit = [
            n.subject("requested", token=role),
            n.subject("cancel", token=role),
            # Selfie references: the client's own KV keys; the shared keys of earlier versions
            # are readable (once, to migrate them).
            f"$KV.{kv}.{selfie}.>",
            f"$JS.API.DIRECT.GET.KV_{kv}.$KV.{kv}.{selfie}.>",
            f"$JS.API.DIRECT.GET.KV_{kv}.$KV.{kv}.{n.legacy_selfie_key('x').rsplit('.', 1)[0]}.>",
            *_direct_get(f"OBJ_{n.legacy_refs_bucket}"),
        ]
        # Its results, durably: one consumer, named and filtered in the create subject (so it can
        # neither make another consumer nor point its own at another client's results).
        deliver = n.deliver_consumer(role)
        results_consumer = [
            n.consumer_create_subject(deliver, n.subject("done", token=role)),
            n.consumer_next_subject(deliver),
            n.ack_subjects(deliver),
        ]
        # Following jobs: every event of any job (a plain subscription).
        return read + buckets + submit + results_consumer, [*inbox, n.subject("history")]
    raise ValueError(f"unknown role {role!r}")


# ---- what each role may do, in words and as probes -------------------------------------------


@dataclass(frozen=True, slots=True)
class Cell:
    """One capability: how to probe it (publish to or subscribe on ``subject``) and who has it.

    In ``subject``, ``{self}`` is the probing role's own name, ``{other}`` another provider or
    client than itself; ``{p}``, ``{p_}``, ``{jobs}``, ``{results}``, ``{kv}`` are the prefix (as a
    subject and as a bucket name), the job stream, the results bucket and the KV bucket.
    ``allowed`` names role kinds: ``router``, ``provider``, ``client``, ``admin``.
    """

    what: str
    action: str  # "pub" | "sub"
    subject: str
    allowed: frozenset[str]


def _cell(what: str, action: str, subject: str, *allowed: str) -> Cell:
    return Cell(what, action, subject, frozenset({*allowed, "admin"}))


MATRIX: tuple[Cell, ...] = (
    _cell("submit a job under its own name", "pub", "{p}.job.probe.requested.{self}", "client"),
    _cell("submit a job under another client's name", "pub", "{p}.job.probe.requested.{other}"),
    _cell("cancel a job under its own name", "pub", "{p}.job.probe.cancel.{self}", "client"),
    _cell(
        "read job histories",
        "pub",
        "$JS.API.DIRECT.GET.{jobs}.{p}.job.probe.done.bridge",
        "router",
        "provider",
        "client",
    ),
    _cell("follow every job's events", "sub", "{p}.job.*.>", "client"),
    _cell("see terminal events", "sub", "{p}.job.*.done.*", "provider", "client"),
    _cell("dispatch an attempt", "pub", "{p}.job.probe.dispatch.local", "router"),
    _cell("answer an attempt as itself", "pub", "{p}.job.probe.attempt.{self}", "router", "provider"),
    _cell("answer another provider's attempt", "pub", "{p}.job.probe.attempt.{other}", "router"),
    _cell("end a job", "pub", "{p}.job.probe.done.{self}", "router"),
    _cell("pull its own work items", "pub", "$JS.API.CONSUMER.MSG.NEXT.{jobs}.provider-{self}", "provider"),
    _cell("pull another provider's work items", "pub", "$JS.API.CONSUMER.MSG.NEXT.{jobs}.provider-{other}"),
    _cell("pull the router's messages", "pub", "$JS.API.CONSUMER.MSG.NEXT.{jobs}.router", "router"),
    _cell("ack the router's messages", "pub", "$JS.ACK.{jobs}.router.1.1.1.1.1.1", "router"),
    _cell(
        "create or change the router's consumer",
        "pub",
        "$JS.API.CONSUMER.CREATE.{jobs}.router.{p}.job.nothing.requested",
        "router",
    ),
    _cell(
        "create or change a provider's consumer",
        "pub",
        "$JS.API.CONSUMER.CREATE.{jobs}.provider-local.{p}.job.*.dispatch.local",
        "router",
    ),
    _cell(
        "create its own results consumer",
        "pub",
        "$JS.API.CONSUMER.CREATE.{jobs}.deliver-{self}.{p}.job.*.done.{self}",
        "router",
        "client",
    ),
    _cell(
        "point its results consumer at another client's results",
        "pub",
        "$JS.API.CONSUMER.CREATE.{jobs}.deliver-{self}.{p}.job.*.done.{other}",
        "router",
    ),
    _cell(
        "create another client's results consumer",
        "pub",
        "$JS.API.CONSUMER.CREATE.{jobs}.deliver-{other}.{p}.job.*.done.{other}",
        "router",
    ),
    _cell(
        "create its results consumer without a filter",
        "pub",
        "$JS.API.CONSUMER.CREATE.{jobs}.deliver-{self}",
        "router",
    ),
    _cell("pull its own results", "pub", "$JS.API.CONSUMER.MSG.NEXT.{jobs}.deliver-{self}", "client"),
    _cell("ack its own results", "pub", "$JS.ACK.{jobs}.deliver-{self}.1.1.1.1.1.1", "client"),
    _cell("pull another client's results", "pub", "$JS.API.CONSUMER.MSG.NEXT.{jobs}.deliver-{other}"),
    _cell("ack another client's results", "pub", "$JS.ACK.{jobs}.deliver-{other}.1.1.1.1.1.1"),
    _cell(
        "read its results consumer's state",
        "pub",
        "$JS.API.CONSUMER.INFO.{jobs}.deliver-{self}",
        "router",
        "provider",
        "client",
    ),
    _cell("delete its results consumer", "pub", "$JS.API.CONSUMER.DELETE.{jobs}.deliver-{self}", "router"),
    _cell("create a consumer without a name", "pub", "$JS.API.CONSUMER.CREATE.{jobs}", "admin"),
    _cell("create a durable the legacy way", "pub", "$JS.API.CONSUMER.DURABLE.CREATE.{jobs}.router", "admin"),
    _cell("delete a consumer", "pub", "$JS.API.CONSUMER.DELETE.{jobs}.router", "router"),
    _cell("create or update the job stream", "pub", "$JS.API.STREAM.UPDATE.{jobs}", "router"),
    _cell("delete or purge the job stream", "pub", "$JS.API.STREAM.PURGE.{jobs}", "admin"),
    _cell("write results", "pub", "$O.{results}.C.probe", "provider"),
    _cell("purge results", "pub", "$JS.API.STREAM.PURGE.OBJ_{results}", "admin"),
    _cell("read results", "pub", "$JS.API.DIRECT.GET.OBJ_{results}", "router", "provider", "client"),
    _cell("write its own input images", "pub", "$O.{p_}_in_{self}.C.probe", "client"),
    _cell("write another client's input images", "pub", "$O.{p_}_in_{other}.C.probe"),
    _cell("purge its own input images", "pub", "$JS.API.STREAM.PURGE.OBJ_{p_}_in_{self}", "client"),
    _cell("read clients' input images", "pub", "$JS.API.DIRECT.GET.OBJ_{p_}_in_bridge", "provider", "client"),
    _cell("write its own selfie references", "pub", "$KV.{kv}.selfie.{self}.bot", "client"),
    _cell("write another client's selfie references", "pub", "$KV.{kv}.selfie.{other}.bot"),
    _cell(
        "read its own selfie references",
        "pub",
        "$JS.API.DIRECT.GET.KV_{kv}.$KV.{kv}.selfie.{self}.bot",
        "client",
    ),
    _cell(
        "read another client's selfie references",
        "pub",
        "$JS.API.DIRECT.GET.KV_{kv}.$KV.{kv}.selfie.{other}.bot",
    ),
    _cell(
        "read provider health",
        "pub",
        "$JS.API.DIRECT.GET.KV_{kv}.$KV.{kv}.health.grok.draw",
        "router",
        "provider",
        "client",
    ),
    _cell("write provider health", "pub", "$KV.{kv}.health.grok.draw", "router"),
    _cell("watch provider health", "sub", "$KV.{kv}.health.>", "router"),
    _cell("answer discovery ($SRV.PING/INFO/STATS)", "sub", "$SRV.PING", "router", "provider"),
    _cell("serve its own status endpoint", "sub", "{p}.svc.{self}.status", "router", "provider"),
    _cell("serve another actor's status endpoint", "sub", "{p}.svc.{other}.status"),
    _cell("read its own replies", "sub", "_INBOX_aiimg-{self}.>", "router", "provider", "client"),
    _cell("read another actor's replies", "sub", "_INBOX_aiimg-{other}.>"),
)
"""Every cell of the role matrix (see ``docs/operations.md``). ``admin`` may do everything."""


def kind(role: str) -> str:
    if role in PROVIDERS:
        return "provider"
    if role in CLIENTS:
        return "client"
    return role


def probe(cell: Cell, role: str, prefix: str = "aiimg") -> str:
    """The subject that tests ``cell`` for ``role``."""
    if kind(role) == "client":
        other = "another" if role != "another" else "other"
    else:
        other = "grok" if role != "grok" else "local"
    own = role if kind(role) in ("provider", "client") or cell.action == "sub" else "x"
    n = Names(prefix)
    return cell.subject.format(
        self=own,
        other=other,
        p=n.prefix,
        p_=n.blob_bucket.removesuffix("_blobs"),
        jobs=n.jobs_stream,
        results=n.blob_bucket,
        kv=n.kv_bucket,
    )


def matrix_table() -> str:
    """The role matrix as a Markdown table (``docs/operations.md``)."""
    kinds = ("router", "provider", "client", "admin")
    head = "| may … | " + " | ".join(f"`{k}`" for k in kinds) + " |\n|---|" + ":-:|" * len(kinds) + "\n"
    rows = "".join(
        f"| {cell.what} | " + " | ".join("✓" if k in cell.allowed else "✗" for k in kinds) + " |\n" for cell in MATRIX
    )
    return head + rows


def _list(items: list[str], indent: str) -> str:
    return "[\n" + "".join(f'{indent}  "{s}"\n' for s in items) + f"{indent}]"


def auth_conf(prefix: str = "aiimg") -> str:
    """The ``accounts`` block for nats-server (included by every deploy config)."""
    out = [
        "# Generated by deploy/permissions.py — edit that file, then run it. Do not edit by hand.",
        "#",
        "# aiimg users and their permissions (one account, AIIMG, with JetStream). Passwords are read",
        "# from the nats-server's environment: AIIMG_PW_ROUTER, AIIMG_PW_<ALIAS>, AIIMG_PW_BRIDGE,",
        "# AIIMG_PW_ADMIN, NATS_SYS_PASSWORD. A missing variable stops the server at start.",
        "",
        "accounts {",
        f"  {ACCOUNT} {{",
        "    jetstream: enabled",
        "    users: [",
    ]
    for role in roles():
        pub, sub = permissions(role, prefix)
        ind = "          "
        out += [
            "      {",
            f'        user: "{user_name(role)}"',
            f"        password: ${password_var(role)}",
            "        permissions: {",
            f"          publish: {{ allow: {_list(pub, ind)} }}",
            f"          subscribe: {{ allow: {_list(sub, ind)} }}",
            *(["          allow_responses: true"] if responds(role) else []),
            "        }",
            "      }",
        ]
    out += [
        "    ]",
        "  }",
        "  SYS {",
        '    users: [ { user: "sys", password: $NATS_SYS_PASSWORD } ]',
        "  }",
        "}",
        "system_account: SYS",
        "",
    ]
    return "\n".join(out)


def helm_values(auth: str) -> str:
    """Values for the official NATS Helm chart: a 3-node JetStream cluster that includes ``auth``."""
    body = "".join(f"        {line}\n" if line else "\n" for line in auth.splitlines())
    envs = "".join(
        f"    {password_var(r)}:\n      valueFrom:\n        secretKeyRef: {{name: aiimg-nats-users, key: {password_var(r)}}}\n"
        for r in [*roles(), "nats-sys"]
    ).replace("AIIMG_PW_NATS_SYS", "NATS_SYS_PASSWORD")
    return f"""# Generated by deploy/permissions.py — values for the official NATS Helm chart (nats-io/k8s, chart "nats" 1.x):
#
#   helm repo add nats https://nats-io.github.io/k8s/helm/charts/
#   kubectl apply -f deploy/k8s/aiimg.yaml          # namespace, secrets (fill them in first)
#   helm install nats nats/nats -n aiimg -f deploy/k8s/nats-values.yaml
#
# Three servers with JetStream on persistent volumes (streams and buckets at replicas 3:
# aiimg's nats.replicas = 3), and aiimg's per-actor users from deploy/nats/auth.conf,
# whose passwords come from the Secret "aiimg-nats-users".
config:
  cluster:
    enabled: true
    replicas: 3
  jetstream:
    enabled: true
    fileStore:
      pvc:
        size: 10Gi
  merge:
    $include: aiimg-auth.conf
configMap:
  merge:
    data:
      aiimg-auth.conf: |
{body}container:
  env:
{envs}"""


MATRIX_START, MATRIX_END = "<!-- role-matrix:start -->", "<!-- role-matrix:end -->"


def operations_with_matrix(text: str) -> str:
    """``docs/operations.md`` with the role matrix between its markers regenerated."""
    head, sep, rest = text.partition(MATRIX_START)
    if not sep:
        raise SystemExit(f"{OPERATIONS}: markers {MATRIX_START} / {MATRIX_END} missing")
    _, _, tail = rest.partition(MATRIX_END)
    return f"{head}{MATRIX_START}\n{matrix_table()}{MATRIX_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="fail if the generated files are out of date")
    p.add_argument("--print", action="store_true", help="print auth.conf")
    args = p.parse_args(argv)
    auth = auth_conf()
    if args.print:
        sys.stdout.write(auth)
        return 0
    wanted = {
        AUTH_CONF: auth,
        HELM_VALUES: helm_values(auth),
        OPERATIONS: operations_with_matrix(OPERATIONS.read_text(encoding="utf-8")),
    }
    if args.check:
        stale = [str(p.relative_to(ROOT)) for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
        if stale:
            print(f"out of date (run python deploy/permissions.py): {', '.join(stale)}", file=sys.stderr)
            return 1
        return 0
    for path, text in wanted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
