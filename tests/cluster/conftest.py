"""Fixtures for tests of the operator on the devcluster.

``operator`` installs the CRD and the RBAC from ``manifests/`` (everything but the operator's
own Deployment, whose image cannot run here) and runs ``modelops run`` as a local process
authenticated as the ``modelops-system/modelops`` ServiceAccount with a TokenRequest token:
exactly the permissions a real install grants, so a missing rule fails a test. Prometheus is
reached through a TCP proxy the tests can cut.
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from modelops.devcluster import toolchain
from modelops.devcluster.cluster import ClusterState
from modelops.devcluster.layout import CacheLayout, cache_root
from modelops.devcluster.localoperator import Kubectl, LocalOperator, install_manifests, service_account_kubeconfig
from tests.support.tcp_proxy import TcpProxy

__all__ = ["Kubectl", "Operator", "install_manifests", "RESYNC_SECONDS", "audit_writes", "utc_now"]
RESYNC_SECONDS = 2


@dataclass
class Operator(LocalOperator):
    """The local operator, with the proxy in front of Prometheus that tests cut to simulate an outage."""

    prometheus: TcpProxy | None = None


@pytest.fixture(scope="session")
def kubectl(devcluster: ClusterState) -> Kubectl:
    binaries = toolchain.resolve(CacheLayout(cache_root()), progress=lambda _: None)
    return Kubectl(binaries.kubectl, devcluster.kubeconfig)


@pytest.fixture(scope="session")
def operator(
    devcluster: ClusterState, admin_api: client.ApiClient, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    install_manifests(kubectl)
    folder = tmp_path_factory.mktemp("operator")
    kubeconfig = service_account_kubeconfig(devcluster, admin_api, folder / "operator.kubeconfig")
    proxy = TcpProxy("127.0.0.1", devcluster.ports["prometheus"])
    proxy.start()
    handle = Operator(kubeconfig=kubeconfig, log=folder / "operator.log", prometheus_url=proxy.url,
                      resync_seconds=RESYNC_SECONDS, prometheus=proxy)
    handle.start()
    yield handle
    handle.stop()
    proxy.stop()
    assert not handle.logged_problems(), "the operator logged errors:\n" + handle.log_text()[-5000:]


def audit_writes(devcluster: ClusterState, *, user: str, namespace: str, since: str) -> list[dict[str, Any]]:
    """Write requests (create/update/patch/delete) by ``user`` in ``namespace`` after ``since`` (RFC 3339)."""
    writes = []
    for line in devcluster.layout.audit_log.read_text().splitlines():
        entry = json.loads(line)
        if (
            entry.get("stage") == "ResponseComplete"
            and entry["user"].get("username") == user
            and (entry.get("objectRef") or {}).get("namespace") == namespace
            and entry["requestReceivedTimestamp"] > since
        ):
            writes.append(entry)
    return writes


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
