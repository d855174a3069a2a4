"""The demo's three fraud-detector versions, trained here on synthetic transactions.

- 1.0.0 and 2.0.0 are logistic regressions: fast, a few milliseconds per request.
- 3.0.0 is a large random forest: as accurate, but each request costs tens of milliseconds, so
  it fails a p99 latency check. That is the slow model the demo rolls back.

Each artifact is a joblib file with its SHA-256 digest, served by ``modelops serve`` with
``MODEL_FORMAT=sklearn``. The drift profile is built from version 1's training data.
"""

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelops.serving.drift import build_profile

FEATURES = ("amount", "velocity", "distance", "account_age")
COEFFICIENTS = np.array([1.6, 1.0, 0.6, -0.8])
SLOW_TREES = 800


@dataclass(frozen=True)
class Artifact:
    version: str
    uri: str
    digest: str
    description: str

    def spec_model(self) -> dict[str, str]:
        return {"version": self.version, "uri": self.uri, "digest": self.digest, "format": "sklearn"}


def transactions(rng: np.random.Generator, count: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic transactions and their fraud labels; ``shift`` moves every feature's mean."""
    rows = rng.normal(shift, 1.0, (count, len(FEATURES)))
    score = rows @ COEFFICIENTS - 2.0 + rng.normal(0, 0.7, count)
    return rows, (score > 0).astype(int)


def _save(model: object, folder: Path, version: str, description: str) -> Artifact:
    import joblib

    path = folder / version / "model.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return Artifact(version, path.resolve().as_uri(), digest, description)


def build(folder: Path) -> tuple[dict[str, Artifact], str]:
    """Trains and writes the three versions and the drift profile; returns them and the profile's URI."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    rows, labels = transactions(rng, 4000)
    artifacts = {
        "1.0.0": _save(LogisticRegression(C=0.1).fit(rows[:2000], labels[:2000]), folder, "1.0.0", "logistic regression"),
        "2.0.0": _save(LogisticRegression().fit(rows, labels), folder, "2.0.0", "logistic regression, twice the data"),
        "3.0.0": _save(RandomForestClassifier(n_estimators=SLOW_TREES, max_depth=8, random_state=0).fit(rows, labels),
                       folder, "3.0.0", f"random forest of {SLOW_TREES} trees (slow)"),
    }
    profile = folder / "profile.json"
    reference = {name: [str(v) for v in rows[:, i]] for i, name in enumerate(FEATURES)}
    profile.write_text(json.dumps(build_profile(reference, bins=10).to_json()))
    return artifacts, profile.resolve().as_uri()


def write_recent_data(path: Path, shift: float, count: int = 3000, seed: int = 11) -> str:
    """Labelled recent transactions from the shifted distribution (what retraining learns from); returns the URI."""
    rows, labels = transactions(np.random.default_rng(seed), count, shift)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as target:
        writer = csv.writer(target)
        writer.writerow([*FEATURES, "label"])
        writer.writerows([*(f"{v:.6f}" for v in row), int(label)] for row, label in zip(rows, labels))
    return path.resolve().as_uri()
