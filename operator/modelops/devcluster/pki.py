"""The devcluster's certificates: one CA, and every key and certificate signed by it.

Files (all PEM, in ``<state>/pki``):

- ``ca.crt``/``ca.key``: the cluster CA; clients trust it, the apiserver checks client certs with it.
- ``apiserver.crt``/``.key``: the apiserver's serving cert (loopback names, in-cluster DNS names, the Service IP).
- ``serving.crt``/``.key``: serving cert for controller-manager and scheduler health endpoints on 127.0.0.1.
- ``admin.crt``/``.key``: a client cert in ``system:masters`` (bypasses RBAC: for setup only).
- ``service-account.key``/``.pub``: signs and verifies ServiceAccount tokens.

ECDSA P-256 throughout: it is fast to generate (start-up time matters) and every
component accepts it, including for ServiceAccount token signing (ES256).
"""

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
ADMIN_USER = "modelops-admin"
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class PkiFiles:
    """Paths of the generated PEM files."""

    root: Path

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.crt", self.root / f"{name}.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def service_account_key(self) -> Path:
        return self.root / "service-account.key"

    @property
    def service_account_public_key(self) -> Path:
        return self.root / "service-account.pub"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime.datetime):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Digital signatures for every key; certificate and CRL signing for the CA only."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    now: datetime.datetime,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    builder = _builder(subject, ca_name, key.public_key(), now)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(_key_usage(signs_certificates=False), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if dns_names or ip_addresses:
        alternative_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        alternative_names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def generate(root: Path, *, service_ip: str, now: datetime.datetime | None = None) -> PkiFiles:
    """Writes a fresh CA and every certificate the cluster needs into ``root``."""
    now = now or datetime.datetime.now(datetime.UTC)
    files = PkiFiles(root)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)

    ca_key = _new_key()
    ca_name = _name("modelops-devcluster-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(root / "ca.key", _key_pem(ca_key))

    leaves = {
        "apiserver": (
            _name("kube-apiserver"),
            ExtendedKeyUsageOID.SERVER_AUTH,
            APISERVER_DNS_NAMES,
            (*LOOPBACK_ADDRESSES, service_ip),
        ),
        "serving": (_name("localhost"), ExtendedKeyUsageOID.SERVER_AUTH, ("localhost",), LOOPBACK_ADDRESSES),
        "admin": (_name(ADMIN_USER, "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, (), ()),
    }
    for name, (subject, usage, dns_names, addresses) in leaves.items():
        key, cert = _leaf(ca_key, ca_name, subject, usage, now, dns_names, addresses)
        cert_path, key_path = files.pair(name)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(key_path, _key_pem(key))

    service_account_key = _new_key()
    _write_private(files.service_account_key, _key_pem(service_account_key))
    files.service_account_public_key.write_bytes(
        service_account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return files
