"""Pinned versions of everything the devcluster builds or downloads.

``hack/tools/go.mod`` pins the same Kubernetes and etcd versions;
``tests/unit/test_versions.py`` fails if the two disagree. To move to another
release, change the constants here and run ``hack/gen-tools-gomod.sh`` with
``K8S_VERSION``/``ETCD_VERSION`` set to match.
"""

from typing import Final

KUBERNETES_VERSION: Final = "v1.36.3"
ETCD_VERSION: Final = "v3.6.8"  # what k8s.io/kubernetes v1.36.3 itself pins
KWOK_VERSION: Final = "v0.8.0"
GATEWAY_API_VERSION: Final = "v1.6.3"
MINIMUM_GO: Final = (1, 26)
PROMETHEUS_DEBIAN_PACKAGE: Final = "prometheus"
