"""Kubeconfig files: the admin one the devcluster writes, and token ones for ServiceAccounts.

Credentials are embedded (``*-data`` fields), so a kubeconfig keeps working when
copied elsewhere and never points at a file that ``down`` has removed.
"""

import base64
from pathlib import Path
from typing import Any

import yaml


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def render(*, server: str, ca_cert: Path, user: str, credentials: dict[str, str], cluster: str = "devcluster") -> dict[str, Any]:
    """A single-context kubeconfig as a dict; ``credentials`` is the ``users[].user`` mapping."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": f"{user}@{cluster}", "context": {"cluster": cluster, "user": user}}],
        "current-context": f"{user}@{cluster}",
    }


def client_certificate_credentials(cert: Path, key: Path) -> dict[str, str]:
    return {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}


def token_credentials(token: str) -> dict[str, str]:
    return {"token": token}


def write(path: Path, config: dict[str, Any]) -> Path:
    """Writes a kubeconfig readable only by its owner (it holds credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
