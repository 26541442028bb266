"""NATS authentication options (``services.infra.bus.connect_options``) against real nats-servers.

User/password, token, TLS with a private CA and mutual TLS with a client certificate:
each configuration runs a whole job. A wrong credential fails the connection with a
``BusError`` that does not repeat the credential.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aiimg.messages import JobCompleted
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import Config
from aiimg.services.domain.errors import BusError
from aiimg.services.infra.bus import connect
from aiimg.services.infra.embedded import EmbeddedServer
from aiimg.services.providers.local import LocalProvider

from ..conftest import make_config

pytestmark = pytest.mark.anyio


# ---- a private CA ---------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


def make_pki(root: Path) -> dict[str, Path]:
    """CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aiimg test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[Any, Any]:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf(
        "127.0.0.1",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client, client_key = leaf("aiimg-router", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    _write(root / "ca", ca)
    _write(root / "server", server, server_key)
    _write(root / "client", client, client_key)
    return {n: root / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


# ---- servers ----------------------------------------------------------------------------------------------


@pytest.fixture(name="server_with")
def _server_with(tmp_path: Path) -> Iterator[Any]:
    started: list[EmbeddedServer] = []

    def start(*args: str) -> str:
        server = EmbeddedServer(tmp_path / f"nats{len(started)}", extra_args=list(args))
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


async def _run_a_job(config: Config) -> None:
    bus = await connect(config)
    try:
        await bus.ensure_layout()
        async with running(Stack(bus, providers=[LocalProvider(config)])):
            end = await Client(bus).wait(await Client(bus).submit("draw", "auth", output="64x64"), timeout=30)
        assert isinstance(end, JobCompleted)
    finally:
        await bus.close()


async def test_user_and_password(server_with: Any, tmp_path: Path) -> None:
    url = server_with("--user", "aiimg", "--pass", "pUserPassw0rd")
    await _run_a_job(make_config(url, tmp_path, nats={"user": "aiimg", "password": "pUserPassw0rd"}))
    with pytest.raises(BusError) as err:
        await connect(make_config(url, tmp_path, nats={"user": "aiimg", "password": "pWrongPassw0rd"}))
    assert "pWrongPassw0rd" not in str(err.value) and "pUserPassw0rd" not in str(err.value)


async def test_token(server_with: Any, tmp_path: Path) -> None:
    url = server_with("--auth", "tTokenS3cret")
    await _run_a_job(make_config(url, tmp_path, nats={"token": "tTokenS3cret"}))
    with pytest.raises(BusError) as err:
        await connect(make_config(url, tmp_path, nats={"token": "tWrongToken"}))
    assert "tWrongToken" not in str(err.value)
    with pytest.raises(BusError):
        await connect(make_config(url, tmp_path))  # no credentials at all


async def test_tls_with_a_private_ca(server_with: Any, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    url = server_with("--tls", "--tlscert", str(pki["server.pem"]), "--tlskey", str(pki["server.key"]))
    url = url.replace("nats://", "tls://")
    await _run_a_job(make_config(url, tmp_path, nats={"tls_ca": str(pki["ca.pem"])}))
    # Without the CA the server's certificate is not trusted.
    with pytest.raises(BusError):
        await connect(make_config(url, tmp_path))


async def test_mutual_tls_with_a_client_certificate(server_with: Any, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    url = server_with(
        "--tlsverify",
        "--tlscert",
        str(pki["server.pem"]),
        "--tlskey",
        str(pki["server.key"]),
        "--tlscacert",
        str(pki["ca.pem"]),
    ).replace("nats://", "tls://")
    tls = {"tls_ca": str(pki["ca.pem"]), "tls_cert": str(pki["client.pem"]), "tls_key": str(pki["client.key"])}
    await _run_a_job(make_config(url, tmp_path, nats=tls))
    with pytest.raises(BusError):  # the server demands a client certificate
        await connect(make_config(url, tmp_path, nats={"tls_ca": str(pki["ca.pem"])}))


async def test_an_unreachable_server_fails_the_start_instead_of_retrying_forever(tmp_path: Path) -> None:
    with pytest.raises(BusError) as err:
        await connect(make_config("nats://127.0.0.1:1", tmp_path))
    assert "cannot connect to NATS" in str(err.value)
