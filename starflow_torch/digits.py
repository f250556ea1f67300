"""Train the embedded demo model: a class-conditional STARFlow on the scikit-learn digits.

A small self-contained loop over `StarFlow.loss` (the official objective): Gaussian
noise augmentation x + noise_std * eps, 10% label dropout to the null label -1 (for
guidance), AdamW with warmup + cosine decay, gradient clipping and an EMA of the weights.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch

from starflow_core.config import FlowConfig
from starflow_core.digits import DIGITS_CONFIG, DigitsSplit, DigitsTraining, learning_rate

from .model import StarFlow


def noisy_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    noise_std: float,
    label_dropout: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x + noise_std * eps, and labels with a fraction dropped to the null label -1."""
    x = images + noise_std * torch.randn(images.shape, generator=generator)
    drop = torch.rand(labels.shape, generator=generator) < label_dropout
    return x, torch.where(drop, torch.full_like(labels, -1), labels)


@torch.no_grad()
def update_ema(ema: StarFlow, model: StarFlow, decay: float) -> None:
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param, 1.0 - decay)


def train_digits(
    split: DigitsSplit,
    config: FlowConfig = DIGITS_CONFIG,
    settings: DigitsTraining | None = None,
    log: Callable[[str], None] = print,
    log_every: int = 100,
) -> tuple[StarFlow, list[dict]]:
    """Train from scratch, reproducibly from settings.seed; returns the EMA model and the loss log."""
    settings = settings or DigitsTraining()
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    images = torch.from_numpy(split.train_images).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.from_numpy(split.train_labels)
    model = StarFlow(config)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay
    )
    history, running, start = [], [], time.perf_counter()
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        index = torch.randint(len(images), (settings.batch_size,), generator=generator)
        x, y = noisy_batch(images[index], labels[index], config.noise_std, settings.label_dropout, generator)
        loss = model.loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        update_ema(ema, model, settings.ema_decay if step >= settings.warmup_steps else 0.0)
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
    return ema.eval(), history
