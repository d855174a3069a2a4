"""kind-config.yaml is a kind v1alpha4 Cluster with workers and a loopback gateway port mapping."""

from pathlib import Path

import yaml

CONFIG = Path(__file__).resolve().parents[2] / "kind-config.yaml"


def test_kind_config_has_one_control_plane_workers_and_a_gateway_port() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles.count("control-plane") == 1
    assert roles.count("worker") >= 1
    [mapping] = config["nodes"][0]["extraPortMappings"]
    assert mapping == {"containerPort": 30080, "hostPort": 8080, "listenAddress": "127.0.0.1", "protocol": "TCP"}
    allowed_node_keys = {"role", "labels", "extraPortMappings", "image", "extraMounts", "kubeadmConfigPatches"}
    assert all(set(node) <= allowed_node_keys for node in config["nodes"])
