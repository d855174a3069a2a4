"""Component command lines: loopback only, RBAC on, the flags the reference calls for."""

from pathlib import Path

import pytest

from modelops.devcluster import components, pki
from modelops.devcluster.layout import StateLayout
from modelops.devcluster.toolchain import Binaries

PORTS = {name: 20000 + index for index, name in enumerate(components.PORT_NAMES)}


@pytest.fixture
def all_argv(tmp_path: Path) -> dict[str, tuple[str, ...]]:
    fake = tmp_path / "bin"
    binaries = Binaries(*(fake / name for name in ("etcd", "apiserver", "kcm", "scheduler", "kubectl", "kwok", "stages", "prometheus", "crds")))
    state = StateLayout(tmp_path / "state")
    built = components.all_components(binaries, state, pki.PkiFiles(state.pki), PORTS)
    return {component.name: component.argv for component in built}


def test_start_order_is_storage_api_controllers_nodes_metrics(all_argv: dict[str, tuple[str, ...]]) -> None:
    assert tuple(all_argv) == components.COMPONENT_NAMES


def test_nothing_listens_beyond_loopback(all_argv: dict[str, tuple[str, ...]]) -> None:
    for name, argv in all_argv.items():
        joined = " ".join(argv)
        assert "0.0.0.0" not in joined, name
        for flag in argv:
            if flag.startswith(("--bind-address=", "--listen-", "--advertise-client-urls=", "--web.listen-address=")):
                assert "127.0.0.1" in flag, (name, flag)


def test_apiserver_enforces_rbac_and_can_issue_service_account_tokens(all_argv: dict[str, tuple[str, ...]]) -> None:
    argv = all_argv["kube-apiserver"]
    assert "--authorization-mode=RBAC" in argv
    flags = {flag.split("=", 1)[0] for flag in argv}
    assert {"--service-account-issuer", "--service-account-key-file", "--service-account-signing-key-file"} <= flags
    assert "--audit-policy-file" in flags


def test_controller_manager_runs_every_controller_without_leader_election(all_argv: dict[str, tuple[str, ...]]) -> None:
    argv = all_argv["kube-controller-manager"]
    assert "--controllers=*" in argv
    assert "--leader-elect=false" in argv


def test_kwok_manages_all_nodes_with_the_stock_stages_and_serves_nothing(all_argv: dict[str, tuple[str, ...]]) -> None:
    argv = all_argv["kwok"]
    assert "--manage-all-nodes=true" in argv
    assert any(flag.startswith("--config=") and flag.endswith("stages") for flag in argv)
    assert not any(flag.startswith(("--node-ip", "--node-port", "--server-address")) for flag in argv)


def test_prometheus_scrapes_every_second_from_the_file_sd_folder(tmp_path: Path) -> None:
    state = StateLayout(tmp_path)
    config = components.prometheus_config(state)
    assert config["global"]["scrape_interval"] == "1s"
    assert config["global"]["scrape_timeout"] == "1s"  # never longer than the interval
    [job] = config["scrape_configs"]
    assert job["file_sd_configs"] == [{"files": [str(state.prometheus_targets / "*.json")], "refresh_interval": "5s"}]


def test_every_component_has_a_health_rule() -> None:
    for name in components.COMPONENT_NAMES:
        url, _ = components.health_check(name, PORTS)
        assert url is None or url.startswith(("http://127.0.0.1:", "https://127.0.0.1:"))
    assert components.health_check("kube-apiserver", PORTS) == (f"https://127.0.0.1:{PORTS['apiserver']}/readyz", True)


def test_audit_policy_records_writes_only() -> None:
    rules = components.audit_policy()["rules"]
    assert rules[0]["level"] == "Metadata"
    assert set(rules[0]["verbs"]) == {"create", "update", "patch", "delete", "deletecollection"}
    assert rules[-1] == {"level": "None"}
