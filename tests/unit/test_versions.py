"""The pinned Go module and the Python constants name the same versions."""

import re
from pathlib import Path

from modelops.devcluster import toolchain, versions

GO_MOD = Path(__file__).resolve().parents[2] / "hack" / "tools" / "go.mod"


def _go_mod() -> str:
    return GO_MOD.read_text()


def test_go_mod_requires_the_pinned_kubernetes_and_etcd() -> None:
    text = _go_mod()
    assert re.search(rf"^\s*k8s\.io/kubernetes {re.escape(versions.KUBERNETES_VERSION)}\b", text, re.M)
    assert re.search(rf"^\s*go\.etcd\.io/etcd/server/v3 {re.escape(versions.ETCD_VERSION)}\b", text, re.M)


def test_every_staging_module_is_replaced_with_the_matching_v0_tag() -> None:
    staging = "v0." + versions.KUBERNETES_VERSION.removeprefix("v1.")
    replaces = re.findall(r"^replace (k8s\.io/\S+) => (k8s\.io/\S+) (\S+)$", _go_mod(), re.M)
    assert len(replaces) == 33  # the staging set of Kubernetes 1.36 (derived by hack/gen-tools-gomod.sh)
    assert all(source == target and version == staging for source, target, version in replaces)
    assert {"k8s.io/api", "k8s.io/client-go", "k8s.io/apiserver", "k8s.io/cri-streaming"} <= {r[0] for r in replaces}


def test_go_mod_declares_a_tool_for_every_binary_the_devcluster_builds() -> None:
    tools_block = re.search(r"^tool \((.*?)^\)", _go_mod(), re.M | re.S)
    assert tools_block is not None
    declared = set(tools_block.group(1).split())
    expected = {f"k8s.io/kubernetes/cmd/{name}" for name in toolchain.KUBERNETES_COMMANDS}
    assert expected | {"go.etcd.io/etcd/server/v3"} == declared


def test_go_directive_matches_the_minimum_go() -> None:
    major, minor = versions.MINIMUM_GO
    assert re.search(rf"^go {major}\.{minor}\.\d+$", _go_mod(), re.M)
