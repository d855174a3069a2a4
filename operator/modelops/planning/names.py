"""Deterministic, collision-free names for a ModelDeployment's children.

A child is named ``<modeldeployment>-<version slug>``, for example ``fraud-detector-2-1-0``.
The slug is readable when the version maps to it one-to-one: versions of lowercase letters,
digits and dots (no '-', '_' or capitals) become the same text with '.' replaced by '-'.
Any other version (``2.1.0-rc1``, ``V2``, ``a_b``), and any slug too long for the 63-character
limit of a Service name, is shortened and suffixed with the first 10 hex digits of the
version's SHA-256, so two different versions never share a name.

>>> child_name("fraud-detector", "2.1.0")
'fraud-detector-2-1-0'
>>> child_name("fraud-detector", "2.1.0-rc1")
'fraud-detector-2-1-0-rc1-2abf458916'
"""

import hashlib
import re

MAX_NAME_LENGTH = 63  # a Service name is a DNS-1035 label
HASH_LENGTH = 10

_READABLE = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")


def _version_hash(version: str) -> str:
    return hashlib.sha256(version.encode()).hexdigest()[:HASH_LENGTH]


def version_slug(version: str, room: int) -> str:
    """A DNS-label-safe slug of ``version`` at most ``room`` characters long, injective in ``version``."""
    if room < HASH_LENGTH + 2:
        raise ValueError(f"no room for a version slug ({room} characters)")
    if _READABLE.match(version) and len(version) <= room:
        return version.replace(".", "-")
    sanitized = re.sub(r"[^a-z0-9]+", "-", version.lower()).strip("-")
    prefix = sanitized[: room - HASH_LENGTH - 1].rstrip("-")
    return f"{prefix}-{_version_hash(version)}" if prefix else _version_hash(version)


def child_name(owner: str, version: str) -> str:
    """The name of the Deployment, Service and HPA that serve ``version`` of ``owner``."""
    return f"{owner}-{version_slug(version, MAX_NAME_LENGTH - len(owner) - 1)}"
