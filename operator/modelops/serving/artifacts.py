"""Loading a model artifact exactly as released: fetch, verify the digest, decode.

``MODEL_URI`` may be ``file://<path>`` or ``http(s)://...`` (a file, not a folder). When
``MODEL_DIGEST`` is set, the SHA-256 of the fetched bytes must equal it, or the artifact is
refused: what runs under a version is exactly what was released under it.

Formats:

- ``sklearn``: a joblib pickle of a fitted estimator with ``predict`` (and ``n_features_in_``).
  Pickles run code when loaded: only load artifacts you trust; the digest check is what ties
  the bytes to a reviewed release.
- ``linear-json`` (dependency-free, for tests and demos): ``{"type": "linear", "kind":
  "classifier"|"regressor", "features": [...], "coefficients": [...], "intercept": x,
  "threshold": 0.5}``. Selected for ``MODEL_FORMAT=custom`` with a JSON document.
"""

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import httpx
import numpy as np

from modelops.serving.redaction import redact_uri, scrub_uris

MAX_ARTIFACT_BYTES = 1 << 30
DOWNLOAD_TIMEOUT_SECONDS = 60


class ArtifactError(Exception):
    """The artifact cannot be served; the message says why and what to change."""


class Predictor(Protocol):
    n_features: int

    def predict(self, rows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class LinearModel:
    """y = x·w + b; a classifier answers 1 when the logistic of y reaches the threshold."""

    kind: str
    features: tuple[str, ...]
    coefficients: np.ndarray
    intercept: float
    threshold: float = 0.5

    @property
    def n_features(self) -> int:
        return len(self.coefficients)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        scores = rows @ self.coefficients + self.intercept
        if self.kind == "regressor":
            return scores
        return (1.0 / (1.0 + np.exp(-scores)) >= self.threshold).astype(np.int64)


@dataclass(frozen=True)
class SklearnModel:
    estimator: Any

    @property
    def n_features(self) -> int:
        return int(getattr(self.estimator, "n_features_in_", 0))

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict(rows))


def fetch(uri: str) -> bytes:
    """The artifact's bytes from file:// or http(s)://.

    Error messages name the URI only as :func:`redact_uri` shows it, and never include the text
    of an HTTP library's exception (it embeds the full URL, credentials and all).
    """
    shown = redact_uri(uri)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        if not path.is_file():
            raise ArtifactError(f"{shown}: no such file")
        if path.stat().st_size > MAX_ARTIFACT_BYTES:
            raise ArtifactError(f"{shown}: larger than {MAX_ARTIFACT_BYTES} bytes")
        return path.read_bytes()
    if parsed.scheme in ("http", "https"):
        return _download(uri, shown)
    raise ArtifactError(f"{shown}: this server loads file:// and http(s):// URIs only")


class RedactingFilter(logging.Filter):
    """Redacts every URI in a record of the HTTP libraries (httpx logs each request's full URL at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub_uris(record.getMessage()), None
        return True


def redact_http_logs() -> None:
    """Install :class:`RedactingFilter` on httpx's logger, and keep httpcore's (headers, at DEBUG) at WARNING."""
    http_log = logging.getLogger("httpx")
    if not any(isinstance(f, RedactingFilter) for f in http_log.filters):
        http_log.addFilter(RedactingFilter())
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def _download(uri: str, shown: str) -> bytes:
    redact_http_logs()
    try:
        with httpx.stream("GET", uri, timeout=DOWNLOAD_TIMEOUT_SECONDS, follow_redirects=True) as response:
            if response.status_code >= 400:
                raise ArtifactError(f"{shown}: download failed (HTTP {response.status_code})")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_ARTIFACT_BYTES:
                    raise ArtifactError(f"{shown}: larger than {MAX_ARTIFACT_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as error:
        raise ArtifactError(f"{shown}: download failed ({type(error).__name__}: {scrub_uris(str(error))[:200]})") from None


def verify(data: bytes, digest: str | None) -> str:
    """The artifact's sha256 digest; raises when ``digest`` is given and differs."""
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest and digest != actual:
        raise ArtifactError(f"digest mismatch: MODEL_DIGEST is {digest} but the artifact is {actual}; refusing to serve it")
    return actual


def decode(data: bytes, model_format: str) -> Predictor:
    if model_format == "sklearn":
        import joblib

        try:
            return SklearnModel(joblib.load(io.BytesIO(data)))
        except Exception as error:  # noqa: BLE001 - any unpickling failure means the same to the user
            raise ArtifactError(f"not a joblib scikit-learn artifact: {type(error).__name__}: {scrub_uris(str(error))[:200]}") from None
    if model_format in ("custom", "linear-json"):
        try:
            document = json.loads(data)
        except ValueError as error:
            raise ArtifactError("MODEL_FORMAT custom expects a linear-json document") from error
        return linear_model(document)
    raise ArtifactError(f"MODEL_FORMAT {model_format} is not supported by this server (sklearn, custom)")


def linear_model(document: Any) -> LinearModel:
    if not isinstance(document, dict) or document.get("type") != "linear":
        raise ArtifactError('a linear-json artifact needs "type": "linear"')
    try:
        coefficients = np.asarray(document["coefficients"], dtype=float)
        features: Sequence[str] = document.get("features") or [f"x{i}" for i in range(len(coefficients))]
        intercept, threshold = float(document.get("intercept", 0.0)), float(document.get("threshold", 0.5))
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"a linear-json artifact needs numeric coefficients, intercept and threshold ({type(error).__name__})") from None
    if coefficients.ndim != 1:
        raise ArtifactError('"coefficients" must be a flat list of numbers')
    if len(features) != len(coefficients):
        raise ArtifactError(f"{len(features)} feature names for {len(coefficients)} coefficients")
    return LinearModel(
        kind=str(document.get("kind", "classifier")),
        features=tuple(str(f) for f in features),
        coefficients=coefficients,
        intercept=intercept,
        threshold=threshold,
    )


def load(uri: str, digest: str | None, model_format: str) -> tuple[Predictor, str]:
    """The verified, decoded model and its actual digest."""
    data = fetch(uri)
    actual = verify(data, digest)
    return decode(data, model_format), actual
