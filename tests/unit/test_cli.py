"""The command line: usage errors, `env` output and messages when there is no cluster."""

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelops.cli import main
from modelops.devcluster import cluster
from modelops.devcluster.layout import state_layout


def test_unknown_subcommand_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["devcluster", "upp"])
    assert result.exit_code == 2
    assert "No such command 'upp'" in result.output


def test_env_without_a_cluster_says_how_to_start_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["devcluster", "env", "--state-dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "no devcluster in" in result.output
    assert "modelops devcluster up" in result.output


def test_status_without_a_cluster_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["devcluster", "status", "--state-dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "run `modelops devcluster up`" in result.output


def test_env_prints_exports_for_eval(tmp_path: Path) -> None:
    layout = state_layout(tmp_path / "state dir")  # a space, to prove quoting
    layout.root.mkdir()
    state = cluster.ClusterState(root=layout.root, ports={"apiserver": 6443, "prometheus": 9091}, nodes=2)
    layout.state_file.write_text(json.dumps(state.to_json()))

    result = CliRunner().invoke(main, ["devcluster", "env", "--state-dir", str(layout.root)])

    assert result.exit_code == 0
    first, second = result.output.strip().splitlines()
    words = shlex.split(first)
    assert words[0] == "export"
    assignments = dict(word.split("=", 1) for word in words[1:])
    assert assignments["KUBECONFIG"] == str(layout.admin_kubeconfig)
    assert assignments["PROMETHEUS_URL"] == "http://127.0.0.1:9091"
    assert assignments["MODELOPS_STATE_DIR"] == str(layout.root)
    assert second.startswith("export PATH=")


def test_down_of_a_foreign_folder_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["devcluster", "down", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("error: ")


def test_up_rejects_an_out_of_range_port_as_usage_error() -> None:
    result = CliRunner().invoke(main, ["devcluster", "up", "--apiserver-port", "70000"])
    assert result.exit_code == 2
    assert "--apiserver-port" in result.output


def test_an_action_is_patched_under_its_own_field_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The apiserver then records when it received each action (managedFields), whatever the client's clock."""
    from kubernetes import client, config

    calls: list[tuple[tuple[object, ...], dict[str, object]]] = []

    class Recording:
        def patch_namespaced_custom_object(self, *args: object, **kwargs: object) -> None:
            calls.append((args, kwargs))

    monkeypatch.setattr(config, "load_kube_config", lambda *a, **k: None)
    monkeypatch.setattr(config, "list_kube_config_contexts", lambda *a, **k: ([], {"context": {"namespace": "ml"}}))
    monkeypatch.setattr(client, "CustomObjectsApi", Recording)
    result = CliRunner().invoke(main, ["resume", "fraud"])
    assert result.exit_code == 0, result.output
    [(args, kwargs)] = calls
    assert args[2:5] == ("ml", "modeldeployments", "fraud")
    assert kwargs["field_manager"] == "modelops-action-resume"
    assert kwargs["_content_type"] == "application/merge-patch+json"
    [(key, value)] = args[5]["metadata"]["annotations"].items()  # type: ignore[index]
    assert key == "modelops.dev/action.resume" and value.endswith("Z") and "." in value


@pytest.mark.parametrize(
    ("namespaces", "scanning_disabled"),
    [((), False), (("team-a",), True), (("team-a", "team-b"), True), (("team-*",), False), (("!kube-system",), False)],
)
def test_exact_namespaces_turn_kopf_scanning_off_so_no_cluster_scoped_rights_are_needed(
    monkeypatch: pytest.MonkeyPatch, namespaces: tuple[str, ...], scanning_disabled: bool
) -> None:
    import os

    import kopf

    monkeypatch.setattr(os, "environ", dict(os.environ))  # `run` exports its settings: keep them out of other tests
    seen: dict[str, object] = {}
    monkeypatch.setattr(kopf, "run", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(kopf, "configure", lambda **kwargs: None)
    arguments = ["run", *[f"--namespace={n}" for n in namespaces], "--metrics-port=0"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert seen["settings"].scanning.disabled is scanning_disabled  # type: ignore[attr-defined]
    assert seen["clusterwide"] is (not namespaces)
