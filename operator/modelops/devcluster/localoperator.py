"""The operator as a local process on the devcluster, under its own ServiceAccount (dev only).

There is no container runtime on a dev machine, so the operator's Deployment from
``manifests/`` cannot run. Instead this installs everything else from ``manifests/`` (CRDs,
namespace, ServiceAccount, RBAC) and runs ``modelops run`` here, authenticated with a
TokenRequest token of the ``modelops-system/modelops`` ServiceAccount: exactly the permissions
a real install grants, so a missing rule shows. The demo, the benchmarks and the tests share it.
"""

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client

from modelops.devcluster import accounts, bootstrap
from modelops.devcluster.cluster import ClusterState

REPOSITORY = Path(__file__).resolve().parents[3]
MANIFESTS = REPOSITORY / "manifests"
OPERATOR_NAMESPACE = "modelops-system"
OPERATOR_ACCOUNT = "modelops"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
KUBECTL_TIMEOUT_SECONDS = 60


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
            timeout=KUBECTL_TIMEOUT_SECONDS,
            check=check,
        )


def install_manifests(kubectl: Kubectl, manifests: Path = MANIFESTS) -> list[dict[str, Any]]:
    """Applies ``manifests/`` (kustomize) minus the operator Deployment; returns what was applied."""
    rendered = kubectl("kustomize", str(manifests)).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] != "Deployment"]
    kubectl("apply", "--server-side", "--field-manager=modelops-dev", "--force-conflicts", "-f", "-",
            input=yaml.safe_dump_all(documents))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/modeldeployments.modelops.dev", "crd/clustermetrictemplates.modelops.dev")
    return documents


def service_account_kubeconfig(devcluster: ClusterState, admin_api: client.ApiClient, path: Path) -> Path:
    """A kubeconfig for the operator's ServiceAccount (waits for the account to exist)."""
    core = client.CoreV1Api(admin_api)
    bootstrap.wait_for(
        f"ServiceAccount {OPERATOR_NAMESPACE}/{OPERATOR_ACCOUNT}",
        lambda: bool(core.read_namespaced_service_account(OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, _request_timeout=10)),
        timeout=30,
    )
    return accounts.service_account_kubeconfig(
        admin_api, namespace=OPERATOR_NAMESPACE, service_account=OPERATOR_ACCOUNT,
        server=devcluster.server, ca_cert=devcluster.ca_cert, path=path,
    )


@dataclass
class LocalOperator:
    """``modelops run`` as a local process, authenticated as its ServiceAccount."""

    kubeconfig: Path
    log: Path
    prometheus_url: str
    resync_seconds: float = 2
    analysis_tick_seconds: float = 0.5
    prometheus_timeout_seconds: float = 2
    namespaces: tuple[str, ...] = ()
    user: str = OPERATOR_USER
    metrics_port: int = 0
    liveness_port: int = 0
    notify_allowed_hosts: tuple[str, ...] = ()  # receivers on this machine (127.0.0.1) must be listed: loopback is refused by default
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def command(self) -> list[str]:
        scope = [f"--namespace={ns}" for ns in self.namespaces] or ["--all-namespaces"]
        return [
            sys.executable, "-m", "modelops.cli", "run", *scope,
            f"--resync-seconds={self.resync_seconds}",
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
            f"--prometheus-url={self.prometheus_url}",
            f"--prometheus-timeout={self.prometheus_timeout_seconds}",
            f"--metrics-port={self.metrics_port}",
            "--metrics-address=127.0.0.1",
            f"--analysis-tick-seconds={self.analysis_tick_seconds}",
            *(f"--notify-allowed-hosts={host}" for host in self.notify_allowed_hosts),
        ]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> None:
        self.liveness_port, self.metrics_port = free_port(), free_port()
        environment = {key: value for key, value in os.environ.items() if not key.startswith(("KUBE", "MODELOPS_"))}
        environment["KUBECONFIG"] = str(self.kubeconfig)
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(self.command(), stdout=output, stderr=subprocess.STDOUT, env=environment,
                                            start_new_session=True)  # its own process group: `--keep` outlives a Ctrl-C
        bootstrap.wait_for("the operator's liveness endpoint", self._alive, timeout=60)

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the operator exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

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

    def logged_problems(self) -> list[str]:
        """Tracebacks and RBAC refusals in the log: either means a bug or a missing permission."""
        return [line for line in self.log_text().splitlines() if "Traceback" in line or "is forbidden: User" in line]
