"""The demo model's recipe in MLX: a class-conditional STARFlow on the scikit-learn digits.

The twin of starflow_torch/digits.py: the same objective (`StarFlow.loss`), noise
augmentation, label dropout, AdamW with warmup + cosine decay, gradient clipping and
EMA; batches come from an mlx-data pipeline over the digits arrays. For image folders
and run files use the general trainer, `python -m starflow_mlx.train`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import mlx.core as mx
import mlx.data as dx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from starflow_core.config import FlowConfig
from starflow_core.digits import DIGITS_CONFIG, DigitsSplit, DigitsTraining, learning_rate

from .model import StarFlow


def digits_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int) -> Iterator[dict]:
    """Endless shuffled batches {"image": (B, 8, 8, 1), "label": (B,)} from an mlx-data buffer."""
    dx.core.set_state(seed)
    samples = [
        {"image": image[..., None].astype(np.float32), "label": np.array(label, dtype=np.int64)}
        for image, label in zip(images, labels, strict=True)
    ]
    stream = dx.buffer_from_vector(samples).shuffle().to_stream().repeat(-1).batch(batch_size)
    return iter(stream.prefetch(4, 1))


def noisy_batch(
    batch: dict, noise_std: float, label_dropout: float, rng: np.random.Generator
) -> tuple[mx.array, mx.array]:
    """x + noise_std * eps, and labels with a fraction dropped to the null label -1."""
    images, labels = batch["image"], batch["label"]
    x = images + noise_std * rng.standard_normal(images.shape).astype(np.float32)
    labels = np.where(rng.random(labels.shape) < label_dropout, -1, labels)
    return mx.array(x), mx.array(labels, dtype=mx.int32)


def loss_and_gradients(model: StarFlow, x: mx.array, y: mx.array) -> tuple[mx.array, dict]:
    """The training loss and its gradients with respect to the model's parameters."""
    return nn.value_and_grad(model, lambda m, images, labels: m.loss(images, labels))(model, x, y)


def update_ema(ema: StarFlow, model: StarFlow, decay: float) -> None:
    ema.update(tree_map(lambda e, p: e + (1.0 - decay) * (p - e), ema.parameters(), model.parameters()))


def train_digits(
    split: DigitsSplit,
    config: FlowConfig = DIGITS_CONFIG,
    settings: DigitsTraining | None = None,
    log: Callable[[str], None] = print,
    log_every: int = 100,
) -> tuple[StarFlow, list[dict]]:
    """Train from scratch, reproducibly from settings.seed; returns the EMA model and the loss log."""
    settings = settings or DigitsTraining()
    mx.random.seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = StarFlow(config)
    ema = StarFlow(config)
    ema.update(model.parameters())
    optimizer = optim.AdamW(
        learning_rate=lambda step: mx.array(learning_rate(int(step), settings)),
        betas=list(settings.betas),
        weight_decay=settings.weight_decay,
        bias_correction=True,  # as torch.optim.AdamW
    )
    batches = digits_batches(split.train_images, split.train_labels, settings.batch_size, settings.seed)
    history, running, start = [], [], time.perf_counter()
    for step in range(settings.steps):
        x, y = noisy_batch(next(batches), config.noise_std, settings.label_dropout, rng)
        loss, grads = loss_and_gradients(model, x, y)
        grads, _ = optim.clip_grad_norm(grads, settings.grad_clip)
        optimizer.update(model, grads)
        update_ema(ema, model, settings.ema_decay if step >= settings.warmup_steps else 0.0)
        mx.eval(loss, model.parameters(), ema.parameters(), optimizer.state)
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == settings.steps:
            entry = {
                "step": step + 1,
                "loss": float(np.mean(running)),
                "seconds": time.perf_counter() - start,
            }
            history.append(entry)
            log(f"step {entry['step']:5d}  loss {entry['loss']:.4f}  {entry['seconds']:.0f}s")
            running = []
    return ema, history
