"""Fixtures for tests of the operator on the devcluster.

``operator`` installs the CRD and the RBAC from ``manifests/`` (everything but the operator's
own Deployment, whose image cannot run here) and runs ``modelops run`` as a local process
authenticated as the ``modelops-system/modelops`` ServiceAccount with a TokenRequest token:
exactly the permissions a real install grants, so a missing rule fails a test. Prometheus is
reached through a query proxy (which records queries and can hold chosen ones) and a TCP
proxy the tests can cut; the apiserver through a TCP proxy of its own, which tests cut to
take the apiserver away from the operator alone.
"""

import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from modelops.devcluster import accounts, toolchain
from modelops.devcluster.cluster import ClusterState
from modelops.devcluster.layout import CacheLayout, cache_root
from modelops.devcluster.localoperator import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    Kubectl,
    LocalOperator,
    install_manifests,
    service_account_kubeconfig,
)
from tests.support.query_proxy import QueryProxy
from tests.support.tcp_proxy import TcpProxy

__all__ = ["Kubectl", "Operator", "install_manifests", "RESYNC_SECONDS", "audit_writes", "utc_now"]
RESYNC_SECONDS = 2
OPERATOR_PROMETHEUS_TIMEOUT_SECONDS = 2


@dataclass
class Operator(LocalOperator):
    """The local operator, with the proxies in front of Prometheus and the apiserver that tests cut or slow down."""

    prometheus: TcpProxy | None = None
    queries: QueryProxy | None = None
    apiserver: TcpProxy | None = None


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
    service_account_kubeconfig(devcluster, admin_api, folder / "wait-for-account.kubeconfig")  # waits for the account
    apiserver = TcpProxy("127.0.0.1", devcluster.ports["apiserver"])
    apiserver.start()
    kubeconfig = accounts.service_account_kubeconfig(
        admin_api, namespace=OPERATOR_NAMESPACE, service_account=OPERATOR_ACCOUNT,
        server=f"https://127.0.0.1:{apiserver.port}", ca_cert=devcluster.ca_cert, path=folder / "operator.kubeconfig",
    )
    proxy = TcpProxy("127.0.0.1", devcluster.ports["prometheus"])
    proxy.start()
    queries = QueryProxy(proxy.url, hold_seconds=OPERATOR_PROMETHEUS_TIMEOUT_SECONDS * 3)
    queries.start()
    handle = Operator(kubeconfig=kubeconfig, log=folder / "operator.log", prometheus_url=queries.url,
                      resync_seconds=RESYNC_SECONDS, prometheus_timeout_seconds=OPERATOR_PROMETHEUS_TIMEOUT_SECONDS,
                      prometheus=proxy, queries=queries, apiserver=apiserver,
                      notify_allowed_hosts=("127.0.0.1",))  # the tests' notify receivers listen on loopback
    handle.start()
    yield handle
    handle.stop()
    queries.stop()
    proxy.stop()
    apiserver.stop()
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
    """Now, with microseconds as the audit log writes them: a whole second would count writes earlier in
    that second as later."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
