"""The maths of sample-quality measures, on feature arrays (numpy only, float64).

- Frechet distance between Gaussians fitted to two feature sets (FID when the features are
  Inception's pool3; Heusel et al. 2017, eq. 6):
  ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``.
- Inception Score from classifier logits (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))``,
  the mean and standard deviation over splits, as the reference code reports it.
- Precision and recall of k-nearest-neighbour manifolds (Kynkaanniemi et al. 2019): a sample
  is "inside" a set if it lies within the distance from some member to that member's k-th
  nearest neighbour in the set.
- A 95% confidence interval for a mean bits/dim (normal approximation of the sample mean).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
    """Mean (D,) and covariance (D, D) of a feature set, and how many samples made them."""

    mean: np.ndarray
    covariance: np.ndarray
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStatistics:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need features (N >= 2, D), got shape {features.shape}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features))

    def save(self, path: Path) -> None:
        """An .npz with `mu` and `sigma`, the keys of the reference statistics files (ADM's
        evaluation suite, pytorch-fid, clean-fid), plus `count`."""
        with open(path, "wb") as handle:
            np.savez(handle, mu=self.mean, sigma=self.covariance, count=np.int64(self.count))

    @classmethod
    def load(cls, path: Path) -> FeatureStatistics:
        with np.load(path) as data:
            if "mu" not in data or "sigma" not in data:
                raise ValueError(f"{path} has no 'mu' and 'sigma' arrays (keys: {sorted(data.files)})")
            count = int(data["count"]) if "count" in data else 0
            return cls(data["mu"].astype(np.float64), data["sigma"].astype(np.float64), count)


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(first: FeatureStatistics, second: FeatureStatistics) -> float:
    """Squared Frechet distance between N(mean, covariance) of the two statistics.

    tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric S1^(1/2) S2 S1^(1/2) (the same eigenvalues as S1 S2), which needs no complex
    arithmetic and no eps retry where the reference code's sqrtm(S1 S2) does."""
    if first.mean.shape != second.mean.shape or first.covariance.shape != second.covariance.shape:
        raise ValueError(
            f"feature sizes differ: {first.mean.shape[0]} vs {second.mean.shape[0]} "
            "(statistics from different feature extractors?)"
        )
    root = _symmetric_sqrt(first.covariance)
    product = root @ second.covariance @ root
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0.0, None)).sum()
    difference = first.mean - second.mean
    value = (
        difference @ difference + np.trace(first.covariance) + np.trace(second.covariance) - 2 * trace_root
    )
    return float(max(value, 0.0))  # a distance: tiny negative round-off is 0


SHUFFLE_SEED = 2020  # torch-fidelity's default: its Inception Scores and ours split alike


def inception_score(logits: np.ndarray, splits: int = 10, shuffle: bool = True) -> tuple[float, float]:
    """(mean, std) over `splits` splits of exp(mean KL(p(y|x) || p(y))), logits (N, C).

    The rows are shuffled with a fixed seed first (as torch-fidelity does): the splits of a set
    stored in class order (an image folder of class subfolders) would each hold one class, and
    their p(y) would be p(y|x), scoring about 1."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) < splits:
        raise ValueError(f"need logits (N >= {splits}, classes), got shape {logits.shape}")
    if shuffle:
        logits = logits[np.random.RandomState(SHUFFLE_SEED).permutation(len(logits))]
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))  # log softmax
    scores = []
    for part in np.array_split(log_p, splits):
        probabilities = np.exp(part)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 log 0 = 0: a class nobody predicts
            log_marginal = np.log(probabilities.mean(axis=0))
            terms = np.where(probabilities > 0, probabilities * (part - log_marginal), 0.0)
        kl = terms.sum(axis=1)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(squared, 0.0, None))


def manifold_radii(features: np.ndarray, k: int = 3, batch: int = 1024) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) <= k:
        raise ValueError(f"need more than k={k} points to estimate a manifold, got {len(features)}")
    radii = np.empty(len(features))
    for first in range(0, len(features), batch):
        distances = _pairwise_distances(features[first : first + batch], features)
        radii[first : first + batch] = np.partition(distances, k, axis=1)[:, k]  # index 0 is itself
    return radii


def inside_manifold(
    points: np.ndarray, members: np.ndarray, radii: np.ndarray, batch: int = 1024
) -> np.ndarray:
    """(N,) bool: whether each point lies within radius of at least one member."""
    points, members = np.asarray(points, dtype=np.float64), np.asarray(members, dtype=np.float64)
    inside = np.empty(len(points), dtype=bool)
    for first in range(0, len(points), batch):
        distances = _pairwise_distances(points[first : first + batch], members)
        inside[first : first + batch] = (distances <= radii[None, :]).any(axis=1)
    return inside


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Precision: share of generated samples inside the real manifold (fidelity). Recall: share
    of real samples inside the generated manifold (coverage). k = 3 as in the reference papers."""
    precision = inside_manifold(generated, real, manifold_radii(real, k)).mean()
    recall = inside_manifold(real, generated, manifold_radii(generated, k)).mean()
    return float(precision), float(recall)


@dataclasses.dataclass(frozen=True)
class MeanInterval:
    mean: float
    low: float
    high: float
    count: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_interval(values: np.ndarray) -> MeanInterval:
    """The mean and its 95% confidence interval, mean +- 1.96 s / sqrt(n) (s: sample standard
    deviation; the central limit theorem, good for the hundreds of values evaluations use)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {len(values)}")
    mean = float(values.mean())
    half = Z_95 * float(values.std(ddof=1)) / math.sqrt(len(values))
    return MeanInterval(mean, mean - half, mean + half, len(values))
