"""The command line, config files and health check of each devcluster component.

Pure functions: given binaries, ports and the state layout, they return argv
lists and file contents. ``cluster`` starts them in this order and stops them
in reverse: etcd → kube-apiserver → kube-controller-manager → kube-scheduler →
kwok → Prometheus. Everything binds 127.0.0.1.

Flag choices follow controller-runtime's envtest and kwokctl v0.8.0 (see
``docs/devcluster.md`` for the reasoning behind each non-default flag).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelops.devcluster.layout import StateLayout
from modelops.devcluster.pki import PkiFiles
from modelops.devcluster.toolchain import Binaries

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR = "10.244.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ALWAYS_ALLOWED_PATHS = "/healthz,/readyz,/livez,/metrics"
PROMETHEUS_SCRAPE_JOB = "devcluster-targets"
PORT_NAMES = ("etcd-client", "etcd-peer", "apiserver", "controller-manager", "scheduler", "prometheus")
COMPONENT_NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "prometheus")


def health_check(name: str, ports: Mapping[str, int]) -> tuple[str | None, bool]:
    """The URL that answers 200 when component ``name`` is healthy, and whether it is HTTPS with our CA.

    None means the component has no health endpoint (kwok runs without a server): liveness only.
    """
    endpoints: dict[str, tuple[str | None, bool]] = {
        "etcd": (f"http://127.0.0.1:{ports['etcd-client']}/health", False),
        "kube-apiserver": (f"https://127.0.0.1:{ports['apiserver']}/readyz", True),
        "kube-controller-manager": (f"https://127.0.0.1:{ports['controller-manager']}/healthz", True),
        "kube-scheduler": (f"https://127.0.0.1:{ports['scheduler']}/healthz", True),
        "kwok": (None, False),
        "prometheus": (f"http://127.0.0.1:{ports['prometheus']}/-/ready", False),
    }
    return endpoints[name]


@dataclass(frozen=True)
class Component:
    """One process of the cluster and the URL that says it is healthy (None: liveness only)."""

    name: str
    argv: tuple[str, ...]


def etcd(binaries: Binaries, state: StateLayout, ports: Mapping[str, int]) -> Component:
    client = f"http://127.0.0.1:{ports['etcd-client']}"
    peer = f"http://127.0.0.1:{ports['etcd-peer']}"
    argv = (
        str(binaries.etcd),
        "--name=devcluster",
        f"--data-dir={state.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=devcluster={peer}",
        "--unsafe-no-fsync=true",  # a disposable test store: durability is not worth the latency
        "--quota-backend-bytes=2147483648",
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=5m",
        "--log-level=warn",
    )
    return Component("etcd", argv)


def kube_apiserver(binaries: Binaries, state: StateLayout, pki: PkiFiles, ports: Mapping[str, int]) -> Component:
    serving_cert, serving_key = pki.pair("apiserver")
    argv = (
        str(binaries.kube_apiserver),
        f"--etcd-servers=http://127.0.0.1:{ports['etcd-client']}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['apiserver']}",
        f"--tls-cert-file={serving_cert}",
        f"--tls-private-key-file={serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_public_key}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        "--authorization-mode=RBAC",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        # Never publish the host's address in default/kubernetes: nothing may dial it anyway.
        "--endpoint-reconciler-type=none",
        f"--audit-policy-file={state.config / 'audit-policy.yaml'}",
        f"--audit-log-path={state.audit_log}",
        "--audit-log-format=json",
        "--audit-log-maxsize=100",
        "--audit-log-maxbackup=1",
        "--profiling=false",
    )
    return Component("kube-apiserver", argv)


def _secure_serving_flags(pki: PkiFiles, port: int, kubeconfig: Path) -> tuple[str, ...]:
    """Health endpoints over TLS with our CA, open to probes, delegating auth to the apiserver."""
    cert, key = pki.pair("serving")
    return (
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={cert}",
        f"--tls-private-key-file={key}",
        f"--authorization-always-allow-paths={ALWAYS_ALLOWED_PATHS}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
    )


def kube_controller_manager(
    binaries: Binaries, state: StateLayout, pki: PkiFiles, ports: Mapping[str, int]
) -> Component:
    argv = (
        str(binaries.kube_controller_manager),
        f"--kubeconfig={state.admin_kubeconfig}",
        *_secure_serving_flags(pki, ports["controller-manager"], state.admin_kubeconfig),
        "--leader-elect=false",  # a restart must not wait out a stale lease
        "--controllers=*",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca_cert}",
        f"--cluster-cidr={POD_CIDR}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--node-monitor-grace-period=40s",
        "--horizontal-pod-autoscaler-sync-period=5s",
    )
    return Component("kube-controller-manager", argv)


def scheduler_config(state: StateLayout) -> dict[str, Any]:
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(state.admin_kubeconfig)},
        "leaderElection": {"leaderElect": False},
    }


def kube_scheduler(binaries: Binaries, state: StateLayout, pki: PkiFiles, ports: Mapping[str, int]) -> Component:
    argv = (
        str(binaries.kube_scheduler),
        f"--config={state.config / 'scheduler.yaml'}",
        *_secure_serving_flags(pki, ports["scheduler"], state.admin_kubeconfig),
    )
    return Component("kube-scheduler", argv)


def kwok(binaries: Binaries, state: StateLayout) -> Component:
    """kwok with the stock "fast" stages; no server (no --node-port/--server-address), no node IPs."""
    argv = (
        str(binaries.kwok),
        f"--kubeconfig={state.admin_kubeconfig}",
        "--manage-all-nodes=true",
        f"--config={binaries.kwok_stages}",
        f"--cidr={POD_CIDR}",
        "--node-lease-duration-seconds=40",
    )
    return Component("kwok", argv)


def prometheus_config(state: StateLayout) -> dict[str, Any]:
    """1 s scrapes of whatever is registered in the file_sd folder (see ``targets``).

    ``honor_labels`` is false, as with a PodMonitor without ``honorLabels``: the target labels
    (``namespace``, ``pod``, ``model``, ``version``, ... see ``targets.pod_target_labels``) win
    over labels of the same name a scraped server exports, which Prometheus keeps as
    ``exported_<name>``. That is what makes the metrics contract unforgeable across namespaces.
    """
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": PROMETHEUS_SCRAPE_JOB,
                "honor_labels": False,
                "file_sd_configs": [{"files": [str(state.prometheus_targets / "*.json")], "refresh_interval": "5s"}],
            }
        ],
    }


def prometheus(binaries: Binaries, state: StateLayout, ports: Mapping[str, int]) -> Component:
    address = f"127.0.0.1:{ports['prometheus']}"
    argv = (
        str(binaries.prometheus),
        f"--config.file={state.config / 'prometheus.yml'}",
        f"--storage.tsdb.path={state.prometheus_data}",
        "--storage.tsdb.retention.time=6h",
        f"--web.listen-address={address}",
        "--web.enable-lifecycle",
        f"--web.console.templates={state.config}",
        f"--web.console.libraries={state.config}",
        "--log.level=warn",
    )
    return Component("prometheus", argv)


def audit_policy() -> dict[str, Any]:
    """Record every write at Metadata level, nothing else.

    Tests use the audit log to prove that the operator sends no writes in steady state.
    """
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [
            {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
            {"level": "None"},
        ],
    }


def write_config_files(state: StateLayout) -> None:
    """The files components read at start: scheduler config, audit policy, Prometheus config."""
    state.config.mkdir(parents=True, exist_ok=True)
    state.prometheus_targets.mkdir(parents=True, exist_ok=True)
    state.logs.mkdir(parents=True, exist_ok=True)
    files = {
        "scheduler.yaml": scheduler_config(state),
        "audit-policy.yaml": audit_policy(),
        "prometheus.yml": prometheus_config(state),
    }
    for name, content in files.items():
        (state.config / name).write_text(yaml.safe_dump(content, sort_keys=False))


def all_components(binaries: Binaries, state: StateLayout, pki: PkiFiles, ports: Mapping[str, int]) -> list[Component]:
    """Every component, in start order."""
    return [
        etcd(binaries, state, ports),
        kube_apiserver(binaries, state, pki, ports),
        kube_controller_manager(binaries, state, pki, ports),
        kube_scheduler(binaries, state, pki, ports),
        kwok(binaries, state),
        prometheus(binaries, state, ports),
    ]
