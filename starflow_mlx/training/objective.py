"""The training objective of the official train.py in MLX (the twin of starflow_torch's).

Per step: noise augmentation (Gaussian x + noise_std*eps, or uniform 8-bit
dequantisation for pixel models), condition dropout for classifier-free guidance,
then the flow loss 0.5*mean(z^2) - sum_blocks mean(logdet_block) (`StarFlow.loss`),
plus optionally latent_norm_reg * sum of the mean squares of every block's input
(official `outputs[:-1]`: the noisy input and the outputs of the shallow blocks).

The random numbers of a micro-step are drawn for the whole global micro-batch from a
key derived from (seed, micro-step), and the batch takes its rows: a resumed run
continues the same sequence.
"""

from __future__ import annotations

import mlx.core as mx

from starflow_core.training.schedule import bits_per_dim_from_loss, learning_rate, micro_step_seed
from starflow_core.training.video_objective import DENOISER_KEY

from ..model import StarFlow

__all__ = [
    "FlowObjective",
    "StepGradients",
    "augment",
    "bits_per_dim_from_loss",
    "drop_mask",
    "learning_rate",
    "micro_step_keys",
]


def micro_step_keys(seed: int, micro_step: int) -> tuple[mx.array, mx.array]:
    """Two independent PRNG keys for one micro-step: augmentation noise and condition dropout."""
    noise_key, drop_key = mx.random.split(mx.random.key(micro_step_seed(seed, micro_step)))
    return noise_key, drop_key


def augment(
    x: mx.array, rows: mx.array, global_rows: int, key: mx.array, noise_type: str, std: float
) -> mx.array:
    """Add the noise of global rows `rows` (drawn for all `global_rows`) to x (B, H, W, C)."""
    shape = (global_rows, *x.shape[1:])
    if noise_type == "gaussian":
        return x + std * mx.random.normal(shape, key=key)[rows]
    # official uniform dequantisation: pixel value v in [0, 255] becomes (v + u) / 256, u ~ U(0, 1)
    uniform = mx.random.uniform(shape=shape, key=key)[rows]
    return ((x + 1) * (255 / 2) + uniform) / 256 * 2 - 1


def drop_mask(rows: mx.array, global_rows: int, key: mx.array, prob: float) -> mx.array:
    """(B,) bool: which rows lose their condition (label dropout for guidance)."""
    return (mx.random.uniform(shape=(global_rows,), key=key) < prob)[rows]


class FlowObjective:
    """loss(model, x, y) -> (loss to minimise, the flow loss alone) on augmented x.

    They differ by the latent-norm regulariser; the first is what gets differentiated.
    """

    def __init__(self, latent_norm_reg: float = 0.0, weight: float = 1.0):
        self.latent_norm_reg = latent_norm_reg
        self.weight = weight  # official `weights` of get_loss (noise_std / 0.3 with cond_noise_level)

    def __call__(self, model: StarFlow, x: mx.array, y: mx.array | None) -> tuple[mx.array, mx.array]:
        if self.latent_norm_reg == 0:
            loss = model.loss(x, y) if self.weight == 1 else self.weight * model.loss(x, y)
            return loss, mx.stop_gradient(loss)
        z, block_logdets, block_inputs = forward_by_block(model, x, y)
        flow_loss = self.weight * official_loss(z, block_logdets)
        regulariser = sum(mx.mean(mx.square(tokens.astype(mx.float32))) for tokens in block_inputs)
        return flow_loss + self.latent_norm_reg * regulariser, mx.stop_gradient(flow_loss)


def denoiser_loss(model: StarFlow, x: mx.array, y: mx.array | None, score: mx.array) -> mx.array:
    """The learned self-denoiser's regression on the score of x (official F.mse_loss, mean)."""
    return mx.mean(mx.square(model.learned_denoise(x, y).astype(mx.float32) - score))


class StepGradients:
    """(x, y) -> (loss, flow loss, denoiser loss, flow gradients, denoiser gradients) of one micro-batch.

    The flow's gradients leave out the learned self-denoiser (it has its own optimizer). With a
    denoiser, the same pass also gives d loss / d x, whose score numel(x) * noise_std * d loss / d x
    is the denoiser's target (starflow_core.training.video_objective); without one the denoiser
    loss is 0 and its gradients None.
    """

    def __init__(self, model: StarFlow, objective: FlowObjective, noise_std: float):
        self.model, self.objective, self.noise_std = model, objective, noise_std
        self.with_denoiser = model.config.learnable_self_denoiser
        self._flow = mx.value_and_grad(self._flow_loss, argnums=(0, 1) if self.with_denoiser else 0)
        self._denoiser = mx.value_and_grad(self._denoiser_loss)

    def _flow_loss(self, params: dict, x: mx.array, y: mx.array | None) -> tuple[mx.array, mx.array]:
        self.model.update(params)
        return self.objective(self.model, x, y)

    def _denoiser_loss(self, params: dict, x: mx.array, y: mx.array | None, score: mx.array) -> mx.array:
        self.model.learnable_self_denoiser.update(params)
        return denoiser_loss(self.model, x, y, score)

    def __call__(self, x: mx.array, y: mx.array | None):
        params = self.model.trainable_parameters()
        flow_params = {k: v for k, v in params.items() if k != DENOISER_KEY}
        if not self.with_denoiser:
            (loss, flow_loss), grads = self._flow(flow_params, x, y)
            return loss, flow_loss, mx.array(0.0), grads, {}
        (loss, flow_loss), (grads, x_grad) = self._flow(flow_params, x, y)
        score = mx.stop_gradient(x_grad * (x.size * self.noise_std))
        den_loss, den_grads = self._denoiser(params[DENOISER_KEY], x, y, score)
        return loss, flow_loss, den_loss, grads, den_grads


def forward_by_block(
    model: StarFlow, x: mx.array, y: mx.array | None
) -> tuple[mx.array, list[mx.array], list[mx.array]]:
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


def official_loss(z: mx.array, block_logdets: list[mx.array]) -> mx.array:
    """0.5 mean(z^2) - sum_blocks mean(logdet_block), batch mean (official Model.get_loss).

    Block logdets here are sums over the elements of a sample, so their mean is sum / dims.
    """
    dims = z[0].size
    squares = mx.square(z.astype(mx.float32)).reshape(z.shape[0], -1)
    per_sample = 0.5 * mx.mean(squares, axis=1) - sum(ld / dims for ld in block_logdets)
    return mx.mean(per_sample)
