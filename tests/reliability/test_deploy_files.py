"""``deploy/`` is validated, not just shipped.

* the NATS configs parse in the real ``nats-server -t`` with the variables each deployment sets;
* ``docker-compose.yml`` validates against the Compose specification (``check-jsonschema``
  vendors it; there is no docker engine here) and is consistent with ``auth.conf``;
* the Kubernetes manifests validate against the Kubernetes API schemas
  (``kubernetes-validate``), and the Helm values embed the same ``auth.conf``;
* the generated permission files are up to date, the systemd units run one actor each.

Each validator is also shown a broken file, so a check that cannot fail would be noticed.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from aiimg.services.config import CAPABILITIES, load_config
from aiimg.services.infra.embedded import find_nats_server

from .procs import DEPLOY, deploy_module

perms = deploy_module("permissions")

K8S_VERSION = "1.30.0"


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _nats_test(conf: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_nats_server(), "-t", "-c", str(conf)],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _referenced_vars(conf_text: str) -> set[str]:
    """``$NAME`` references outside quoted strings (quoted ``$JS.API…`` are subjects, not variables)."""
    unquoted = re.sub(r'"[^"]*"', '""', conf_text)
    unquoted = "\n".join(line.split("#", 1)[0] for line in unquoted.splitlines())
    return set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", unquoted))


def test_generated_permission_files_are_current() -> None:
    assert perms.main(["--check"]) == 0, "run: python deploy/permissions.py"
    assert (DEPLOY / "nats" / "auth.conf").read_text() == perms.auth_conf()


def test_single_node_config_parses_with_the_example_passwords() -> None:
    env = _env_file(DEPLOY / "systemd" / "nats.env.example")
    result = _nats_test(DEPLOY / "nats" / "single.conf", env)
    assert result.returncode == 0, result.stderr + result.stdout
    # The passwords really come from the environment: without one, the server refuses to start.
    env.pop("AIIMG_PW_BRIDGE")
    missing = _nats_test(DEPLOY / "nats" / "single.conf", env)
    assert missing.returncode != 0 and "AIIMG_PW_BRIDGE" in (missing.stderr + missing.stdout)


def test_cluster_config_needs_exactly_what_compose_gives_each_node() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    node_env: dict[str, Any] = compose["services"]["nats-1"]["environment"]
    needed = _referenced_vars((DEPLOY / "nats" / "cluster.conf").read_text()) | _referenced_vars(
        (DEPLOY / "nats" / "auth.conf").read_text()
    )
    assert needed <= set(node_env), f"compose does not set {sorted(needed - set(node_env))}"
    values = {
        k: ("p" + "x" * 12 if "PASSWORD" in k or k.startswith("AIIMG_PW_") else str(v)) for k, v in node_env.items()
    }
    values["NATS_STORE_DIR"] = "/tmp/unused"
    result = _nats_test(DEPLOY / "nats" / "cluster.conf", values)
    assert result.returncode == 0, result.stderr + result.stdout


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_validates_against_the_compose_spec(tmp_path: Path) -> None:
    ok = _check_compose(DEPLOY / "docker-compose.yml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    broken["services"]["grok"]["comand"] = broken["services"]["grok"].pop("command")  # a typo
    bad_path = tmp_path / "docker-compose.yml"
    bad_path.write_text(yaml.safe_dump(broken))
    bad = _check_compose(bad_path)
    assert bad.returncode != 0 and "comand" in bad.stdout + bad.stderr


def test_compose_runs_a_three_node_cluster_router_and_two_replicas_per_provider() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    nodes = [name for name in services if name.startswith("nats-")]
    assert len(nodes) == 3
    for name in nodes:
        svc = services[name]
        assert svc["command"] == ["-c", "/etc/nats/cluster.conf"]
        assert "./nats:/etc/nats:ro" in svc["volumes"]
        assert svc["environment"]["NATS_SERVER_NAME"] == name
    routes = {services["nats-1"]["environment"][f"NATS_ROUTE_{i}"] for i in (1, 2, 3)}
    assert routes == {f"nats://{n}:6222" for n in nodes}
    assert services["router"]["command"] == ["serve", "--only", "router"]
    assert services["router"]["deploy"]["replicas"] == 1
    providers = [name for name, svc in services.items() if name in CAPABILITIES]
    assert providers, "no provider actors in the compose file"
    for alias in providers:
        svc = services[alias]
        assert svc["command"] == ["serve", "--only", alias]
        assert svc["deploy"]["replicas"] == 2
    for name in ["router", "cli", *providers]:
        env = services[name]["environment"]
        role = "bridge" if name == "cli" else name
        assert env["AIIMG_NATS_USER"] == perms.user_name(role)
        assert env["AIIMG_NATS_INBOX"] == perms.inbox_prefix(role)
        # An actor gets its own password only.
        assert env["AIIMG_NATS_PASSWORD"].startswith("${" + perms.password_var(role) + ":")
        assert not any(k.startswith("AIIMG_PW_") for k in env)


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "aiimg.yaml").read_text()) if d]
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert deployments["aiimg-router"]["spec"]["replicas"] == 1
    providers = [n for n in deployments if n != "aiimg-router"]
    assert providers and all(deployments[n]["spec"]["replicas"] >= 2 for n in providers)
    assert ("Secret", "aiimg-keys") in kinds and ("Secret", "aiimg-nats-users") in kinds
    # A broken manifest is refused (the check can fail).
    bad = dict(deployments["aiimg-router"])
    bad["spec"] = {**bad["spec"], "replicas": "one"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kubernetes_config_and_secrets_match_the_shipped_files() -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "aiimg.yaml").read_text()) if d]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config_map["data"]["aiimg.toml"] == (DEPLOY / "aiimg.toml").read_text()
    users = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "aiimg-nats-users")
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        role = container["args"][-1]
        env = {e["name"]: e for e in container["env"]}
        assert env["AIIMG_NATS_USER"]["value"] == perms.user_name(role)
        assert env["AIIMG_NATS_INBOX"]["value"] == perms.inbox_prefix(role)
        ref = env["AIIMG_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "aiimg-nats-users", "key": perms.password_var(role)}
        assert ref["key"] in users["stringData"]


def test_helm_values_use_the_official_chart_layout_and_the_same_auth() -> None:
    values = yaml.safe_load((DEPLOY / "k8s" / "nats-values.yaml").read_text())
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["merge"] == {"$include": "aiimg-auth.conf"}
    assert values["configMap"]["merge"]["data"]["aiimg-auth.conf"] == (DEPLOY / "nats" / "auth.conf").read_text()
    env = values["container"]["env"]
    assert _referenced_vars((DEPLOY / "nats" / "auth.conf").read_text()) <= set(env)


def test_systemd_template_runs_one_actor_per_instance() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "aiimg@.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith("aiimg serve --only %i")
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "always"
    nats_unit = configparser.ConfigParser(strict=False, interpolation=None)
    nats_unit.read(DEPLOY / "systemd" / "nats-server.service")
    assert nats_unit["Service"]["ExecStart"].endswith("-c /etc/aiimg/nats/single.conf")
    actor_env = _env_file(DEPLOY / "systemd" / "actor.env.example")
    assert actor_env["AIIMG_NATS_USER"] == perms.user_name("grok")
    assert actor_env["AIIMG_NATS_INBOX"] == perms.inbox_prefix("grok")


def test_shipped_aiimg_toml_loads_and_uses_replicated_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AIIMG_NATS_URL", "AIIMG_NATS_USER", "AIIMG_NATS_PASSWORD", "AIIMG_NATS_INBOX"):
        monkeypatch.setenv(name, "nats://127.0.0.1:4222" if name.endswith("URL") else "x")
    for name in ("XAI_API_KEY", "GEMINI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.setenv(name, "sk-test-1")
    config = load_config(DEPLOY / "aiimg.toml")
    assert config.nats.replicas == 3 and config.nats.inbox_prefix == "x"
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    served = {a for a in compose["services"] if a in CAPABILITIES}
    assert served == set(config.enabled_providers()) - {"local"}


def test_dockerfile_copies_what_exists() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    root = DEPLOY.parent
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.MULTILINE):
        assert (root / src).exists(), f"Dockerfile copies missing {src}"
    assert 'ENTRYPOINT ["aiimg"]' in text


def test_cluster_script_starts_three_nodes_that_accept_the_printed_credentials(tmp_path: Path) -> None:
    """``deploy/cluster.sh`` end to end: up, a role logs in with what it printed, Ctrl-C stops every node."""
    import asyncio
    import signal
    import socket

    import nats

    proc = subprocess.Popen(
        ["bash", str(DEPLOY / "cluster.sh"), "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("cluster up: "), first
        urls = first.split()[2].split(",")
        lines = [proc.stdout.readline() for _ in range(len(perms.roles()) + 1)]
        router = next(line for line in lines if line.strip().startswith("router "))
        fields = dict(part.split("=", 1) for part in router.split()[1:])
        assert fields["user"] == "aiimg-router" and fields["inbox_prefix"] == "_INBOX_aiimg-router"
        assert len(urls) == 3
        for url in urls:  # every node takes the router's printed credentials

            async def login(url: str = url) -> None:
                nc = await nats.connect(
                    servers=[url],
                    user=fields["user"],
                    password=fields["password"],
                    inbox_prefix=fields["inbox_prefix"],
                    allow_reconnect=False,
                )
                await nc.close()

            asyncio.run(login())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        for url in urls:
            host, port = url.removeprefix("nats://").split(":")
            with pytest.raises(OSError):
                socket.create_connection((host, int(port)), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
