"""The training objective of the official train.py, and the learning-rate schedule.

Per step: noise augmentation (Gaussian x + noise_std*eps, or uniform 8-bit
dequantisation for pixel models), condition dropout for classifier-free guidance,
then the flow loss 0.5*mean(z^2) - sum_blocks mean(logdet_block) (`StarFlow.loss`),
plus optionally latent_norm_reg * sum of the mean squares of every block's input
(official `outputs[:-1]`: the noisy input and the outputs of the shallow blocks).

The random numbers of a micro-step are drawn for the whole global micro-batch from a
generator seeded by (seed, micro-step) and each process takes its rows: one process
and N processes see the same noise, and a resumed run continues the same sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from starflow_core.training.schedule import bits_per_dim_from_loss, learning_rate, micro_step_seed

from ..model import StarFlow

__all__ = [
    "FlowObjective",
    "TrainingObjective",
    "augment",
    "bits_per_dim_from_loss",
    "drop_mask",
    "learning_rate",
    "micro_step_generator",
]


def micro_step_generator(seed: int, micro_step: int) -> torch.Generator:
    return torch.Generator().manual_seed(micro_step_seed(seed, micro_step))


def augment(
    x: torch.Tensor,
    rows: torch.Tensor,
    global_rows: int,
    generator: torch.Generator,
    noise_type: str,
    std: float,
) -> torch.Tensor:
    """Add the noise of global rows `rows` (drawn on CPU for all `global_rows`) to x."""
    shape = (global_rows, *x.shape[1:])
    if noise_type == "gaussian":
        noise = torch.randn(shape, generator=generator)[rows].to(x.device)
        return x + std * noise
    # official uniform dequantisation: pixel value v in [0, 255] becomes (v + u) / 256, u ~ U(0, 1)
    uniform = torch.rand(shape, generator=generator)[rows].to(x.device)
    return ((x + 1) * (255 / 2) + uniform) / 256 * 2 - 1


def drop_mask(rows: torch.Tensor, global_rows: int, generator: torch.Generator, prob: float) -> torch.Tensor:
    """(B,) bool: which rows lose their condition (label dropout for guidance)."""
    return (torch.rand(global_rows, generator=generator) < prob)[rows]


class FlowObjective(nn.Module):
    """Wraps the model so that DDP / FSDP see one forward that returns the loss.

    forward(x, y) -> (loss to minimise, the flow loss alone, detached) on augmented x; they
    differ by the latent-norm regulariser.
    """

    def __init__(self, model: StarFlow, latent_norm_reg: float = 0.0, weight: float = 1.0):
        super().__init__()
        self.model = model
        self.latent_norm_reg = latent_norm_reg
        self.weight = weight  # official `weights` of get_loss (noise_std / 0.3 with cond_noise_level)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.latent_norm_reg == 0:
            loss = self.model.loss(x, y) if self.weight == 1 else self.weight * self.model.loss(x, y)
            return loss, loss.detach()
        z, block_logdets, block_inputs = forward_by_block(self.model, x, y)
        flow_loss = self.weight * official_loss(z, block_logdets)
        regulariser = torch.stack([tokens.float().square().mean() for tokens in block_inputs]).sum()
        return flow_loss + self.latent_norm_reg * regulariser, flow_loss.detach()


class TrainingObjective(FlowObjective):
    """forward(x, y) -> (loss, the flow loss alone (detached), the denoiser loss): the flow's
    objective and, for a model with a learned self-denoiser, the denoiser's, in one forward so
    that DDP / FSDP reduce both gradients in one backward of loss + denoiser loss (the two
    losses reach disjoint parameters, so each gets exactly its own gradient).

    The denoiser's target is the score of the noisy input, numel(x) * noise_std * d loss / d x
    (starflow_core.training.video_objective), taken here by torch.autograd.grad; without a
    denoiser the denoiser loss is 0.
    """

    def __init__(
        self, model: StarFlow, latent_norm_reg: float = 0.0, noise_std: float = 0.0, weight: float = 1.0
    ):
        super().__init__(model, latent_norm_reg, weight)
        self.noise_std = noise_std

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.model.config.learnable_self_denoiser:
            loss, flow_loss = super().forward(x, y)
            return loss, flow_loss, torch.zeros((), device=loss.device)
        x = x.detach().requires_grad_(True)
        loss, flow_loss = super().forward(x, y)
        (x_grad,) = torch.autograd.grad(loss, x, retain_graph=True)
        score = x_grad.detach().float() * (x.numel() * self.noise_std)
        prediction = self.model.learned_denoise(x.detach(), y)
        return loss, flow_loss, (prediction.float() - score).square().mean()


def forward_by_block(
    model: StarFlow, x: torch.Tensor, y: torch.Tensor | None
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Run the flow one block at a time on an image or a video: z tokens, per-block logdet (B,)
    and each block's input tokens."""
    B = x.shape[0]
    text, labels = model.text_features(y, B), model.class_labels(y, B)
    tokens, frames = model.tokens(x)
    logdets, inputs = [], []
    for i in range(len(model.blocks)):
        if model.is_identity(i):
            continue
        inputs.append(tokens)
        tokens, logdet = model.forward_block(i, tokens, frames, x.shape, text, labels)
        logdets.append(logdet)
    return tokens, logdets, inputs


def official_loss(z: torch.Tensor, block_logdets: list[torch.Tensor]) -> torch.Tensor:
    """0.5 mean(z^2) - sum_blocks mean(logdet_block), batch mean (official Model.get_loss).

    Block logdets here are sums over the elements of a sample, so their mean is sum / dims.
    """
    dims = z[0].numel()
    per_sample = 0.5 * z.float().square().flatten(1).mean(1) - sum(ld / dims for ld in block_logdets)
    return per_sample.mean()
