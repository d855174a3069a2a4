"""An optional bearer token for the inference endpoints, read from a mounted file.

``MODELOPS_SERVE_TOKEN_FILE`` names a file (typically a Secret mounted into the pod) holding
the token; surrounding whitespace is ignored. When set, ``POST /v2/models/<name>/infer`` and
``GET /v2/models/<name>`` need ``Authorization: Bearer <token>``; health, readiness and
``/metrics`` stay open for probes and Prometheus.

The file is read again whenever it changes (a Secret update swaps the mounted file), so a
rotated token is accepted without a restart. Fail closed: when the file is configured but
missing, unreadable or empty, no request is authorized and the server is not ready.
The comparison is constant-time (:func:`hmac.compare_digest`).
"""

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

MAX_TOKEN_BYTES = 4096


class TokenUnavailable(Exception):
    """The token file is configured but cannot be used; the message says why (never the token)."""


@dataclass
class TokenFile:
    path: Path
    _stamp: tuple[int, int, int] | None = field(default=None, repr=False)
    _token: bytes = field(default=b"", repr=False)

    def token(self) -> bytes:
        """The current token; re-read when the file's inode, size or modification time changed."""
        try:
            status = os.stat(self.path)
        except OSError as error:
            raise TokenUnavailable(f"MODELOPS_SERVE_TOKEN_FILE {self.path}: {error.strerror or type(error).__name__}") from None
        stamp = (status.st_ino, status.st_size, status.st_mtime_ns)
        if stamp != self._stamp:
            self._token, self._stamp = self._read(), stamp
        if not self._token:
            raise TokenUnavailable(f"MODELOPS_SERVE_TOKEN_FILE {self.path} is empty")
        return self._token

    def _read(self) -> bytes:
        try:
            with self.path.open("rb") as handle:
                data = handle.read(MAX_TOKEN_BYTES + 1)
        except OSError as error:
            raise TokenUnavailable(f"MODELOPS_SERVE_TOKEN_FILE {self.path}: {error.strerror or type(error).__name__}") from None
        if len(data) > MAX_TOKEN_BYTES:
            raise TokenUnavailable(f"MODELOPS_SERVE_TOKEN_FILE {self.path} is larger than {MAX_TOKEN_BYTES} bytes")
        return data.strip()

    def authorizes(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the current token (raises TokenUnavailable)."""
        expected = self.token()
        scheme, _, presented = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        try:
            candidate = presented.strip().encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(candidate, expected)
