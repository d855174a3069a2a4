"""Fixtures for tests of the operator on the devcluster.

``operator`` installs the CRD and the RBAC from ``manifests/`` (everything but the operator's
own Deployment, whose image cannot run here) and runs ``modelops run`` as a local process
authenticated as the ``modelops-system/modelops`` ServiceAccount with a TokenRequest token:
exactly the permissions a real install grants, so a missing rule fails a test.
"""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from modelops.devcluster import accounts, bootstrap, toolchain
from modelops.devcluster.cluster import ClusterState
from modelops.devcluster.layout import CacheLayout, cache_root
from tests.support.tcp_proxy import TcpProxy

REPOSITORY = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "modelops-system"
OPERATOR_ACCOUNT = "modelops"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
RESYNC_SECONDS = 2


@dataclass
class Kubectl:
    path: Path
    kubeconfig: Path

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.path), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )


@pytest.fixture(scope="session")
def kubectl(devcluster: ClusterState) -> Kubectl:
    binaries = toolchain.resolve(CacheLayout(cache_root()), progress=lambda _: None)
    return Kubectl(binaries.kubectl, devcluster.kubeconfig)


def install_manifests(kubectl: Kubectl) -> list[dict[str, Any]]:
    """Applies manifests/ (kustomize) minus the operator Deployment; returns what was applied."""
    rendered = kubectl("kustomize", str(REPOSITORY / "manifests")).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] != "Deployment"]
    kubectl("apply", "--server-side", "--field-manager=modelops-tests", "--force-conflicts", "-f", "-",
            input=yaml.safe_dump_all(documents))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/modeldeployments.modelops.dev")
    return documents


@dataclass
class Operator:
    """The operator as a local process, authenticated as its ServiceAccount."""

    kubeconfig: Path
    log: Path
    user: str
    prometheus: TcpProxy
    metrics_port: int = 0
    liveness_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def start(self) -> None:
        self.liveness_port, self.metrics_port = _free_port(), _free_port()
        environment = {key: value for key, value in os.environ.items() if not key.startswith(("KUBE", "MODELOPS_"))}
        environment["KUBECONFIG"] = str(self.kubeconfig)
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "modelops.cli", "run", "--all-namespaces",
                    f"--resync-seconds={RESYNC_SECONDS}",
                    f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
                    f"--prometheus-url={self.prometheus.url}",
                    "--prometheus-timeout=2",
                    f"--metrics-port={self.metrics_port}",
                    "--metrics-address=127.0.0.1",
                    "--analysis-tick-seconds=0.5",
                ],
                stdout=output, stderr=subprocess.STDOUT, env=environment,
            )
        bootstrap.wait_for("the operator's liveness endpoint", self._alive, timeout=60)

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a node failure would: no clean-up of any kind."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def operator(
    devcluster: ClusterState, admin_api: client.ApiClient, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    install_manifests(kubectl)
    folder = tmp_path_factory.mktemp("operator")
    bootstrap.wait_for(
        "ServiceAccount modelops-system/modelops",
        lambda: bool(client.CoreV1Api(admin_api).read_namespaced_service_account(OPERATOR_ACCOUNT, OPERATOR_NAMESPACE)),
        timeout=30,
    )
    kubeconfig = accounts.service_account_kubeconfig(
        admin_api,
        namespace=OPERATOR_NAMESPACE,
        service_account=OPERATOR_ACCOUNT,
        server=devcluster.server,
        ca_cert=devcluster.ca_cert,
        path=folder / "operator.kubeconfig",
    )
    proxy = TcpProxy("127.0.0.1", devcluster.ports["prometheus"])
    proxy.start()
    handle = Operator(kubeconfig=kubeconfig, log=folder / "operator.log", user=OPERATOR_USER, prometheus=proxy)
    handle.start()
    yield handle
    handle.stop()
    proxy.stop()
    problems = [line for line in handle.log_text().splitlines() if "Traceback" in line or "is forbidden: User" in line]
    assert not problems, "the operator logged errors:\n" + handle.log_text()[-5000:]


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
