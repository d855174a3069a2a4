"""Drift statistics, without I/O: reference profiles, binning, PSI, KS and Wasserstein.

A **reference profile** is built at training time (``modelops profile build``): per feature,
its kind, and for numeric features the interior bin edges at reference quantiles plus each
bin's share; for categorical features each category's share. Bins are open at both ends
(``(-inf, e1]``, ..., ``(en, +inf)``), so values outside the training range still land in a
bin, and categorical features have an extra bin for categories never seen in training.

**PSI** (Population Stability Index) compares bin shares: ``sum((c - r) * ln(c / r))`` over
bins, where shares are smoothed by ``EPSILON`` so an empty bin does not make it infinite.
Higher always means more drift; 0.1 and 0.25 are the usual "watch" and "act" levels.

>>> psi([0.5, 0.5], [0.5, 0.5])
0.0
>>> round(psi([0.5, 0.5], [0.9, 0.1]), 3)
0.879

Below a minimum sample (default ``max(500, 50 × bins)``) no score is computed: noise on a
quiet canary must never read as drift.
"""

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

EPSILON = 1e-4
UNSEEN = "__unseen__"
REFERENCE_SAMPLE_LIMIT = 2000
Method = Literal["psi", "ks", "wasserstein"]


def psi(reference: Sequence[float], current: Sequence[float]) -> float:
    """PSI between two share vectors over the same bins (each sums to 1)."""
    r = np.clip(np.asarray(reference, dtype=float), EPSILON, None)
    c = np.clip(np.asarray(current, dtype=float), EPSILON, None)
    return float(np.sum((c - r) * np.log(c / r)))


@dataclass(frozen=True)
class FeatureProfile:
    name: str
    kind: Literal["numeric", "categorical"]
    edges: tuple[float, ...] = ()  # numeric: interior bin edges
    categories: tuple[str, ...] = ()  # categorical: known categories
    shares: tuple[float, ...] = ()  # reference share of each bin (numeric: len(edges)+1; categorical: len+1 with unseen)
    sample: tuple[float, ...] = ()  # numeric: a bounded reference sample for KS / Wasserstein

    @property
    def bins(self) -> int:
        return len(self.shares)

    def counts(self, values: Sequence[Any]) -> np.ndarray:
        """Counts of ``values`` per bin (open outer bins; unknown categories in the unseen bin)."""
        if self.kind == "numeric":
            indices = np.searchsorted(np.asarray(self.edges), np.asarray(values, dtype=float), side="left")
            return np.bincount(indices, minlength=len(self.edges) + 1).astype(float)
        positions = {category: index for index, category in enumerate(self.categories)}
        counts = np.zeros(len(self.categories) + 1)
        for value in values:
            counts[positions.get(str(value), len(self.categories))] += 1
        return counts


def minimum_samples(feature: FeatureProfile, floor: int = 500) -> int:
    """The default minimum window size: max(500, 50 × bins)."""
    return max(floor, 50 * feature.bins)


def score(feature: FeatureProfile, values: Sequence[Any], method: Method = "psi") -> float | None:
    """The drift score of ``values`` against the reference, or None below the minimum sample."""
    if len(values) < minimum_samples(feature):
        return None
    if method == "psi":
        counts = feature.counts(values)
        return psi(feature.shares, counts / counts.sum())
    if feature.kind != "numeric" or not feature.sample:
        raise ValueError(f"{method} needs a numeric feature with a reference sample ({feature.name} is {feature.kind})")
    current = np.asarray(values, dtype=float)
    if method == "ks":
        return float(stats.ks_2samp(np.asarray(feature.sample), current).statistic)
    spread = float(np.std(feature.sample)) or 1.0
    return float(stats.wasserstein_distance(np.asarray(feature.sample), current)) / spread  # normalised


@dataclass(frozen=True)
class ReferenceProfile:
    features: tuple[FeatureProfile, ...]
    rows: int
    digest: str = field(default="")

    def feature(self, name: str) -> FeatureProfile:
        return next(f for f in self.features if f.name == name)

    def to_json(self) -> dict[str, Any]:
        document = {
            "format": "modelops.dev/profile-v1",
            "rows": self.rows,
            "features": [
                {"name": f.name, "kind": f.kind, "edges": list(f.edges), "categories": list(f.categories),
                 "shares": list(f.shares), "sample": list(f.sample)}
                for f in self.features
            ],
        }
        document["digest"] = _digest(document)
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "ReferenceProfile":
        if document.get("format") != "modelops.dev/profile-v1":
            raise ValueError(f"not a modelops reference profile (format {document.get('format')!r})")
        expected = document.get("digest", "")
        if expected and _digest({k: v for k, v in document.items() if k != "digest"}) != expected:
            raise ValueError("reference profile digest mismatch: the file was modified after it was built")
        features = tuple(
            FeatureProfile(
                name=f["name"], kind=f["kind"], edges=tuple(f.get("edges", ())), categories=tuple(f.get("categories", ())),
                shares=tuple(f["shares"]), sample=tuple(f.get("sample", ())),
            )
            for f in document["features"]
        )
        return cls(features=features, rows=int(document["rows"]), digest=expected)


def _digest(document: dict[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def numeric_profile(name: str, values: np.ndarray, bins: int, rng: np.random.Generator) -> FeatureProfile:
    """Quantile bins from the reference: each interior edge is a reference quantile (duplicates merged)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError(f"feature {name} has no finite values")
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    sample = values if values.size <= REFERENCE_SAMPLE_LIMIT else rng.choice(values, REFERENCE_SAMPLE_LIMIT, replace=False)
    return FeatureProfile(name, "numeric", tuple(float(e) for e in edges), (), tuple(float(s) for s in counts / counts.sum()),
                          tuple(float(v) for v in sample))


def categorical_profile(name: str, values: Sequence[str], max_categories: int = 50) -> FeatureProfile:
    """Shares of the most common categories; the rest and unseen ones share the last bin."""
    unique, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:max_categories]
    categories = tuple(str(unique[i]) for i in order)
    shares = [float(counts[i]) / len(values) for i in order]
    shares.append(max(0.0, 1.0 - sum(shares)))
    return FeatureProfile(name, "categorical", (), categories, tuple(shares))


def build_profile(columns: dict[str, list[str]], bins: int = 10, seed: int = 0) -> ReferenceProfile:
    """A profile of every column: numeric when every value parses as a number, else categorical."""
    rng = np.random.default_rng(seed)
    features = []
    rows = 0
    for name, raw in columns.items():
        rows = max(rows, len(raw))
        try:
            numbers = np.asarray([float(v) for v in raw], dtype=float)
        except ValueError:
            features.append(categorical_profile(name, raw))
            continue
        if not all(math.isfinite(v) for v in numbers):
            numbers = numbers[np.isfinite(numbers)]
        features.append(numeric_profile(name, numbers, bins, rng))
    profile = ReferenceProfile(tuple(features), rows)
    return ReferenceProfile(profile.features, rows, profile.to_json()["digest"])
