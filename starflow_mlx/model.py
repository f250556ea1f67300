"""STARFlow / TARFlow: a stack of autoregressive flow blocks over patch tokens.

Arrays are NHWC (batch, height, width, channels), videos (batch, frames, height, width,
channels): a video is one token sequence, frame after frame (SPEC section 9), and an
image is a video of one frame. Forward maps data to noise with
an exact log-determinant; `sample` inverts it (STARFlow paper, section 3). The last
block is the deep block; the others are shallow. Attribute paths equal the official
checkpoint names, so official weights load with no renaming.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from starflow_core.config import FlowConfig
from starflow_core.positions import rope_angles

from . import checkpoint, video
from .denoiser import LearnedDenoiser
from .flow_block import FlowBlock, Rope
from .sampling import BlockConditions, SamplingStats, invert_block


class StarFlow(nn.Module):
    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.blocks = [
            FlowBlock(config, i) if n > 0 else nn.Module() for i, n in enumerate(config.layers_per_block)
        ]
        if config.family == "tarflow":  # prior variance of the noise (ones for nvp models)
            self.var = mx.ones((config.grid_size**2, config.token_dim))
            self.freeze(recurse=False, keys=["var"])  # a buffer in torch: saved, never trained
        if config.learnable_self_denoiser:
            self.learnable_self_denoiser = LearnedDenoiser(config)

    # ----- loading and saving (see checkpoint.py) ----------------------------------------
    @classmethod
    def from_official(
        cls, path: str | Path, config: FlowConfig | dict | str | Path, *, strict: bool = False
    ) -> StarFlow:
        """Load an official `.pth` state_dict without torch (restricted unpickler), tensor by tensor.

        Missing or mis-shaped tensors are errors; tensors the model does not use are skipped
        with a warning (an error with strict=True)."""
        return checkpoint.load_official(cls, path, config, strict)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        dtype: mx.Dtype | None = None,
        *,
        quantize: int | None = None,
        group_size: int = 64,
        strict: bool = False,
    ) -> StarFlow:
        """Load our format (config.json + model.safetensors) tensor by tensor, straight into `dtype`.
        `folder` is a flow folder or a pipeline folder (model_index.json; its transformer/ loads).

        `quantize` (4 or 8 bits) quantizes the transformer linears as they load, so the
        full-precision model is never resident; `strict` as in from_official."""
        quantization = None if quantize is None else (quantize, group_size)
        return checkpoint.load_pretrained(cls, folder, dtype, quantization, strict)

    def save_pretrained(self, folder: str | Path, dtype: mx.Dtype | None = None) -> None:
        checkpoint.save_pretrained(self, folder, dtype)

    def quantize(self, bits: int = 8, group_size: int = 64) -> StarFlow:
        """Quantize the transformer linears in place (see quantize.py); save_pretrained keeps it."""
        from .quantize import quantize

        return quantize(self, bits, group_size)

    # ----- layout ---------------------------------------------------------------------
    def is_identity(self, index: int) -> bool:
        return self.config.layers_per_block[index] == 0

    def patchify(self, x: mx.array) -> mx.array:
        """(B, H, W, C) -> (B, T, C'), raster order; STARFlow (p1 p2 c), TARFlow unfold (c p1 p2)."""
        B, H, W, C = x.shape
        p = self.config.patch_size
        x = x.reshape(B, H // p, p, W // p, p, C)
        order = (0, 1, 3, 5, 2, 4) if self.config.patch_layout == "c p1 p2" else (0, 1, 3, 2, 4, 5)
        return x.transpose(*order).reshape(B, (H // p) * (W // p), C * p * p)

    def unpatchify(self, tokens: mx.array, height: int, width: int) -> mx.array:
        """(B, T, C') -> (B, H, W, C), the inverse of patchify."""
        B = tokens.shape[0]
        p, C = self.config.patch_size, self.config.in_channels
        h, w = height // p, width // p
        if self.config.patch_layout == "c p1 p2":
            x = tokens.reshape(B, h, w, C, p, p).transpose(0, 1, 4, 2, 5, 3)
        else:
            x = tokens.reshape(B, h, w, p, p, C).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(B, height, width, C)

    def _check_input(self, x: mx.array, video: bool = True) -> None:
        if x.ndim not in ((4, 5) if video else (4,)):
            wanted = "an NHWC array (B, H, W, C)" + (" or a video (B, T, H, W, C)" if video else "")
            raise ValueError(f"expected {wanted}, got shape {tuple(x.shape)}")
        if x.ndim == 5:
            self.config.check_video(x.shape[1])
        self.config.check_image_size(*x.shape[-3:])

    def tokens(self, x: mx.array) -> tuple[mx.array, int]:
        """An image (B, H, W, C) or video (B, T, H, W, C) -> (tokens (B, T*h*w, C'), T)."""
        if x.ndim == 4:
            return self.patchify(x), 1
        B, T = x.shape[:2]
        tokens = self.patchify(x.reshape(B * T, *x.shape[2:]))  # (B*T, h*w, C')
        return tokens.reshape(B, -1, tokens.shape[-1]), T

    def from_tokens(self, tokens: mx.array, shape: tuple[int, ...]) -> mx.array:
        """The inverse of `tokens`, back to `shape` (an image's or a video's)."""
        H, W = shape[-3], shape[-2]
        frames = shape[1] if len(shape) == 5 else 1
        x = self.unpatchify(tokens.reshape(tokens.shape[0] * frames, -1, tokens.shape[-1]), H, W)
        return x.reshape(tuple(shape[:-1]) + (x.shape[-1],))

    def rope(self, index: int, height: int, width: int, txt_len: int, frames: int = 1) -> Rope | None:
        """(cos, sin) for block `index` at a token grid of height x width (x frames), text first."""
        return self.rope_table(height, width, txt_len if self.config.block_has_text(index) else 0, frames)

    def rope_table(self, height: int, width: int, txt_len: int, frames: int = 1) -> Rope | None:
        """(cos, sin) for txt_len text tokens then frames x height x width tokens, or None."""
        config = self.config
        if not config.rope:
            return None
        angles = rope_angles(
            config.head_dim,
            height,
            width,
            config.rope_seq_len,
            txt_len,
            three_d=config.txt_size > 0,
            halves=config.hf_style_rope,
            frames=frames,
        )
        return mx.array(np.cos(angles)), mx.array(np.sin(angles))

    # ----- conditioning -----------------------------------------------------------------
    def text_features(self, y: mx.array | None, batch: int) -> mx.array | None:
        """Conditioning as (B, txt_len, txt_dim) features, or None for TARFlow / unconditional."""
        config = self.config
        if config.txt_dim == 0:
            return None
        if y is None:
            raise ValueError("this model is conditioned: pass y (text features or integer labels)")
        if config.label_conditioned and not mx.issubdtype(y.dtype, mx.floating):
            labels = mx.where(y < 0, config.num_classes, y)  # -1: the null label
            one_hot = (labels[:, None] == mx.arange(config.txt_dim)[None, :]).astype(mx.float32)
            return one_hot[:, None, :]
        if y.ndim != 3 or y.shape[0] != batch or y.shape[2] != config.txt_dim:
            raise ValueError(
                f"text features must be (B={batch}, txt_len, txt_dim={config.txt_dim}), got {tuple(y.shape)}"
            )
        return y.astype(self.blocks[config.deep_block].proj_txt.weight.dtype)

    def class_labels(self, y: mx.array | None, batch: int) -> mx.array | None:
        if not (self.config.family == "tarflow" and self.config.num_classes):
            return None
        if y is None:
            return None
        if tuple(y.shape) != (batch,) or mx.issubdtype(y.dtype, mx.floating):
            raise ValueError(
                f"class labels must be an integer array of shape ({batch},), got {tuple(y.shape)}"
            )
        if mx.any(y >= self.config.num_classes).item():
            raise ValueError(f"class labels must be < num_classes={self.config.num_classes}")
        return y

    def check_labels(self, y: mx.array | None) -> None:
        """Integer labels must be classes 0..num_classes-1 or -1 (the null label); a label past
        the one-hot width would otherwise become an all-zero condition, silently. Not called in
        __call__, which training compiles (this reads the values)."""
        if y is None or not self.config.num_classes or mx.issubdtype(y.dtype, mx.floating):
            return
        low, high = mx.min(y).item(), mx.max(y).item()
        if low < -1 or high >= self.config.num_classes:
            raise ValueError(
                f"class labels must be 0..{self.config.num_classes - 1} (or -1, the null label), "
                f"got {high if high >= self.config.num_classes else low}"
            )

    # ----- data -> noise ----------------------------------------------------------------
    def __call__(
        self, x: mx.array, y: mx.array | None = None, *, recompute: bool = False
    ) -> tuple[mx.array, mx.array]:
        """x (B, H, W, C) or a video (B, T, H, W, C) -> (z, same shape, total log|det dz/dx| (B,)
        in nats).

        recompute=True: a gradient of the result keeps one layer's activations at a time
        (each layer is recomputed in the backward pass), the same numbers in bounded memory."""
        self._check_input(x)
        B = x.shape[0]
        text, labels = self.text_features(y, B), self.class_labels(y, B)
        tokens, frames = self.tokens(x)
        logdet = mx.zeros((B,), dtype=mx.float32)
        for i in range(len(self.blocks)):
            if self.is_identity(i):
                continue
            tokens, block_logdet = self.forward_block(i, tokens, frames, x.shape, text, labels, recompute)
            logdet = logdet + block_logdet
        return self.from_tokens(tokens, x.shape), logdet

    def forward_block(self, index, tokens, frames, shape, text, labels, recompute=False):
        """Block `index` forward on tokens (B, T*h*w, C') of `frames` frames of `shape`; a
        frame-local block (shallow_block_local) runs on B*T one-frame sequences."""
        block = self.blocks[index]
        p = self.config.patch_size
        h, w = shape[-3] // p, shape[-2] // p
        txt_len = text.shape[1] if (text is not None and block.has_text) else 0
        if self.config.block_is_frame_local(index) and frames > 1:
            B, L, C = tokens.shape
            rope = self.rope(index, h, w, 0)
            local, logdet = block(tokens.reshape(B * frames, L // frames, C), None, rope, None, recompute)
            return local.reshape(B, L, C), logdet.reshape(B, frames).sum(axis=1)
        rope = self.rope(index, h, w, txt_len, frames)
        return block(tokens, text if block.has_text else None, rope, labels, recompute, frames)

    def log_prob(self, x: mx.array, y: mx.array | None = None, *, recompute: bool = False) -> mx.array:
        """Exact log p(x | y) in nats, (B,): log N(z; 0, var) + log|det|; recompute as in __call__."""
        self.check_labels(y)
        z, logdet = self(x, y, recompute=recompute)
        z = self.tokens(z)[0].astype(mx.float32)
        var = self.var.astype(mx.float32) if self.config.family == "tarflow" else mx.ones(z.shape[1:])
        log_normal = -0.5 * (mx.square(z) / var + mx.log(2 * math.pi * var))
        return mx.sum(log_normal, axis=(1, 2)) + logdet

    def bits_per_dim(self, x: mx.array, y: mx.array | None = None) -> mx.array:
        """-log2 p(x | y) per dimension (B,), for the continuous density of x in model units."""
        return -self.log_prob(x, y) / (x[0].size * math.log(2.0))

    def loss(self, x: mx.array, y: mx.array | None = None) -> mx.array:
        """The official objective: 0.5 mean(z^2) - sum over blocks of mean(log-det), batch mean."""
        z, logdet = self(x, y)
        dims = x[0].size
        return mx.mean(
            0.5 * mx.mean(mx.square(z.astype(mx.float32)).reshape(z.shape[0], -1), axis=1) - logdet / dims
        )

    # ----- noise -> data ----------------------------------------------------------------
    def sample(
        self,
        noise: mx.array,
        y: mx.array | None = None,
        y_null: mx.array | None = None,
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
        callback: Callable[[int, mx.array], None] | None = None,
        first_frame: mx.array | None = None,
        context_length: int | None = None,
    ) -> mx.array:
        """noise (B, H, W, C) or a video (B, T, H, W, C) ~ N(0, I) -> sample, same shape.

        Guidance w > 0 applies in conditioned blocks (only the deep block when
        cond_top_only); text models need y_null (the encoded empty prompt), label
        models use the null label. jacobi=True samples chunks of block_size tokens in
        parallel (sos models; in a video, chunks of 4 x block_size after the first frame,
        each started from the frame before, as the official sampler); `stats`, if given,
        receives the iteration counts; `callback(block_index, x)`, if given, is called after
        each block with the state so far, fp32 (blocks run from the last index down to 0;
        identity blocks are skipped).

        Video: first_frame (B, H, W, C), the noisy latent first frame, makes this
        image-to-video (the frame fills the caches first, official forward_context); with
        local_attn_window the deep block samples a video longer than the window window by
        window, re-encoding the last context_length frames (default window - 1).

        The result is neither denoised nor clipped. Pixel models: data scaled to about [-1, 1]
        plus the Gaussian noise (std noise_std) the model was trained on, so values past +-1
        are normal (80 demo-model samples, seeds 0-7 at guidance 1: -1.44..2.00). Latent
        models: VAE latents (times the VAE scaling factor). StarFlowPipeline denoises, decodes
        and clips to [-1, 1] on the way to uint8 pixels.
        """
        self._check_input(noise)
        if (jacobi or first_frame is not None) and not self.config.sos:
            raise ValueError("Jacobi and image-to-video sampling need a model with sos=True")
        if jacobi and (block_size < 1 or max_iter < 1):
            raise ValueError("block_size and max_iter must be >= 1")
        B = noise.shape[0]
        tokens, frames = self.tokens(noise)
        tokens = tokens.astype(mx.float32)
        if self.config.family == "tarflow":
            tokens = tokens * mx.sqrt(self.var.astype(mx.float32))
        plain, guided = self._conditions(y, y_null, B, guidance, annealed_guidance, attn_temp)
        prefixes = video.first_frame_prefixes(self, first_frame, noise.shape, plain)
        stats = stats if stats is not None else SamplingStats()
        jacobi_settings = video.JacobiSettings(block_size, tol, max_iter) if jacobi else None
        for i in reversed(range(len(self.blocks))):
            if self.is_identity(i):
                continue
            cond = guided if (guided is not None and self._block_is_conditioned(self.blocks[i])) else plain
            tokens = video.sample_block(
                self, i, tokens, frames, noise.shape, cond, prefixes.get(i), jacobi_settings,
                context_length, progress, stats,
            )  # fmt: skip
            if callback is not None:
                callback(i, self.from_tokens(tokens, noise.shape))
        return self.from_tokens(tokens, noise.shape).astype(noise.dtype)

    def invert(
        self,
        x: mx.array,
        y: mx.array | None = None,
        y_null: mx.array | None = None,
        guidance: float = 0.0,
        *,
        annealed_guidance: bool = False,
        attn_temp: float = 1.0,
    ) -> tuple[mx.array, mx.array]:
        """The exact inverse of `sample` with the same conditions and guidance: data x (B, H, W, C)
        -> (noise (B, H, W, C), log|det d noise / dx| (B,) in nats).

        sample(invert(x)[0], ...) == x up to float error (sequential sampling; Jacobi to its
        tolerance). One teacher-forced pass per block, blocks in forward order. With guidance 0
        this is the forward pass (TARFlow: noise also divided by sqrt(var)), so
        log N(noise; 0, I) + log|det| is the log-density of the guided sampler's output.
        Images only.
        """
        self._check_input(x, video=False)
        B, H, W, _ = x.shape
        p = self.config.patch_size
        tokens = self.patchify(x).astype(mx.float32)
        plain, guided = self._conditions(y, y_null, B, guidance, annealed_guidance, attn_temp)
        logdet = mx.zeros((B,), dtype=mx.float32)
        for i, block in enumerate(self.blocks):  # the reverse of sample's order
            if self.is_identity(i):
                continue
            cond = guided if (guided is not None and self._block_is_conditioned(block)) else plain
            txt_len = cond.text.shape[1] if (block.has_text and cond.text is not None) else 0
            tokens, block_logdet = invert_block(block, tokens, cond, self.rope(i, H // p, W // p, txt_len))
            logdet = logdet + block_logdet
        if self.config.family == "tarflow":  # sample multiplies the noise by sqrt(var)
            var = self.var.astype(mx.float32)
            tokens = tokens / mx.sqrt(var)
            logdet = logdet - 0.5 * mx.sum(mx.log(var))
        return self.unpatchify(tokens, H, W).astype(x.dtype), logdet

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
            null_labels = mx.full((batch,), -1, dtype=mx.int32)
            labels = labels.astype(mx.int32) if labels is not None else null_labels
            return plain, BlockConditions(
                None, mx.concatenate([labels, null_labels]), guidance, annealed, attn_temp
            )
        if config.label_conditioned and y_null is None:
            y_null = mx.full((batch,), -1, dtype=mx.int32)
        if y_null is None:
            raise ValueError('guidance > 0 needs y_null: the text features of the empty prompt ""')
        null_text = self.text_features(y_null, batch)
        if null_text.shape != text.shape:
            raise ValueError(f"y_null {tuple(null_text.shape)} must match y {tuple(text.shape)}")
        return plain, BlockConditions(mx.concatenate([text, null_text]), None, guidance, annealed, attn_temp)

    # ----- score-based denoising ---------------------------------------------------------
    def denoise(self, x: mx.array, y: mx.array | None = None, noise_std: float | None = None) -> mx.array:
        """One Tweedie step x + sigma^2 * grad_x log p(x | y) (SPEC section 3), sigma = noise_std.

        The gradient recomputes each layer in the backward pass, so its memory is the model
        plus one layer's activations (and each layer's input), not every layer's at once."""
        sigma = self.config.noise_std if noise_std is None else noise_std
        if sigma <= 0:
            return x
        score = mx.grad(lambda v: mx.sum(self.log_prob(v, y, recompute=True)))(x.astype(mx.float32))
        return (x.astype(mx.float32) + sigma**2 * score).astype(x.dtype)

    def learned_denoise(self, x: mx.array, y: mx.array | None = None) -> mx.array:
        """The learned self-denoiser's output for x (B, H, W, C) or (B, T, H, W, C), same shape
        (the official model(x, y, denoiser=True)); y: text features when conditional_denoiser."""
        return video.learned_denoise(self, x, y)

    def denoise_video(self, x: mx.array, y: mx.array | None = None) -> mx.array:
        """x - DENOISER_STEP * learned_denoise(x), frame chunk by chunk as the official
        process_denoising applies it (chunks of local_attn_window frames overlapping by
        denoiser_window; one chunk without a window)."""
        return video.denoise_video(self, x, y)

    def num_parameters(self) -> int:
        return sum(v.size for _, v in tree_flatten(self.parameters()))
