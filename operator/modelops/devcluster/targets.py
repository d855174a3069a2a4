"""Registering local scrape targets with the devcluster's Prometheus through file_sd.

Prometheus watches ``<state>/prometheus/targets/*.json`` (inotify, with a 5 s
refresh as a fallback). Each file holds one target group. Files are written to
a temporary name and renamed, so Prometheus never reads half a file.

Only loopback addresses are accepted: kwok's pod IPs are fake, and nothing may
connect to them.
"""

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from modelops.planning.children import CONTAINER_NAME, LABEL_DEPLOYMENT, LABEL_MODEL_VERSION

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,127}$")
MAX_LABELS = 32
MAX_LABEL_VALUE_LENGTH = 1024


def _validate(name: str, address: str, labels: Mapping[str, str]) -> None:
    if not _NAME.match(name):
        raise ValueError(f"target name {name!r} must be 1-63 lowercase letters, digits, '-', '_' or '.'")
    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target address {address!r} must be 127.0.0.1:<port>: only loopback is reachable here")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels per target, got {len(labels)}")
    for key, value in labels.items():
        if not _LABEL_NAME.match(key) or key.startswith("__"):
            raise ValueError(f"label name {key!r} is not a valid Prometheus label name")
        if len(value) > MAX_LABEL_VALUE_LENGTH:
            raise ValueError(f"label {key!r} is longer than {MAX_LABEL_VALUE_LENGTH} characters")


# What the documented PodMonitor (docs/operating.md, "Scraping the model servers") sets on a
# model pod's target: the Prometheus Operator's own labels, and the pod's modelops labels
# relabelled to the contract's ``model`` and ``version``.
POD_LABEL_TO_TARGET_LABEL: Mapping[str, str] = {LABEL_DEPLOYMENT: "model", LABEL_MODEL_VERSION: "version"}
PORT_NAME = "http"


def pod_target_labels(namespace: str, pod: str, pod_labels: Mapping[str, str], container: str = CONTAINER_NAME) -> dict[str, str]:
    """The target labels a scrape of this pod carries: ``namespace``, ``pod``, ``container`` and
    ``endpoint`` (the port name), plus ``model`` and ``version`` from the pod's modelops labels when
    it has them. With ``honor_labels: false`` these override what the server itself exports.

    >>> pod_target_labels("ml", "fraud-1-0-0-x", {"modelops.dev/deployment": "fraud", "modelops.dev/version": "1.0.0"})
    {'namespace': 'ml', 'pod': 'fraud-1-0-0-x', 'container': 'model-server', 'endpoint': 'http', 'model': 'fraud', 'version': '1.0.0'}
    """
    labels = {"namespace": namespace, "pod": pod, "container": container, "endpoint": PORT_NAME}
    for pod_label, target_label in POD_LABEL_TO_TARGET_LABEL.items():
        if pod_labels.get(pod_label):
            labels[target_label] = pod_labels[pod_label]
    return labels


def register(folder: Path, name: str, address: str, labels: Mapping[str, str] | None = None) -> Path:
    """Adds (or replaces) the target group ``name``: Prometheus scrapes ``address`` with ``labels``."""
    labels = dict(labels or {})
    _validate(name, address, labels)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    temporary = folder / f".{name}.json.tmp-{os.getpid()}"
    temporary.write_text(json.dumps([{"targets": [address], "labels": labels}], indent=2))
    temporary.replace(path)
    return path


def unregister(folder: Path, name: str) -> None:
    """Removes the target group ``name``; Prometheus stops scraping it."""
    (folder / f"{name}.json").unlink(missing_ok=True)
