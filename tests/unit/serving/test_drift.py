"""Drift statistics against reference values: hand-computed PSI, scipy, bins, the sample guard."""

import math

import numpy as np
import pytest
from scipy import stats

from modelops.serving.drift import (
    EPSILON,
    FeatureProfile,
    ReferenceProfile,
    build_profile,
    categorical_profile,
    minimum_samples,
    numeric_profile,
    psi,
    score,
)


def test_psi_of_identical_distributions_is_zero() -> None:
    assert psi([0.25, 0.25, 0.5], [0.25, 0.25, 0.5]) == 0.0


def test_psi_matches_a_hand_computed_value() -> None:
    reference, current = [0.2, 0.3, 0.5], [0.1, 0.3, 0.6]
    expected = (0.1 - 0.2) * math.log(0.1 / 0.2) + 0 + (0.6 - 0.5) * math.log(0.6 / 0.5)
    assert psi(reference, current) == pytest.approx(expected)


def test_an_empty_bin_is_smoothed_not_infinite() -> None:
    value = psi([0.5, 0.5], [1.0, 0.0])
    assert math.isfinite(value)
    assert value == pytest.approx((1 - 0.5) * math.log(1 / 0.5) + (EPSILON - 0.5) * math.log(EPSILON / 0.5))


def test_numeric_bins_are_reference_quantiles_with_open_outer_bins() -> None:
    rng = np.random.default_rng(1)
    feature = numeric_profile("x", np.arange(1000, dtype=float), 4, rng)
    assert feature.edges == pytest.approx((249.75, 499.5, 749.25))
    assert feature.shares == pytest.approx((0.25, 0.25, 0.25, 0.25))
    # Values beyond the training range land in the outer bins instead of disappearing.
    assert feature.counts([-1e9, 1e9, 300.0]).tolist() == [1.0, 1.0, 0.0, 1.0]


def test_unseen_categories_have_their_own_bin() -> None:
    feature = categorical_profile("country", ["fr"] * 6 + ["de"] * 4)
    assert feature.categories == ("fr", "de")
    assert feature.shares == pytest.approx((0.6, 0.4, 0.0))
    assert feature.counts(["fr", "xx", "yy", "de"]).tolist() == [1.0, 1.0, 2.0]


def test_no_score_below_the_minimum_sample() -> None:
    feature = FeatureProfile("x", "numeric", edges=(0.0,), shares=(0.5, 0.5), sample=(-1.0, 1.0))
    assert minimum_samples(feature) == 500
    assert score(feature, [1.0] * 499) is None
    assert score(feature, [1.0] * 500) == pytest.approx(psi([0.5, 0.5], [0.0, 1.0]))
    wide = FeatureProfile("y", "numeric", edges=tuple(float(i) for i in range(19)), shares=(0.05,) * 20)
    assert minimum_samples(wide) == 1000


def test_shifted_data_scores_higher_than_same_distribution_data() -> None:
    rng = np.random.default_rng(7)
    reference = rng.normal(0, 1, 5000)
    feature = numeric_profile("x", reference, 10, rng)
    same = score(feature, rng.normal(0, 1, 2000).tolist())
    shifted = score(feature, rng.normal(1.0, 1, 2000).tolist())
    assert same is not None and shifted is not None
    assert same < 0.05 < 0.25 < shifted


def test_ks_and_wasserstein_agree_with_scipy() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(0, 1, 1500)
    feature = numeric_profile("x", reference, 10, rng)
    current = rng.normal(0.5, 1, 1000)
    assert score(feature, current.tolist(), "ks") == pytest.approx(stats.ks_2samp(reference, current).statistic)
    expected = stats.wasserstein_distance(reference, current) / np.std(reference)
    assert score(feature, current.tolist(), "wasserstein") == pytest.approx(expected)


def test_profiles_round_trip_and_detect_tampering() -> None:
    profile = build_profile({"age": [str(v) for v in range(100)], "country": ["fr", "de"] * 50}, bins=4)
    document = profile.to_json()
    again = ReferenceProfile.from_json(document)
    assert [f.kind for f in again.features] == ["numeric", "categorical"]
    assert again.digest == profile.digest and profile.digest.startswith("sha256:")
    document["features"][0]["shares"][0] = 0.9
    with pytest.raises(ValueError, match="digest mismatch"):
        ReferenceProfile.from_json(document)
