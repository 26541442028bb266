#!/usr/bin/env python3
"""Per-actor NATS permissions for aiimg: writes ``deploy/nats/auth.conf`` and the Helm values.

Usage::

    python deploy/permissions.py            # rewrite deploy/nats/auth.conf and deploy/k8s/nats-values.yaml
    python deploy/permissions.py --check    # exit 1 if either file is out of date (CI)
    python deploy/permissions.py --print    # the auth.conf text on stdout

Why generated: every provider alias needs its own user whose rights differ only in the
alias, and NATS config has no loops. One Python table here is the source; the single
node, the docker-compose cluster, the Kubernetes chart values and the loopback test
cluster all include the same generated text, so the permissions the tests exercise are
the permissions that ship.

Roles (user names; passwords come from the environment of the nats-server process,
``$AIIMG_PW_<ROLE>``, so no secret is in this repository):

* ``aiimg-router`` — consumes ``router``, writes dispatches, timeouts and terminal events,
  and owns the JetStream layout (the only aiimg role that may create or update the stream,
  consumers and buckets: start it first, or once, before the providers);
* ``aiimg-<alias>`` (one per provider) — may pull only from its durable consumer
  ``provider-<alias>`` (so only work items on ``<prefix>.job.*.dispatch.<alias>``), ack
  them, write attempt results and blobs, and read inputs and histories;
* ``aiimg-bridge`` (the AstrBot plugin, the CLI, any client) — may submit
  (``<prefix>.job.*.requested``, ``.cancel``, input blobs, selfie references) and read job
  histories and results; it cannot dispatch, answer an attempt or end a job;
* ``aiimg-admin`` — everything in the account, for operators (``nats`` CLI, upgrades).

Each user has its own inbox prefix (``_INBOX_<user>``; set ``nats.inbox_prefix`` to it) and
may subscribe only there, so no actor can read replies meant for another.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AUTH_CONF = ROOT / "deploy" / "nats" / "auth.conf"
HELM_VALUES = ROOT / "deploy" / "k8s" / "nats-values.yaml"

sys.path.insert(0, str(ROOT))
from services.config import CAPABILITIES  # noqa: E402

PROVIDERS: tuple[str, ...] = tuple(sorted(CAPABILITIES))
"""Every provider alias aiimg knows (one user each)."""

ACCOUNT = "AIIMG"


def user_name(role: str) -> str:
    """``router`` → ``aiimg-router``; a provider alias → ``aiimg-<alias>``."""
    return f"aiimg-{role}"


def password_var(role: str) -> str:
    """The environment variable the nats-server reads this role's password from."""
    return "AIIMG_PW_" + role.upper().replace("-", "_")


def inbox_prefix(role: str) -> str:
    return f"_INBOX_{user_name(role)}"


def roles() -> list[str]:
    return ["router", *PROVIDERS, "bridge", "admin"]


def permissions(role: str, prefix: str = "aiimg") -> tuple[list[str], list[str]]:
    """(publish allow-list, subscribe allow-list) of ``role``; everything else is denied."""
    up = prefix.upper().replace("-", "_")
    stream = f"{up}_JOBS"
    bucket = prefix.replace("-", "_")
    blobs, selfie, kv = f"{bucket}_blobs", f"{bucket}_selfie", f"{bucket}_state"
    job = f"{prefix}.job"
    inbox = [f"{inbox_prefix(role)}.>"]
    if role == "admin":
        return [">"], [">"]

    # Every role: see that the layout exists, read job histories and blobs (direct gets).
    read = [
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.INFO.OBJ_{blobs}",
        f"$JS.API.STREAM.INFO.OBJ_{selfie}",
        f"$JS.API.STREAM.INFO.KV_{kv}",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.DIRECT.GET.OBJ_{blobs}",
        f"$JS.API.DIRECT.GET.OBJ_{blobs}.>",
        f"$JS.API.DIRECT.GET.OBJ_{selfie}",
        f"$JS.API.DIRECT.GET.OBJ_{selfie}.>",
    ]
    # Writers of blobs: chunks and metadata, and the purge of a failed or duplicate upload.
    write_blobs = [f"$O.{blobs}.>", f"$JS.API.STREAM.PURGE.OBJ_{blobs}"]

    if role == "router":
        layout = [
            f"$JS.API.STREAM.CREATE.{stream}",
            f"$JS.API.STREAM.UPDATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
            f"$JS.API.STREAM.CREATE.OBJ_{blobs}",
            f"$JS.API.STREAM.CREATE.OBJ_{selfie}",
            f"$JS.API.STREAM.CREATE.KV_{kv}",
        ]
        work = [
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.router",
            f"$JS.ACK.{stream}.router.>",
            f"{job}.*.dispatch.*",
            f"{job}.*.attempt",
            f"{job}.*.done",
        ]
        return read + layout + work, inbox
    if role in PROVIDERS:
        consumer = f"provider-{role}"
        work = [
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"$JS.ACK.{stream}.{consumer}.>",
            f"{job}.*.attempt",
        ]
        # Terminal events, to stop an attempt whose job already ended.
        return read + write_blobs + work, [*inbox, f"{job}.*.done"]
    if role == "bridge":
        submit = [
            f"{job}.*.requested",
            f"{job}.*.cancel",
            "$JS.API.STREAM.NAMES",
            # Follow one job: an ordered (ephemeral) consumer on that job's history. nats-py asks
            # on the plain CREATE subject; a consumer the bridge makes can only be read by the
            # bridge (pulling from the actors' durables needs their MSG.NEXT rights).
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.*.{job}.*.>",
            f"$JS.FC.{stream}.>",
            # Selfie references: their own bucket and the small KV index.
            f"$O.{selfie}.>",
            f"$JS.API.STREAM.CREATE.OBJ_{selfie}",
            f"$JS.API.STREAM.PURGE.OBJ_{selfie}",
            f"$KV.{kv}.>",
            f"$JS.API.DIRECT.GET.KV_{kv}.>",
            f"$JS.API.STREAM.MSG.GET.KV_{kv}",
        ]
        return read + write_blobs + submit, [*inbox, f"{job}.*.>"]
    raise ValueError(f"unknown role {role!r}")


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="fail if the generated files are out of date")
    p.add_argument("--print", action="store_true", help="print auth.conf")
    args = p.parse_args(argv)
    auth = auth_conf()
    if args.print:
        sys.stdout.write(auth)
        return 0
    wanted = {AUTH_CONF: auth, HELM_VALUES: helm_values(auth)}
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
