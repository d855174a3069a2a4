"""The generated PKI: a CA that signs the serving and client certificates the cluster needs."""

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from modelops.devcluster import pki


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> pki.PkiFiles:
    return pki.generate(tmp_path_factory.mktemp("pki"), service_ip="10.96.0.1")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_leaf_is_signed_by_the_ca(files: pki.PkiFiles) -> None:
    ca = _cert(files.ca_cert)
    for name in ("apiserver", "serving", "admin"):
        _cert(files.pair(name)[0]).verify_directly_issued_by(ca)


def test_apiserver_certificate_covers_loopback_cluster_names_and_service_ip(files: pki.PkiFiles) -> None:
    names = _cert(files.pair("apiserver")[0]).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} <= set(
        names.get_values_for_type(x509.DNSName)
    )
    addresses = set(names.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.96.0.1")} <= addresses


def test_admin_is_a_client_certificate_in_system_masters(files: pki.PkiFiles) -> None:
    admin = _cert(files.pair("admin")[0])
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    usages = admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_private_keys_are_readable_only_by_their_owner(files: pki.PkiFiles) -> None:
    for path in (files.root / "ca.key", files.pair("admin")[1], files.service_account_key):
        assert path.stat().st_mode & 0o077 == 0, path
