"""STARFlow / TARFlow: a stack of autoregressive flow blocks over patch tokens.

Tensors are NCHW (batch, channels, height, width). Forward maps data to noise with
an exact log-determinant; `sample` inverts it (STARFlow paper, section 3). The last
block is the deep block; the others are shallow. Attribute paths equal the official
checkpoint names, so official weights load with no renaming.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from starflow_core.config import FlowConfig
from starflow_core.positions import rope_angles

from . import checkpoint
from .flow_block import FlowBlock, Rope
from .sampling import (
    BlockConditions,
    SamplingStats,
    invert_block,
    sample_block_jacobi,
    sample_block_sequential,
)


class StarFlow(nn.Module):
    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(
            FlowBlock(config, i) if n > 0 else nn.Module() for i, n in enumerate(config.layers_per_block)
        )
        if config.family == "tarflow":  # prior variance of the noise (ones for nvp models)
            self.register_buffer("var", torch.ones(config.grid_size**2, config.token_dim))

    # ----- loading and saving (see checkpoint.py) ----------------------------------------
    @classmethod
    def from_official(
        cls, path: str | Path, config: FlowConfig | dict | str | Path, *, strict: bool = False
    ) -> StarFlow:
        """Load an official `.pth` state_dict (torch.load weights_only=True), tensor by tensor.

        Missing or mis-shaped tensors are errors; tensors the model does not use are skipped
        with a warning (an error with strict=True)."""
        return checkpoint.load_official(cls, path, config, strict)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        dtype: torch.dtype | None = None,
        *,
        strict: bool = False,
        device: str | torch.device = "cpu",
    ) -> StarFlow:
        """Load our format (config.json + model.safetensors) tensor by tensor, straight into
        `dtype` on `device`; `strict` as in from_official. `folder` is a flow folder or a pipeline
        folder (model_index.json; its transformer/ loads)."""
        return checkpoint.load_pretrained(cls, folder, dtype, strict, device)

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> None:
        checkpoint.save_pretrained(self, folder, dtype)

    # ----- layout ---------------------------------------------------------------------
    def is_identity(self, index: int) -> bool:
        return self.config.layers_per_block[index] == 0

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, T, C'), raster order; STARFlow (p1 p2 c), TARFlow unfold (c p1 p2)."""
        B, C, H, W = x.shape
        p = self.config.patch_size
        x = x.reshape(B, C, H // p, p, W // p, p)
        order = (0, 2, 4, 1, 3, 5) if self.config.patch_layout == "c p1 p2" else (0, 2, 4, 3, 5, 1)
        return x.permute(*order).reshape(B, (H // p) * (W // p), C * p * p)

    def unpatchify(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, T, C') -> (B, C, H, W), the inverse of patchify."""
        B = tokens.shape[0]
        p, C = self.config.patch_size, self.config.in_channels
        h, w = height // p, width // p
        if self.config.patch_layout == "c p1 p2":
            x = tokens.reshape(B, h, w, C, p, p).permute(0, 3, 1, 4, 2, 5)
        else:
            x = tokens.reshape(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, C, height, width)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected an NCHW tensor (B, C, H, W), got shape {tuple(x.shape)}")
        self.config.check_image_size(x.shape[2], x.shape[3], x.shape[1])

    def rope(self, index: int, height: int, width: int, txt_len: int, device) -> Rope | None:
        """(cos, sin) for block `index` at a token grid of height x width, text first."""
        config = self.config
        if not config.rope:
            return None
        angles = rope_angles(
            config.head_dim,
            height,
            width,
            config.rope_seq_len,
            txt_len if config.block_has_text(index) else 0,
            three_d=config.txt_size > 0,
            halves=config.hf_style_rope,
        )
        angles = torch.from_numpy(angles).to(device)
        return angles.cos(), angles.sin()

    # ----- conditioning -----------------------------------------------------------------
    def text_features(self, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Conditioning as (B, txt_len, txt_dim) features, or None for TARFlow / unconditional."""
        config = self.config
        if config.txt_dim == 0:
            return None
        if y is None:
            raise ValueError("this model is conditioned: pass y (text features or integer labels)")
        if config.label_conditioned and not torch.is_floating_point(y):
            labels = torch.where(y < 0, torch.full_like(y, config.num_classes), y)  # -1: the null label
            return nn.functional.one_hot(labels, config.txt_dim).float().unsqueeze(1)
        if y.ndim != 3 or y.shape[0] != batch or y.shape[2] != config.txt_dim:
            raise ValueError(
                f"text features must be (B={batch}, txt_len, txt_dim={config.txt_dim}), got {tuple(y.shape)}"
            )
        return y.to(self.blocks[config.deep_block].proj_txt.weight.dtype)

    def class_labels(self, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not (self.config.family == "tarflow" and self.config.num_classes):
            return None
        if y is None:
            return None
        if y.shape != (batch,) or torch.is_floating_point(y):
            raise ValueError(
                f"class labels must be an integer tensor of shape ({batch},), got {tuple(y.shape)}"
            )
        if (y >= self.config.num_classes).any():
            raise ValueError(f"class labels must be < num_classes={self.config.num_classes}")
        return y

    def check_labels(self, y: torch.Tensor | None) -> None:
        """Integer labels must be classes 0..num_classes-1 or -1 (the null label); a label of
        num_classes would otherwise select the null condition, silently."""
        if y is None or not self.config.num_classes or torch.is_floating_point(y) or y.numel() == 0:
            return
        low, high = int(y.min()), int(y.max())
        if low < -1 or high >= self.config.num_classes:
            raise ValueError(
                f"class labels must be 0..{self.config.num_classes - 1} (or -1, the null label), "
                f"got {high if high >= self.config.num_classes else low}"
            )

    # ----- data -> noise ----------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, recompute: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (z (B, C, H, W), total log|det dz/dx| (B,) in nats).

        recompute=True: a gradient of the result keeps one layer's activations at a time
        (each layer is recomputed in the backward pass), the same numbers in bounded memory."""
        self._check_input(x)
        B, _, H, W = x.shape
        p = self.config.patch_size
        text, labels = self.text_features(y, B), self.class_labels(y, B)
        tokens = self.patchify(x)
        logdet = torch.zeros(B, device=x.device, dtype=torch.float32)
        for i, block in enumerate(self.blocks):
            if self.is_identity(i):
                continue
            txt_len = text.shape[1] if text is not None else 0
            rope = self.rope(i, H // p, W // p, txt_len, x.device)
            tokens, block_logdet = block(tokens, text if block.has_text else None, rope, labels, recompute)
            logdet = logdet + block_logdet
        return self.unpatchify(tokens, H, W), logdet

    def log_prob(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, recompute: bool = False
    ) -> torch.Tensor:
        """Exact log p(x | y) in nats, (B,): log N(z; 0, var) + log|det|; recompute as in forward."""
        self.check_labels(y)
        z, logdet = self(x, y, recompute=recompute)
        z = self.patchify(z).float()
        var = self.var.float() if self.config.family == "tarflow" else torch.ones_like(z[0])
        log_normal = -0.5 * (z.square() / var + torch.log(2 * math.pi * var))
        return log_normal.sum(dim=(1, 2)) + logdet

    def bits_per_dim(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """-log2 p(x | y) per dimension (B,), for the continuous density of x in model units."""
        return -self.log_prob(x, y) / (x[0].numel() * math.log(2.0))

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The official objective: 0.5 mean(z^2) - sum over blocks of mean(log-det), batch mean."""
        z, logdet = self(x, y)
        dims = x[0].numel()
        return (0.5 * z.float().square().flatten(1).mean(1) - logdet / dims).mean()

    # ----- noise -> data ----------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        noise: torch.Tensor,
        y: torch.Tensor | None = None,
        y_null: torch.Tensor | None = None,
        guidance: float = 0.0,
        *,
        jacobi: bool = False,
        block_size: int = 16,
        tol: float = 1e-3,
        max_iter: int = 32,
        annealed_guidance: bool = False,
        attn_temp: float = 1.0,
        progress: bool = False,
        stats: SamplingStats | None = None,
        callback: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """noise (B, C, H, W) ~ N(0, I) -> sample (B, C, H, W).

        Guidance w > 0 applies in conditioned blocks (only the deep block when
        cond_top_only); text models need y_null (the encoded empty prompt), label
        models use the null label. jacobi=True samples chunks of block_size tokens in
        parallel (sos models); `stats`, if given, receives the iteration counts;
        `callback(block_index, x)`, if given, is called after each block with the state so far
        (B, C, H, W), fp32 (blocks run from the last index down to 0; identity blocks are skipped).

        The result is neither denoised nor clipped. Pixel models: data scaled to about [-1, 1]
        plus the Gaussian noise (std noise_std) the model was trained on, so values past +-1
        are normal (80 demo-model samples, seeds 0-7 at guidance 1: -1.44..2.00). Latent
        models: VAE latents (times the VAE scaling factor). StarFlowPipeline denoises, decodes
        and clips to [-1, 1] on the way to uint8 pixels.
        """
        self._check_input(noise)
        if jacobi and not self.config.sos:
            raise ValueError("Jacobi sampling needs a model with sos=True; use jacobi=False")
        if jacobi and (block_size < 1 or max_iter < 1):
            raise ValueError("block_size and max_iter must be >= 1")
        B, _, H, W = noise.shape
        p = self.config.patch_size
        tokens = self.patchify(noise).float()
        if self.config.family == "tarflow":
            tokens = tokens * self.var.float().sqrt()
        plain, guided = self._conditions(y, y_null, B, guidance, annealed_guidance, attn_temp)
        stats = stats if stats is not None else SamplingStats()
        for i in reversed(range(len(self.blocks))):
            if self.is_identity(i):
                continue
            block = self.blocks[i]
            cond = guided if (guided is not None and self._block_is_conditioned(block)) else plain
            txt_len = cond.text.shape[1] if (block.has_text and cond.text is not None) else 0
            rope = self.rope(i, H // p, W // p, txt_len, noise.device)
            if jacobi:
                tokens, iters = sample_block_jacobi(
                    block, tokens, cond, rope, block_size, tol, max_iter, progress
                )
                stats.jacobi_iterations.append(iters)
                stats.steps += sum(iters)
            else:
                tokens = sample_block_sequential(block, tokens, cond, rope, progress)
                stats.steps += tokens.shape[1]
            if callback is not None:
                callback(i, self.unpatchify(tokens, H, W))
        return self.unpatchify(tokens, H, W).to(noise.dtype)

    def invert(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        y_null: torch.Tensor | None = None,
        guidance: float = 0.0,
        *,
        annealed_guidance: bool = False,
        attn_temp: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact inverse of `sample` with the same conditions and guidance: data x (B, C, H, W)
        -> (noise (B, C, H, W), log|det d noise / dx| (B,) in nats).

        sample(invert(x)[0], ...) == x up to float error (sequential sampling; Jacobi to its
        tolerance). One teacher-forced pass per block, blocks in forward order. With guidance 0
        this is the forward pass (TARFlow: noise also divided by sqrt(var)), so
        log N(noise; 0, I) + log|det| is the log-density of the guided sampler's output.
        """
        self._check_input(x)
        B, _, H, W = x.shape
        p = self.config.patch_size
        tokens = self.patchify(x).float()
        plain, guided = self._conditions(y, y_null, B, guidance, annealed_guidance, attn_temp)
        logdet = torch.zeros(B, device=x.device, dtype=torch.float32)
        for i, block in enumerate(self.blocks):  # the reverse of sample's order
            if self.is_identity(i):
                continue
            cond = guided if (guided is not None and self._block_is_conditioned(block)) else plain
            txt_len = cond.text.shape[1] if (block.has_text and cond.text is not None) else 0
            rope = self.rope(i, H // p, W // p, txt_len, x.device)
            tokens, block_logdet = invert_block(block, tokens, cond, rope)
            logdet = logdet + block_logdet
        if self.config.family == "tarflow":  # sample multiplies the noise by sqrt(var)
            var = self.var.float()
            tokens = tokens / var.sqrt()
            logdet = logdet - 0.5 * var.log().sum()
        return self.unpatchify(tokens, H, W).to(x.dtype), logdet

    def _block_is_conditioned(self, block: FlowBlock) -> bool:
        return block.has_text or block.has_class_embed

    def _conditions(self, y, y_null, batch, guidance, annealed, attn_temp):
        """BlockConditions without guidance, and with (2B rows) when guidance > 0."""
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        self.check_labels(y)
        text, labels = self.text_features(y, batch), self.class_labels(y, batch)
        plain = BlockConditions(text, labels, 0.0, annealed, attn_temp)
        if guidance == 0:
            return plain, None
        config = self.config
        if config.family == "tarflow":
            if config.num_classes == 0:
                return plain, None
            null_labels = torch.full(
                (batch,), -1, dtype=torch.long, device=labels.device if labels is not None else None
            )
            labels = labels if labels is not None else null_labels
            return plain, BlockConditions(
                None, torch.cat([labels, null_labels]), guidance, annealed, attn_temp
            )
        if config.label_conditioned and y_null is None:
            y_null = torch.full((batch,), -1, dtype=torch.long, device=y.device)
        if y_null is None:
            raise ValueError('guidance > 0 needs y_null: the text features of the empty prompt ""')
        null_text = self.text_features(y_null, batch)
        if null_text.shape != text.shape:
            raise ValueError(f"y_null {tuple(null_text.shape)} must match y {tuple(text.shape)}")
        return plain, BlockConditions(torch.cat([text, null_text]), None, guidance, annealed, attn_temp)

    # ----- score-based denoising ---------------------------------------------------------
    def denoise(
        self, x: torch.Tensor, y: torch.Tensor | None = None, noise_std: float | None = None
    ) -> torch.Tensor:
        """One Tweedie step x + sigma^2 * grad_x log p(x | y) (SPEC section 3), sigma = noise_std.

        The gradient recomputes each layer in the backward pass, so its memory is the model
        plus one layer's activations (and each layer's input), not every layer's at once."""
        sigma = self.config.noise_std if noise_std is None else noise_std
        if sigma <= 0:
            return x
        with torch.enable_grad():
            x_var = x.detach().float().requires_grad_(True)
            score = torch.autograd.grad(self.log_prob(x_var, y, recompute=True).sum(), x_var)[0]
        return (x.float() + sigma**2 * score).to(x.dtype)

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.parameters())
