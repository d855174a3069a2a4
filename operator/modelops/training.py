"""The reference retraining step: fit a model on labelled rows and report the candidate.

A retraining Job (``spec.retraining.jobTemplate``) may run ``modelops train``. It reads a CSV of
labelled rows, fits a logistic regression (scikit-learn), writes the artifact as a joblib file
under ``--output-dir/<version>/``, and reports the candidate the way the operator reads it: as
JSON in the container's termination message (``/dev/termination-log`` unless
``--termination-log`` or ``$MODELOPS_TERMINATION_LOG`` says otherwise). The candidate's version
is ``<current version>-r<UTC timestamp>`` from ``MODELOPS_CURRENT_VERSION``, which the operator
injects, unless ``--version`` is given.

Only ``file://`` or plain paths are read and written: fetching data from object stores is the
job of a real training image; this step exists so the loop can be run end to end.
"""

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

MAX_ROWS = 1_000_000
MAX_TERMINATION_MESSAGE_BYTES = 4096  # what the kubelet keeps of a termination message
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


class TrainingError(Exception):
    """Training cannot proceed; the message says what to change."""


@dataclass(frozen=True)
class Dataset:
    features: list[str]
    rows: np.ndarray
    labels: np.ndarray


def local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    raise TrainingError(f"{uri}: only file:// URIs or paths are supported by the reference trainer")


def read_dataset(path: Path, label: str) -> Dataset:
    """Numeric CSV columns as features, ``label`` as the 0/1 target."""
    try:
        with path.open(newline="") as source:
            reader = csv.DictReader(source)
            header = list(reader.fieldnames or [])
            if label not in header:
                raise TrainingError(f"{path}: no label column {label!r} (columns: {', '.join(header[:20])})")
            features = [name for name in header if name != label]
            records = [row for _, row in zip(range(MAX_ROWS), reader)]
    except OSError as error:
        raise TrainingError(f"cannot read training data {path}: {error.strerror}") from error
    if len(records) < 10:
        raise TrainingError(f"{path}: {len(records)} labelled rows; need at least 10")
    try:
        rows = np.array([[float(record[name]) for name in features] for record in records])
        labels = np.array([int(float(record[label])) for record in records])
    except (TypeError, ValueError) as error:
        raise TrainingError(f"{path}: every column must be numeric: {error}") from error
    if len(set(labels.tolist())) < 2:
        raise TrainingError(f"{path}: the label column {label!r} has a single class; need both 0 and 1")
    return Dataset(features, rows, labels)


def candidate_version(current: str, now: float) -> str:
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    return f"{current[:46]}-r{stamp}"


def train(dataset: Dataset, output_dir: Path, version: str, holdout: float = 0.2) -> dict[str, object]:
    """Fits, evaluates on a held-out tail, writes ``<output_dir>/<version>/model.joblib``; returns the candidate."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    split = max(1, int(len(dataset.labels) * (1 - holdout)))
    model = LogisticRegression().fit(dataset.rows[:split], dataset.labels[:split])
    held_rows, held_labels = dataset.rows[split:], dataset.labels[split:]
    accuracy = float((model.predict(held_rows) == held_labels).mean()) if len(held_labels) else float("nan")
    folder = output_dir / version
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / "model.joblib"
    joblib.dump(model, artifact)
    digest = "sha256:" + hashlib.sha256(artifact.read_bytes()).hexdigest()
    return {
        "version": version,
        "uri": artifact.resolve().as_uri(),
        "digest": digest,
        "metrics": {"heldOutAccuracy": round(accuracy, 4), "trainingRows": float(split)},
    }


def report(candidate: dict[str, object], termination_log: Path) -> str:
    message = json.dumps(candidate, separators=(",", ":"))
    if len(message.encode()) > MAX_TERMINATION_MESSAGE_BYTES:
        raise TrainingError(f"the candidate is {len(message)} bytes; a termination message keeps {MAX_TERMINATION_MESSAGE_BYTES}")
    termination_log.write_text(message)
    return message


def termination_log_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("MODELOPS_TERMINATION_LOG") or DEFAULT_TERMINATION_LOG)
