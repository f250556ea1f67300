"""The framework-free evaluation maths against closed forms, the reference code and point sets
with known answers (starflow_core.evaluation.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from starflow_core.evaluation.metrics import (
    FeatureStatistics,
    frechet_distance,
    inception_score,
    mean_interval,
    precision_recall,
)


def random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def stats(mean, covariance) -> FeatureStatistics:
    return FeatureStatistics(np.asarray(mean, float), np.asarray(covariance, float), 0)


def test_frechet_distance_closed_forms_on_gaussians():
    rng = np.random.default_rng(0)
    dim = 12
    # commuting (diagonal) covariances: d = |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    m1, m2 = rng.standard_normal(dim), rng.standard_normal(dim)
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    # float64 eigen-decompositions of 12x12 matrices: 1e-9 relative is round-off, not method
    assert frechet_distance(stats(m1, np.diag(a)), stats(m2, np.diag(b))) == pytest.approx(expected, rel=1e-9)
    # a full covariance against a scaled copy of itself: (1 - c)^2 tr(S), means equal
    covariance, c = random_covariance(rng, dim), 1.7
    expected = (1 - c) ** 2 * np.trace(covariance)
    got = frechet_distance(stats(m1, covariance), stats(m1, c**2 * covariance))
    assert got == pytest.approx(expected, rel=1e-9)
    # a full covariance against a rotated one with the same spectrum (non-commuting): the
    # distance depends only on the eigenvalues when one is isotropic; check symmetry instead
    other = random_covariance(rng, dim)
    forward = frechet_distance(stats(m1, covariance), stats(m2, other))
    assert forward == pytest.approx(frechet_distance(stats(m2, other), stats(m1, covariance)), rel=1e-9)
    assert frechet_distance(stats(m1, covariance), stats(m1, covariance)) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_the_reference_implementations_on_random_features():
    """torchmetrics' FID maths (eigenvalues of S1 S2) and the scipy sqrtm(S1 S2) formula of
    ADM's evaluator and pytorch-fid, on the statistics of random feature sets."""
    torchmetrics_fid = pytest.importorskip("torchmetrics.image.fid")
    import torch
    from scipy import linalg

    rng = np.random.default_rng(1)
    dim = 64
    first = rng.standard_normal((500, dim)) @ rng.standard_normal((dim, dim)) * 0.3
    second = rng.standard_normal((400, dim)) * 1.2 + 0.5
    s1, s2 = FeatureStatistics.of(first), FeatureStatistics.of(second)
    ours = frechet_distance(s1, s2)

    as_torch = [torch.from_numpy(x) for x in (s1.mean, s1.covariance, s2.mean, s2.covariance)]
    reference = float(torchmetrics_fid._compute_fid(*as_torch))
    root = linalg.sqrtm(s1.covariance @ s2.covariance)
    difference = s1.mean - s2.mean
    scipy_formula = (
        difference @ difference + np.trace(s1.covariance + s2.covariance) - 2 * np.trace(root).real
    )
    # float64 throughout; the three differ only in how the matrix root is taken: 1e-8 relative
    assert ours == pytest.approx(reference, rel=1e-8)
    assert ours == pytest.approx(scipy_formula, rel=1e-8)
    assert ours > 1.0  # the sets differ: a distance that returned 0 would pass nothing above


def test_statistics_file_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    original = FeatureStatistics.of(rng.standard_normal((20, 5)))
    original.save(tmp_path / "ref.npz")
    loaded = FeatureStatistics.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(loaded.mean, original.mean)
    np.testing.assert_array_equal(loaded.covariance, original.covariance)
    assert loaded.count == 20
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros(3))
    with pytest.raises(ValueError, match="no 'mu' and 'sigma'"):
        FeatureStatistics.load(tmp_path / "bad.npz")


def test_inception_score_closed_forms():
    classes = 7
    confident = np.full((70, classes), -1e4)
    confident[np.arange(70), np.arange(70) % classes] = 0.0  # one-hot, every class equally often
    mean, spread = inception_score(confident, splits=10, shuffle=False)  # each split: one of each class
    assert mean == pytest.approx(classes, rel=1e-9) and spread == pytest.approx(0.0, abs=1e-9)
    assert inception_score(confident, splits=1)[0] == pytest.approx(classes, rel=1e-9)  # one split: any order
    # a set stored in class order (10 of each): unshuffled, each of 7 splits holds one class
    # (score 1); shuffled (the default) they are mixed, near the interleaved set's 7
    in_class_order = confident[np.argsort(np.arange(70) % classes, kind="stable")]
    assert inception_score(in_class_order, splits=classes, shuffle=False)[0] == pytest.approx(1.0, rel=1e-9)
    assert 4.0 < inception_score(in_class_order, splits=classes)[0] < classes
    # identical predictions: p(y|x) = p(y), KL 0, score 1
    same = np.tile(np.random.default_rng(3).standard_normal(classes), (50, 1))
    assert inception_score(same, splits=5)[0] == pytest.approx(1.0, rel=1e-12)
    # two-point case by hand: p(y|x) in {(0.9, 0.1), (0.1, 0.9)} equally: KL = 0.9 ln 1.8 + 0.1 ln 0.2
    logits = np.log(np.array([[0.9, 0.1], [0.1, 0.9]] * 5))
    expected = math.exp(0.9 * math.log(1.8) + 0.1 * math.log(0.2))
    assert inception_score(logits, splits=1)[0] == pytest.approx(expected, rel=1e-12)


def test_precision_recall_on_point_sets_with_known_answers():
    real = np.arange(10.0)[:, None]  # points 0..9 on a line; k=1 radius of every point is 1
    assert precision_recall(real, real.copy(), k=1) == (1.0, 1.0)
    far = real + 100.0
    assert precision_recall(real, far, k=1) == (0.0, 0.0)
    # generated: 4 points inside the real manifold (0.5 .. 3.5), 4 far away (each pair 1 apart)
    generated = np.concatenate([np.arange(4.0) + 0.5, [50.0, 51.0, 52.0, 53.0]])[:, None]
    precision, recall = precision_recall(real, generated, k=1)
    assert precision == 0.5
    # generated radii are 1 (0.5..3.5 spacing 1): real 0..4 lie within 1 of a generated point
    # (0 -> 0.5, 4 -> 3.5), 5..9 do not: recall 5/10
    assert recall == 0.5
    # k matters: with k=3 the radius of 50..53 points is 2 or 3, still far from the line
    assert precision_recall(real, generated, k=3)[0] == 0.5


def test_mean_interval_formula_and_coverage():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    interval = mean_interval(values)
    half = 1.959963984540054 * np.std(values, ddof=1) / 2.0
    assert (interval.mean, interval.low, interval.high) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    # coverage: 2,000 intervals of 100 draws from N(0.3, 1) contain 0.3 about 95% of the time
    # (binomial sd of the share 0.5%; 0.93..0.97 is four of them)
    rng = np.random.default_rng(4)
    draws = rng.standard_normal((2000, 100)) + 0.3
    covered = np.mean([(lambda i: i.low <= 0.3 <= i.high)(mean_interval(row)) for row in draws])
    assert 0.93 <= covered <= 0.97
    with pytest.raises(ValueError, match="at least 2"):
        mean_interval(np.array([1.0]))
