"""Where the devcluster keeps its files.

Two places, with different lifetimes:

- The **cache** (``$MODELOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelops``, else
  ``~/.cache/modelops``) holds built binaries in version-keyed folders. It outlives
  clusters and is never inside the repository.
- The **state directory** (``--state-dir``, default ``.devcluster/``) belongs to
  one running cluster: PIDs, ports, certificates, kubeconfig, etcd data, logs.
  ``down`` removes it.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from modelops.devcluster import versions

DEFAULT_STATE_DIR = Path(".devcluster")


def cache_root() -> Path:
    """The binary cache root, honouring ``MODELOPS_CACHE_DIR`` and ``XDG_CACHE_HOME``."""
    if explicit := os.environ.get("MODELOPS_CACHE_DIR"):
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().resolve() / "modelops"


@dataclass(frozen=True)
class CacheLayout:
    """Version-keyed folders inside the binary cache."""

    root: Path

    @property
    def kubernetes_bin(self) -> Path:
        return self.root / f"kubernetes-{versions.KUBERNETES_VERSION}-etcd-{versions.ETCD_VERSION}" / "bin"

    @property
    def kwok_dir(self) -> Path:
        return self.root / f"kwok-{versions.KWOK_VERSION}"

    @property
    def kwok_stages(self) -> Path:
        """kwok v0.8.0 ships no built-in stages; this is a copy of its ``kustomize/stage`` tree."""
        return self.kwok_dir / "stage"

    @property
    def gateway_api_crds(self) -> Path:
        return self.root / f"gateway-api-{versions.GATEWAY_API_VERSION}" / "standard"

    @property
    def prometheus_dir(self) -> Path:
        return self.root / "prometheus-debian"

    @property
    def build_log(self) -> Path:
        return self.root / "build.log"


@dataclass(frozen=True)
class StateLayout:
    """Files of one running cluster inside its state directory."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    @property
    def audit_log(self) -> Path:
        """Every write request the apiserver accepts, one JSON line each (see ``components``)."""
        return self.logs / "audit.log"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def prometheus_data(self) -> Path:
        return self.root / "prometheus" / "data"

    @property
    def prometheus_targets(self) -> Path:
        """The ``file_sd_configs`` folder: one JSON file per registered scrape target group."""
        return self.root / "prometheus" / "targets"


def state_layout(state_dir: Path | str | None) -> StateLayout:
    """The state layout for ``state_dir`` (absolute, so printed paths work from anywhere)."""
    return StateLayout(Path(state_dir or DEFAULT_STATE_DIR).expanduser().resolve())
