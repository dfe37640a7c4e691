"""A throw-away CA and the UK8S etcd certificates (ca.pem, etcd.pem, etcd-key.pem)."""

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    """Paths of the CA certificate and the shared etcd server/peer/client pair."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def host_domain(net: int) -> str:
    """The DNS domain the etcd certificate also covers (*.<domain>), for endpoints written as host names."""
    return f"fleet{net}.test"


def make_pki(directory: Path, net: int) -> Pki:
    """Write ca.pem, ca-key.pem, etcd.pem and etcd-key.pem valid for every 127.0.<net>.x IP and *.fleet<net>.test."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        _builder("fleet-ca", _name("fleet-ca"), ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ips = {ipaddress.ip_address("127.0.0.1")}
    ips.update(ipaddress.ip_address(f"127.0.{net}.{host}") for host in range(1, 255))
    sans = [x509.DNSName("localhost"), x509.DNSName(f"*.{host_domain(net)}")] + [
        x509.IPAddress(ip) for ip in sorted(ips)
    ]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder("etcd", ca_cert.subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(ca=directory / "ca.pem", cert=directory / "etcd.pem", key=directory / "etcd-key.pem")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (directory / "ca-key.pem").write_bytes(_pem_key(ca_key))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(_pem_key(key))
    pki.key.chmod(0o600)
    return pki
