"""Held-out evaluation inside training, the framework-free half (each twin's
training/evaluation.py runs the model): when, what is recorded, and the plot beside the loss.

Every `train.eval_every` steps (and at the last step) the trainer measures, on the EMA weights
when there is an EMA (the weights its samples use):
- exact bits/dim of the held-out data `train.eval_data` under the training noise, the same
  quantity as the training curve's bits/dim, with a 95% interval over the images;
- with `train.eval_reference`: FID of `train.eval_samples` class-balanced samples (guidance
  `train.sample_guidance`, no denoising step: as the trainer's sample grids) against those
  statistics, in the features `train.eval_features`, plus the classifier score.
Records go to `eval.jsonl` in the run folder and `evaluation.png` plots them beside the loss.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.evaluation.digit_features import DigitFeatures
from starflow_core.evaluation.metrics import (
    FeatureStatistics,
    frechet_distance,
    inception_score,
    mean_interval,
)
from starflow_core.io import atomic_path
from starflow_core.training.config import TrainConfig
from starflow_core.training.files import JsonlLog

EVAL_LOG = "eval.jsonl"
EVAL_PLOT = "evaluation.png"


def is_due(train: TrainConfig, step: int) -> bool:
    return bool(train.eval_every) and (step % train.eval_every == 0 or step == train.steps)


def reference_statistics(train: TrainConfig) -> FeatureStatistics | None:
    """The statistics FID is measured against, checked when the trainer starts (not at step N)."""
    if not train.eval_reference:
        return None
    path = Path(train.eval_reference)
    if not path.is_file():
        raise FileNotFoundError(
            f"train.eval_reference={path}: no such file; make one with starflow-eval IMAGES "
            f"--features {train.eval_features} --save-statistics {path}"
        )
    return FeatureStatistics.load(path)


def digit_features(train: TrainConfig):
    """The digit stand-in; Inception is the torch twin's (starflow_torch.eval)."""
    return DigitFeatures.load() if train.eval_features == "digits" else None


def class_balanced_labels(num_classes: int, count: int) -> np.ndarray | None:
    return None if num_classes == 0 else np.arange(count) % num_classes


def measure_samples(images: np.ndarray, features, reference: FeatureStatistics) -> dict[str, float]:
    """FID and classifier score of uint8 samples (N, H, W, 3)."""
    pool, logits = features(images)
    out = {"eval_fid": frechet_distance(FeatureStatistics.of(pool), reference)}
    if logits is not None:
        out["eval_classifier_score"] = inception_score(logits, min(10, len(logits)))[0]
    return out


def record(step: int, bits: np.ndarray | None, sample_measures: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {"step": step}
    if bits is not None and len(bits) >= 2:
        interval = mean_interval(bits)
        out.update(
            eval_bits_per_dim=interval.mean,
            eval_bits_per_dim_low=interval.low,
            eval_bits_per_dim_high=interval.high,
            eval_images=interval.count,
        )
    return {**out, **sample_measures}


def open_log(out_dir: Path, resume_step: int | None) -> JsonlLog:
    return JsonlLog(Path(out_dir) / EVAL_LOG, resume_step)


def plot_evaluation(loss_records: list[dict], eval_records: list[dict], path: Path) -> None:
    """Training and held-out bits/dim on one axis (with the 95% band), FID on a second panel."""
    try:
        import matplotlib
    except ImportError:  # the plot is a convenience; eval.jsonl has the numbers
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_fid = [r for r in eval_records if "eval_fid" in r]
    with_bits = [r for r in eval_records if "eval_bits_per_dim" in r]
    figure, axes = plt.subplots(1, 2 if with_fid else 1, figsize=(11 if with_fid else 6, 4), squeeze=False)
    left = axes[0][0]
    train_bits = [
        (r["step"], r["bits_per_dim"]) for r in loss_records if math.isfinite(r.get("bits_per_dim", math.nan))
    ]
    if train_bits:
        left.plot(*zip(*train_bits, strict=True), label="training batches", alpha=0.6)
    if with_bits:
        steps = [r["step"] for r in with_bits]
        left.plot(steps, [r["eval_bits_per_dim"] for r in with_bits], "o-", label="held-out (EMA weights)")
        left.fill_between(
            steps,
            [r["eval_bits_per_dim_low"] for r in with_bits],
            [r["eval_bits_per_dim_high"] for r in with_bits],
            alpha=0.3,
        )
    left.set_xlabel("step")
    left.set_ylabel("bits / dim")
    left.legend()
    left.grid(alpha=0.3)
    if with_fid:
        right = axes[0][1]
        right.plot([r["step"] for r in with_fid], [r["eval_fid"] for r in with_fid], "o-", color="tab:red")
        right.set_xlabel("step")
        right.set_ylabel("FID against train.eval_reference")
        right.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
