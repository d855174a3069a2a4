"""``up``/``down``/``status`` on bad input: ports in use, stale state, failed starts, foreign folders.

These run real processes (stand-in binaries that fail the way a real one would) but need no
control plane, so they are fast and run without the devcluster.
"""

import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelops.devcluster import cluster, toolchain
from modelops.devcluster.errors import DevclusterError
from modelops.devcluster.layout import CacheLayout, state_layout
from modelops.devcluster.processes import ProcessRecord


def _executable(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def stand_in_binaries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """KUBEBUILDER_ASSETS full of binaries; etcd fails at once like one whose port is taken."""
    assets = tmp_path / "assets"
    _executable(assets / "etcd", "#!/bin/sh\necho 'listen tcp 127.0.0.1:2379: bind: address already in use' >&2\nexit 3\n")
    for name in (*toolchain.KUBERNETES_COMMANDS, "kwok"):
        _executable(assets / name, "#!/bin/sh\nsleep 60\n")
    cache = CacheLayout(tmp_path / "cache")
    (cache.kwok_stages / "fast").mkdir(parents=True)
    (cache.kwok_stages / "fast" / "kustomization.yaml").write_text("resources: []\n")
    cache.gateway_api_crds.mkdir(parents=True)
    (cache.gateway_api_crds / "gateway.networking.k8s.io_httproutes.yaml").write_text("{}\n")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    monkeypatch.setenv("PROMETHEUS_BIN", str(_executable(tmp_path / "prometheus", "#!/bin/sh\nsleep 60\n")))
    monkeypatch.setenv("MODELOPS_CACHE_DIR", str(cache.root))
    return assets


@pytest.fixture
def busy_port() -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield listener.getsockname()[1]
    listener.close()


def test_failed_component_start_names_the_cause_and_log_and_down_cleans_up(
    stand_in_binaries: Path, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    messages: list[str] = []
    with pytest.raises(DevclusterError) as error:
        cluster.up(state_dir, progress=messages.append, timeout=10)
    text = str(error.value)
    assert text.startswith("etcd exited with code 3 during start-up: listen tcp 127.0.0.1:2379: bind: address already in use")
    assert error.value.log == state_dir.resolve() / "logs" / "etcd.log"
    assert "\n" not in text
    assert any("stopping what was started" in message for message in messages)

    stopped = cluster.down(state_dir, progress=messages.append)
    assert stopped == []
    assert not state_dir.exists()


def test_requested_port_in_use_fails_before_anything_starts(
    stand_in_binaries: Path, tmp_path: Path, busy_port: int
) -> None:
    with pytest.raises(DevclusterError) as error:
        cluster.up(tmp_path / "state", apiserver_port=busy_port, progress=lambda _: None)
    assert str(error.value) == (
        f"port {busy_port} on 127.0.0.1 (--apiserver-port) is already in use: free it, or choose another port "
        "(0 picks a free one)"
    )
    assert not (tmp_path / "state").exists()


def _write_stale_state(state_dir: Path, pid: int) -> None:
    layout = state_layout(state_dir)
    layout.root.mkdir(parents=True)
    (layout.root / cluster.MARKER_FILE).write_text("")
    record = ProcessRecord("etcd", pid, 1, str(layout.log("etcd")))
    state = cluster.ClusterState(root=layout.root, ports={"apiserver": 1, "prometheus": 2}, nodes=1, processes=[record])
    layout.state_file.write_text(json.dumps(state.to_json()))


def test_stale_state_from_a_crashed_run_is_reported_and_replaced(stand_in_binaries: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    _write_stale_state(state_dir, pid=2**22 + 1)  # above the default pid_max: never a live process
    statuses = cluster.check(cluster.load_state(state_layout(state_dir)))  # type: ignore[arg-type]
    assert [(s.name, s.running) for s in statuses][0] == ("etcd", False)
    messages: list[str] = []
    with pytest.raises(DevclusterError, match="etcd exited with code 3"):
        cluster.up(state_dir, progress=messages.append, timeout=10)
    assert messages[0] == f"found stale state from a run that is no longer running in {state_dir.resolve()}; removing it"
    cluster.down(state_dir, progress=lambda _: None)
    assert not state_dir.exists()


def test_damaged_state_file_is_named_and_down_still_removes_the_folder(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / cluster.MARKER_FILE).write_text("")
    (state_dir / "state.json").write_text("{not json")
    with pytest.raises(DevclusterError, match=r"state file .*state\.json is unreadable"):
        cluster.load_state(state_layout(state_dir))
    messages: list[str] = []
    cluster.down(state_dir, progress=messages.append)
    assert messages[0].startswith("warning: the state file")
    assert not state_dir.exists()


def test_down_refuses_a_folder_it_did_not_create(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(DevclusterError, match="not a devcluster state directory"):
        cluster.down(precious, progress=lambda _: None)
    assert (precious / "thesis.tex").exists()


def test_up_refuses_a_foreign_non_empty_state_dir(stand_in_binaries: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DevclusterError, match="is not a devcluster state directory: choose another --state-dir"):
        cluster.up(foreign, progress=lambda _: None)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_allocated_ports_are_distinct_and_honour_requests(busy_port: int) -> None:
    ports = cluster.allocate_ports({"apiserver": 0, "prometheus": 0})
    assert len(set(ports.values())) == len(ports) == 6
    with pytest.raises(DevclusterError, match="is not a TCP port"):
        cluster.allocate_ports({"apiserver": 70000})


def test_nodes_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DevclusterError, match="--nodes 0 is out of range"):
        cluster.up(tmp_path, nodes=0, progress=lambda _: None)
