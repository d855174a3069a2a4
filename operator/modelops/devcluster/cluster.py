"""``up``, ``down`` and ``status``: the devcluster's life cycle.

``up`` is idempotent. With a healthy cluster in the state directory it returns
that cluster. With a stale one (a crashed run, a reboot, a component that died)
it says so in one line, stops whatever is left of it, and starts afresh. A
failed start stops everything this call started (reverse order) and raises a
:class:`DevclusterError` naming the component, the cause and its log.

``down`` stops every recorded process by PID in reverse start order and removes
the state directory, but only one that carries the devcluster marker file: it
never deletes a directory it did not create.
"""

import datetime
import json
import os
import shlex
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from modelops.devcluster import bootstrap, components, kubeconfigs, pki, processes, toolchain, versions
from modelops.devcluster.errors import DevclusterError
from modelops.devcluster.layout import CacheLayout, StateLayout, cache_root, state_layout
from modelops.devcluster.processes import ProcessRecord

STATE_FORMAT = 1
MARKER_FILE = ".modelops-devcluster"
HEALTH_TIMEOUT_SECONDS = 2.0
DEFAULT_START_TIMEOUT_SECONDS = 120.0
MAX_NODES = 20

Progress = Callable[[str], None]


@dataclass
class ClusterState:
    """What ``state.json`` records about a running cluster."""

    root: Path
    ports: dict[str, int]
    nodes: int
    processes: list[ProcessRecord] = field(default_factory=list)
    kubernetes_version: str = versions.KUBERNETES_VERSION
    started_at: str = ""

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.root)

    @property
    def kubeconfig(self) -> Path:
        return self.layout.admin_kubeconfig

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prometheus']}"

    @property
    def ca_cert(self) -> Path:
        return self.layout.pki / "ca.crt"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "ports": self.ports,
            "nodes": self.nodes,
            "kubernetesVersion": self.kubernetes_version,
            "startedAt": self.started_at,
            "processes": [record.to_json() for record in self.processes],
        }


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    detail: str
    rss_mib: float | None = None


# --- state file ------------------------------------------------------------------


def load_state(layout: StateLayout) -> ClusterState | None:
    """The recorded cluster, None when there is none; a clear error when the file is damaged."""
    if not layout.state_file.exists():
        return None
    try:
        data = json.loads(layout.state_file.read_text())
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        return ClusterState(
            root=layout.root,
            ports={str(name): int(port) for name, port in data["ports"].items()},
            nodes=int(data["nodes"]),
            processes=[ProcessRecord.from_json(record) for record in data["processes"]],
            kubernetes_version=str(data.get("kubernetesVersion", "")),
            started_at=str(data.get("startedAt", "")),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise DevclusterError(
            f"the state file {layout.state_file} is unreadable ({error}); stop any leftover processes and "
            f"remove {layout.root}"
        ) from error


def _save_state(state: ClusterState) -> None:
    temporary = state.layout.state_file.with_suffix(".tmp")
    temporary.write_text(json.dumps(state.to_json(), indent=2))
    temporary.replace(state.layout.state_file)


def _claim_state_dir(layout: StateLayout) -> None:
    """Creates the state directory with our marker, refusing a foreign non-empty directory."""
    if layout.root.exists() and not (layout.root / MARKER_FILE).exists() and any(layout.root.iterdir()):
        raise DevclusterError(
            f"{layout.root} exists, is not empty and is not a devcluster state directory: "
            "choose another --state-dir"
        )
    layout.root.mkdir(parents=True, exist_ok=True)
    (layout.root / MARKER_FILE).write_text("created by `modelops devcluster up`; `down` removes this folder\n")


# --- ports -----------------------------------------------------------------------


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_requested_ports(requested: Mapping[str, int]) -> None:
    """Fails fast, before any build or start, when a port the user asked for is unusable."""
    for name, port in requested.items():
        if port and not 0 < port < 65536:
            raise DevclusterError(f"--{name}-port {port} is not a TCP port (1-65535, or 0 for any free port)")
        if port and not _port_is_free(port):
            raise DevclusterError(
                f"port {port} on 127.0.0.1 (--{name}-port) is already in use: free it, or choose another "
                "port (0 picks a free one)"
            )


def allocate_ports(requested: Mapping[str, int]) -> dict[str, int]:
    """A distinct port per component: the requested one if given, else any free one."""
    check_requested_ports(requested)
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        for name in components.PORT_NAMES:
            if requested.get(name):
                ports[name] = requested[name]
                continue
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind(("127.0.0.1", 0))
            held.append(probe)  # keep it bound so the next allocation gets a different port
            ports[name] = probe.getsockname()[1]
    finally:
        for probe in held:
            probe.close()
    return ports


# --- health ----------------------------------------------------------------------


def _ssl_context(ca_cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_cert))


def _probe(url: str, context: ssl.SSLContext | None) -> tuple[bool, str]:
    try:
        response = httpx.get(url, verify=context if context else True, timeout=HEALTH_TIMEOUT_SECONDS)
    except httpx.HTTPError as error:
        return False, f"{url}: {type(error).__name__}"
    body = response.text.strip().replace("\n", " ")[:80]
    return response.status_code == 200, f"{url}: {response.status_code} {body}"


def _last_log_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


LIVENESS_ONLY_SECONDS = 1.0


def _wait_healthy(state: ClusterState, record: ProcessRecord, timeout: float) -> None:
    """Waits for the health URL to answer 200 (or, without one, for the process to stay up a second)."""
    url, tls = components.health_check(record.name, state.ports)
    context = _ssl_context(state.ca_cert) if tls else None
    started = time.monotonic()
    detail = "not probed yet"
    log = Path(record.log)
    while time.monotonic() - started < timeout:
        if not processes.is_running(record):
            code = processes.exit_code(record)
            exited = f"exited with code {code}" if code is not None else "exited"
            raise DevclusterError(f"{record.name} {exited} during start-up: {_last_log_line(log)}", log=log)
        if url is None:
            if time.monotonic() - started >= LIVENESS_ONLY_SECONDS:
                return
        else:
            healthy, detail = _probe(url, context)
            if healthy:
                return
        time.sleep(0.1)
    raise DevclusterError(
        f"{record.name} did not become healthy within {timeout:.0f}s ({detail}); last log line: "
        f"{_last_log_line(log)}",
        log=log,
    )


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def check(state: ClusterState) -> list[ComponentStatus]:
    """Each recorded process's liveness and health, plus the fake nodes' readiness."""
    statuses: list[ComponentStatus] = []
    context = _ssl_context(state.ca_cert) if state.ca_cert.exists() else None
    for record in state.processes:
        if not processes.is_running(record):
            statuses.append(ComponentStatus(record.name, record.pid, False, False, f"not running (log: {record.log})"))
            continue
        url, tls = components.health_check(record.name, state.ports)
        healthy, detail = _probe(url, context if tls else None) if url else (True, "process running")
        statuses.append(ComponentStatus(record.name, record.pid, True, healthy, detail, _rss_mib(record.pid)))
    recorded = {record.name for record in state.processes}
    missing = [name for name in components.COMPONENT_NAMES if name not in recorded]
    statuses += [ComponentStatus(name, None, False, False, "never started") for name in missing]
    if all(status.healthy for status in statuses):
        statuses.append(_nodes_status(state))
    return statuses


def _nodes_status(state: ClusterState) -> ComponentStatus:
    try:
        with bootstrap.api_client(state.kubeconfig) as api:
            ready, total = bootstrap.ready_node_count(api)
    except Exception as error:  # noqa: BLE001 - status reports any failure instead of crashing
        return ComponentStatus("nodes", None, True, False, f"cannot list nodes: {str(error).splitlines()[0]}")
    return ComponentStatus("nodes", None, True, ready >= state.nodes, f"{ready}/{total} Ready (want {state.nodes})")


# --- up / down ---------------------------------------------------------------------


def up(
    state_dir: Path | str | None = None,
    *,
    nodes: int = 2,
    apiserver_port: int = 0,
    prometheus_port: int = 0,
    timeout: float = DEFAULT_START_TIMEOUT_SECONDS,
    progress: Progress = print,
) -> ClusterState:
    """Returns a healthy cluster in ``state_dir``: the running one, or a freshly started one."""
    if not 1 <= nodes <= MAX_NODES:
        raise DevclusterError(f"--nodes {nodes} is out of range: choose 1 to {MAX_NODES}")
    layout = state_layout(state_dir)
    requested_ports = {"apiserver": apiserver_port, "prometheus": prometheus_port}
    existing = load_state(layout)
    if existing is not None:
        statuses = check(existing)
        if all(status.healthy for status in statuses):
            progress(f"devcluster already running in {layout.root}: reusing it")
            return existing
        broken = ", ".join(f"{s.name} ({s.detail})" for s in statuses if not s.healthy)
        if any(status.running for status in statuses if status.pid):
            progress(f"devcluster in {layout.root} is unhealthy: {broken}; restarting it")
        else:
            progress(f"found stale state from a run that is no longer running in {layout.root}; removing it")
        down(layout.root, progress=lambda _: None)
    elif (layout.root / MARKER_FILE).exists():
        progress(f"found a half-created state directory {layout.root} (crashed start?); removing it")
        down(layout.root, progress=lambda _: None)

    check_requested_ports(requested_ports)
    binaries = toolchain.resolve(CacheLayout(cache_root()), progress=progress)
    ports = allocate_ports(requested_ports)
    _claim_state_dir(layout)
    started = time.monotonic()
    state = ClusterState(
        root=layout.root, ports=ports, nodes=nodes, started_at=datetime.datetime.now(datetime.UTC).isoformat()
    )
    try:
        _start(state, binaries, timeout=timeout, progress=progress)
    except BaseException:
        progress("start-up failed: stopping what was started (the logs stay until `down`)")
        _stop_all(state.processes)
        raise
    progress(f"devcluster is up in {time.monotonic() - started:.1f}s")
    return state


def _start(state: ClusterState, binaries: toolchain.Binaries, *, timeout: float, progress: Progress) -> None:
    layout = state.layout
    pki_files = pki.generate(layout.pki, service_ip=components.SERVICE_IP)
    admin_cert, admin_key = pki_files.pair("admin")
    kubeconfigs.write(
        layout.admin_kubeconfig,
        kubeconfigs.render(
            server=state.server,
            ca_cert=pki_files.ca_cert,
            user=pki.ADMIN_USER,
            credentials=kubeconfigs.client_certificate_credentials(admin_cert, admin_key),
        ),
    )
    components.write_config_files(layout)
    _save_state(state)
    environment = _component_environment(layout)
    for component in components.all_components(binaries, layout, pki_files, state.ports):
        progress(f"[start] {component.name}")
        record = processes.spawn(component.name, component.argv, layout.log(component.name), env=environment)
        state.processes.append(record)
        _save_state(state)
        _wait_healthy(state, record, timeout)
        if component.name == "kwok":
            _bootstrap_api(state, binaries, timeout=timeout, progress=progress)


def _component_environment(layout: StateLayout) -> dict[str, str]:
    """Components run with HOME in the state dir, so no stray ~/.kwok/kwok.yaml or ~/.kube leaks in."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("KUBE")}
    environment["HOME"] = str(layout.root)
    return environment


def _bootstrap_api(state: ClusterState, binaries: toolchain.Binaries, *, timeout: float, progress: Progress) -> None:
    with bootstrap.api_client(state.kubeconfig) as api:
        progress(f"[setup] {state.nodes} kwok nodes, Gateway API {versions.GATEWAY_API_VERSION} CRDs")
        bootstrap.create_nodes(api, state.nodes)
        crds = bootstrap.install_crds(api, binaries.gateway_api_crds)
        bootstrap.wait_for(
            f"{state.nodes} fake nodes to become Ready and untainted (kwok log: {state.layout.log('kwok')})",
            lambda: bootstrap.nodes_ready(api, state.nodes),
            timeout=timeout,
        )
        bootstrap.wait_for(
            "the `default` ServiceAccount (controller-manager's serviceaccount controller)",
            lambda: bootstrap.default_service_account_exists(api),
            timeout=timeout,
        )
        bootstrap.wait_for(
            "the Gateway API CRDs to be Established", lambda: bootstrap.crds_established(api, crds), timeout=timeout
        )


def _stop_all(records: list[ProcessRecord]) -> list[str]:
    stopped = []
    for record in reversed(records):
        if processes.is_running(record):
            stopped.append(record.name)
        processes.stop(record)
    return stopped


def down(state_dir: Path | str | None = None, *, progress: Progress = print) -> list[str]:
    """Stops every recorded process (reverse order) and removes the state directory."""
    layout = state_layout(state_dir)
    if not layout.root.exists():
        progress(f"no devcluster in {layout.root}: nothing to do")
        return []
    if not (layout.root / MARKER_FILE).exists():
        raise DevclusterError(
            f"{layout.root} is not a devcluster state directory (no {MARKER_FILE}); not touching it"
        )
    try:
        state = load_state(layout)
    except DevclusterError as error:
        progress(f"warning: {error.cause}; removing the directory anyway")
        state = None
    stopped = _stop_all(state.processes) if state else []
    for name in stopped:
        progress(f"stopped {name}")
    shutil.rmtree(layout.root)
    progress(f"removed {layout.root}")
    return stopped


def env_exports(state: ClusterState) -> str:
    """Shell ``export`` lines for ``eval "$(modelops devcluster env)"``."""
    kubectl_dir = CacheLayout(cache_root()).kubernetes_bin
    values = {
        "KUBECONFIG": str(state.kubeconfig),
        "PROMETHEUS_URL": state.prometheus_url,
        "MODELOPS_STATE_DIR": str(state.root),
    }
    exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in values.items())
    return f"export {exports}\nexport PATH={shlex.quote(str(kubectl_dir))}:\"$PATH\""
