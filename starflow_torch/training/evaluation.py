"""Held-out evaluation inside torch training (main process): exact bits/dim on held-out data and
FID of samples against reference statistics, every train.eval_every steps (the twin of
starflow_mlx/training/evaluation.py; what is measured: starflow_core.training.evaluation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from starflow_core.training import evaluation as core
from starflow_core.training.config import RunConfig

from ..data import batch_stream
from ..model import StarFlow
from .inputs import InputBuilder, build_dataset
from .progress import to_uint8_images


class HeldOutEvaluation:
    @classmethod
    def create(
        cls,
        run: RunConfig,
        out_dir: Path,
        text_encoder,
        vae,
        pixel_space: bool,
        resume_step: int | None,
        device: torch.device,
    ):
        """None when the run does not evaluate (train.eval_every = 0)."""
        if not run.train.eval_every:
            return None
        return cls(run, out_dir, text_encoder, vae, pixel_space, resume_step, device)

    def __init__(
        self,
        run: RunConfig,
        out_dir: Path,
        text_encoder,
        vae,
        pixel_space: bool,
        resume_step: int | None,
        device: torch.device,
    ):
        self.config, self.train, self.device = run.model, run.train, device
        # one pass in a fixed order, no condition dropout, no flips, no loader processes; the
        # noise of batch i is the same at every evaluation (micro-step i of the run's seed)
        self.held = dataclasses.replace(
            self.train,
            data=self.train.eval_data or self.train.data,
            drop_label=0.0,
            flip=False,
            grad_accum=1,
            num_workers=0,
        )
        self.dataset = build_dataset(self.config, self.held) if self.train.eval_data else None
        self.inputs = InputBuilder(self.config, self.held, self.dataset, device, text_encoder)
        self.reference = core.reference_statistics(self.train)
        self.features = core.digit_features(self.train)
        if self.reference is not None:
            if self.features is None:  # inception: torch-fidelity's network from torch's hub cache
                from ..eval import inception_features, inception_network, inception_weights

                network = inception_network(inception_weights(None), device)
                self.features = lambda images: inception_features(network, images, device)
            if self.config.txt_dim > 0 and self.config.num_classes == 0:
                raise ValueError(
                    "FID inside training needs a class or unconditional model; for text models use sample-eval and starflow-eval on checkpoints"
                )
        self.vae, self.pixel_space = vae, pixel_space
        self.log = core.open_log(out_dir, resume_step)
        self.plot_path = Path(out_dir) / core.EVAL_PLOT

    def __call__(self, state: dict, step: int, loss_records: list[dict]) -> dict:
        with torch.device("meta"):
            model = StarFlow(self.config)
        model.load_state_dict(state, assign=True)
        model.to(self.device).eval()
        with torch.no_grad():
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
                bits.append(model.bits_per_dim(inputs.x, inputs.y).double().cpu().numpy())
        return np.concatenate(bits) if bits else None

    def sample_measures(self, model: StarFlow) -> dict[str, float]:
        if self.reference is None:
            return {}
        count, size, channels = self.train.eval_samples, self.config.img_size, self.config.in_channels
        labels = core.class_balanced_labels(self.config.num_classes, count)
        noise = torch.randn(
            count, channels, size, size, generator=torch.Generator().manual_seed(self.train.seed + 1)
        )
        images = []
        for first in range(0, count, self.held.batch_size):
            rows = slice(first, first + self.held.batch_size)
            y = None if labels is None else torch.from_numpy(labels[rows]).to(self.device)
            y_null = None if y is None else self.inputs.null_condition(len(y)).to(self.device)
            guidance = self.train.sample_guidance if y is not None else 0.0
            samples = model.sample(noise[rows].to(self.device), y, y_null, guidance=guidance)
            images.append(to_uint8_images(samples, self.pixel_space, self.vae))
        return core.measure_samples(np.concatenate(images), self.features, self.reference)
