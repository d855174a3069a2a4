"""Shared fixtures.

Tests marked ``cluster`` run on the real devcluster. The session fixture
``devcluster`` reuses a healthy cluster from ``$MODELOPS_STATE_DIR`` (or the
state directory of ``$KUBECONFIG``, or ``.devcluster/``) and otherwise starts one,
which it stops at the end of the session unless ``MODELOPS_KEEP_DEVCLUSTER=1``.
It never skips: a cluster that cannot start fails the tests with the reason.
"""

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from modelops.devcluster import bootstrap, cluster, toolchain
from modelops.devcluster.cluster import ClusterState
from modelops.devcluster.errors import DevclusterError
from modelops.devcluster.layout import CacheLayout, cache_root, state_layout

REPOSITORY = Path(__file__).resolve().parents[1]


def _state_dir() -> Path:
    if explicit := os.environ.get("MODELOPS_STATE_DIR"):
        return Path(explicit)
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig and (Path(kubeconfig).parent / cluster.MARKER_FILE).exists():
        return Path(kubeconfig).parent
    return REPOSITORY / ".devcluster"


class _LiveProgress:
    """Prints devcluster progress past pytest's output capture: a cold build takes minutes."""

    def __init__(self, config: pytest.Config) -> None:
        self._capture = config.pluginmanager.getplugin("capturemanager")

    def __call__(self, message: str) -> None:
        with self._capture.global_and_fixture_disabled():
            print(f"[devcluster] {message}", file=sys.stderr, flush=True)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Builds missing binaries before any test runs, so the per-test timeout never covers a cold build."""
    if any(item.get_closest_marker("cluster") for item in session.items):
        try:
            toolchain.resolve(CacheLayout(cache_root()), progress=_LiveProgress(session.config))
        except DevclusterError as error:
            raise pytest.UsageError(f"cannot build the devcluster: {error}") from error


@pytest.fixture(scope="session")
def devcluster(pytestconfig: pytest.Config) -> Iterator[ClusterState]:
    progress = _LiveProgress(pytestconfig)
    state_dir = _state_dir()
    existing = cluster.load_state(state_layout(state_dir))
    reused = existing is not None and all(status.healthy for status in cluster.check(existing))
    state = cluster.up(state_dir, progress=progress)
    yield state
    if not reused and os.environ.get("MODELOPS_KEEP_DEVCLUSTER") != "1":
        cluster.down(state_dir, progress=progress)


@pytest.fixture(scope="session")
def admin_api(devcluster: ClusterState) -> Iterator[client.ApiClient]:
    with bootstrap.api_client(devcluster.kubeconfig) as api:
        yield api


@pytest.fixture
def namespace(admin_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace (with its `default` ServiceAccount ready), deleted after the test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)), _request_timeout=10)

    def default_service_account() -> bool:
        return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items)

    bootstrap.wait_for(f"ServiceAccount {name}/default", default_service_account, timeout=60)
    yield name
    core.delete_namespace(name, _request_timeout=10)
