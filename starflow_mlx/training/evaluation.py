"""Held-out evaluation inside MLX training: exact bits/dim on held-out data and FID of samples
against reference statistics, every train.eval_every steps (the twin of
starflow_torch/training/evaluation.py; what is measured: starflow_core.training.evaluation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlx.core as mx
import numpy as np

from starflow_core.training import evaluation as core
from starflow_core.training.config import RunConfig

from ..data import batch_stream
from ..model import StarFlow
from .inputs import InputBuilder, build_dataset
from .progress import to_uint8_images


class HeldOutEvaluation:
    @classmethod
    def create(
        cls, run: RunConfig, out_dir: Path, text_encoder, vae, pixel_space: bool, resume_step: int | None
    ):
        """None when the run does not evaluate (train.eval_every = 0)."""
        return (
            cls(run, out_dir, text_encoder, vae, pixel_space, resume_step) if run.train.eval_every else None
        )

    def __init__(
        self, run: RunConfig, out_dir: Path, text_encoder, vae, pixel_space: bool, resume_step: int | None
    ):
        self.config, self.train = run.model, run.train
        # one pass in a fixed order, no condition dropout, no flips; the noise of batch i is the
        # same at every evaluation (micro-step i of the run's seed)
        self.held = dataclasses.replace(
            self.train, data=self.train.eval_data or self.train.data, drop_label=0.0, flip=False, grad_accum=1
        )
        self.dataset = build_dataset(self.config, self.held) if self.train.eval_data else None
        self.inputs = InputBuilder(self.config, self.held, self.dataset, text_encoder)
        self.reference = core.reference_statistics(self.train)
        self.features = core.digit_features(self.train)
        if self.reference is not None:
            if self.features is None:
                raise ValueError(
                    "train.eval_features=inception is a torch network: use the torch trainer, or digits"
                )
            if self.config.txt_dim > 0 and self.config.num_classes == 0:
                raise ValueError(
                    "FID inside training needs a class or unconditional model; for text models use sample-eval and starflow-eval on checkpoints"
                )
        self.vae, self.pixel_space = vae, pixel_space
        self.log = core.open_log(out_dir, resume_step)
        self.plot_path = Path(out_dir) / core.EVAL_PLOT

    def __call__(self, weights, step: int, loss_records: list[dict]) -> dict:
        model = StarFlow(self.config)
        model.update(weights)
        record = core.record(step, self.bits_per_dim(model), self.sample_measures(model))
        self.log.write(record)
        core.plot_evaluation(loss_records, self.log.records(), self.plot_path)
        return record

    def bits_per_dim(self, model: StarFlow) -> np.ndarray | None:
        if self.dataset is None:
            return None
        bits = []
        for number, (epoch, _, batch) in enumerate(batch_stream(self.dataset, self.held, 0, 0)):
            if epoch > 0 or (self.train.eval_batches and number >= self.train.eval_batches):
                break
            inputs = self.inputs(batch, number)
            if inputs.weight:
                bits.append(np.array(model.bits_per_dim(inputs.x, inputs.y)))
        return np.concatenate(bits) if bits else None

    def sample_measures(self, model: StarFlow) -> dict[str, float]:
        if self.reference is None:
            return {}
        count, size, channels = self.train.eval_samples, self.config.img_size, self.config.in_channels
        labels = core.class_balanced_labels(self.config.num_classes, count)
        noise = mx.random.normal((count, size, size, channels), key=mx.random.key(self.train.seed + 1))
        images = []
        for first in range(0, count, self.held.batch_size):
            rows = slice(first, first + self.held.batch_size)
            y = None if labels is None else mx.array(labels[rows].astype(np.int32))
            y_null = None if y is None else self.inputs.null_condition(len(y))
            guidance = self.train.sample_guidance if y is not None else 0.0
            samples = model.sample(noise[rows], y, y_null, guidance=guidance)
            images.append(to_uint8_images(samples, self.pixel_space, self.vae))
        return core.measure_samples(np.concatenate(images), self.features, self.reference)
