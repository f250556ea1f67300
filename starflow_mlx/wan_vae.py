"""The Wan2.2 VAE (diffusers' ``AutoencoderKLWan`` with ``is_residual``, patch size 2, z_dim 48)
written natively in MLX: the video autoencoder of STARFlow-V.

Arrays are channels-last: videos (B, T, H, W, 3) in [-1, 1] with T = 4k + 1 frames and sides
divisible by 16; latents (B, k + 1, H/16, W/16, z_dim), normalised as diffusers' Wan pipelines
and the official code normalise them: (mean - latents_mean) / latents_std.

Loading: ``from_pretrained(folder)`` reads a diffusers folder (``Wan-AI/Wan2.2-TI2V-5B-Diffusers``'s
``vae/``); ``from_official(pth, config)`` reads the original ``Wan2.2_VAE.pth`` the official code
downloads, without torch (starflow_core.official.pth_reader). Every rename lives in
starflow_core.official.wan_vae_keys; the layout change (torch OI... -> MLX O...I) in ``sanitize_tensor``.

Memory: encode and decode go chunk of frames by chunk of frames (the first frame alone, then
``chunk_frames`` latent frames at a time) through a causal cache, evaluating each chunk, so the
working memory is that of a chunk, not of the video; ``iter_decode`` hands the video out chunk by
chunk for a writer that does not need it whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from starflow_core.official.wan_vae_keys import check_wan_vae_weights, rename_original
from starflow_core.wan_vae_config import (
    WanVAEConfig,
    check_chunk_frames,
    check_temporal_scale,
    resolve_wan_vae_config,
)

from .wan_vae_layers import CausalCache, CausalConv3d, MidBlock, ResidualDownBlock, ResidualUpBlock, RMSNorm

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class Encoder3d(nn.Module):
    """(B, T, H/2, W/2, 12) patches -> (B, T', H/16, W/16, 2 * z_dim) posterior moments, by chunks."""

    def __init__(self, config: WanVAEConfig):
        super().__init__()
        dims = [config.base_dim * m for m in (1, *config.dim_mult)]
        last = len(config.dim_mult) - 1
        self.conv_in = CausalConv3d(config.in_channels, dims[0], 3, padding=1)
        self.down_blocks = [
            ResidualDownBlock(
                dims[i],
                dims[i + 1],
                config.num_res_blocks,
                temporal=i != last and config.temperal_downsample[i],
                spatial=i != last,
            )
            for i in range(len(config.dim_mult))
        ]
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * config.z_dim, 3, padding=1)

    def __call__(self, x: mx.array, cache: CausalCache) -> mx.array:
        x = self.conv_in(x, cache.past_frames(self.conv_in, x))
        for block in self.down_blocks:
            x = block(x, cache)
        x = nn.silu(self.norm_out(self.mid_block(x, cache)))
        return self.conv_out(x, cache.past_frames(self.conv_out, x))


class Decoder3d(nn.Module):
    """(B, T', h, w, z_dim) latents -> (B, T, 8h, 8w, 12) patches, by chunks."""

    def __init__(self, config: WanVAEConfig):
        super().__init__()
        dims = [config.decoder_base_dim * m for m in (config.dim_mult[-1], *reversed(config.dim_mult))]
        temporal = tuple(reversed(config.temperal_downsample))
        last = len(config.dim_mult) - 1
        self.conv_in = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = [
            ResidualUpBlock(
                dims[i],
                dims[i + 1],
                config.num_res_blocks,
                temporal=i != last and temporal[i],
                spatial=i != last,
            )
            for i in range(len(config.dim_mult))
        ]
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], config.out_channels, 3, padding=1)

    def __call__(self, z: mx.array, cache: CausalCache) -> mx.array:
        x = self.mid_block(self.conv_in(z, cache.past_frames(self.conv_in, z)), cache)
        for block in self.up_blocks:
            x = block(x, cache)
        x = nn.silu(self.norm_out(x))
        return self.conv_out(x, cache.past_frames(self.conv_out, x))


def patchify(video: mx.array, patch: int) -> mx.array:
    """(B, T, H, W, C) -> (B, T, H/p, W/p, C*p*p), channels ordered (C, column offset, row offset)."""
    batch, frames, height, width, channels = video.shape
    x = video.reshape(batch, frames, height // patch, patch, width // patch, patch, channels)
    x = x.transpose(0, 1, 2, 4, 6, 5, 3)  # (B, T, h, w, C, col, row)
    return x.reshape(batch, frames, height // patch, width // patch, channels * patch * patch)


def unpatchify(x: mx.array, patch: int) -> mx.array:
    """The inverse of ``patchify``."""
    batch, frames, height, width, packed = x.shape
    channels = packed // (patch * patch)
    x = x.reshape(batch, frames, height, width, channels, patch, patch)  # (..., C, col, row)
    x = x.transpose(0, 1, 2, 6, 3, 5, 4)  # (B, T, h, row, w, col, C)
    return x.reshape(batch, frames, height * patch, width * patch, channels)


def sanitize_tensor(name: str, value: mx.array) -> tuple[str, mx.array]:
    """One diffusers-named tensor in torch layout -> this module's layout: 3-D conv weights
    (O, I, T, H, W) -> (O, T, H, W, I), 2-D (O, I, H, W) -> (O, H, W, I), RMS-norm gammas
    (C, 1, 1[, 1]) -> (C,)."""
    if name.endswith(".gamma"):
        return name, value.reshape(-1)
    if value.ndim == 5:
        return name, value.transpose(0, 2, 3, 4, 1)
    if value.ndim == 4:
        return name, value.transpose(0, 2, 3, 1)
    return name, value


def _torch_shape(name: str, shape: tuple[int, ...], config: WanVAEConfig) -> tuple[int, ...]:
    """Our parameter's shape as the torch file stores it (for the key check's messages)."""
    if name.endswith(".gamma"):
        return (shape[0], 1, 1) if ".attentions." in name else (shape[0], 1, 1, 1)
    if len(shape) == 5:
        return (shape[0], shape[4], *shape[1:4])
    if len(shape) == 4:
        return (shape[0], shape[3], *shape[1:3])
    return shape


class AutoencoderKLWan(nn.Module):
    """``encode``: video (B, T, H, W, 3) in [-1, 1] -> normalised latents (B, T', H/16, W/16, z_dim);
    ``decode``: normalised latents -> video, nominally in [-1, 1] (not clipped, as the official,
    unless the config's ``clip_output``).

    ``temporal_scale``: the official ``<vae>:<scale>`` suffix (``...-Diffusers:0.6`` for
    STARFlow-V): encode multiplies the latents of every latent frame after the first by it, decode
    divides them by it first, as the official VAE wrapper does (utils/model_setup.py). 1.0: none.
    """

    def __init__(self, config: WanVAEConfig, temporal_scale: float = 1.0):
        super().__init__()
        self.config = config
        self.temporal_scale = check_temporal_scale(temporal_scale)
        self.encoder = Encoder3d(config)
        self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)

    # ----- loading ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, folder: str | Path, dtype: mx.Dtype = mx.float32, temporal_scale: float = 1.0
    ) -> AutoencoderKLWan:
        """A diffusers folder: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or the
        pipeline repository holding it as ``vae/``)."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file() and (folder / "vae" / CONFIG_NAME).is_file():
            folder = folder / "vae"
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for path, what in ((config_path, "config"), (weights_path, "weights")):
            if not path.is_file():
                raise FileNotFoundError(
                    f"Wan VAE {what} not found: {path} (a diffusers vae/ folder holds both)"
                )
        config = WanVAEConfig.from_diffusers(json.loads(config_path.read_text()), source=str(config_path))
        weights = mx.load(str(weights_path))  # lazy: read as each tensor is converted
        shapes = {name: tuple(value.shape) for name, value in weights.items()}
        tensors = ((name, weights.pop(name)) for name in sorted(shapes, key=lambda n: -weights[n].nbytes))
        return cls._load(config, shapes, tensors, str(weights_path), dtype, temporal_scale)

    @classmethod
    def from_official(
        cls,
        pth: str | Path,
        config: Mapping[str, Any] | str | Path | WanVAEConfig,
        dtype: mx.Dtype = mx.float32,
        temporal_scale: float = 1.0,
    ) -> AutoencoderKLWan:
        """The original ``Wan2.2_VAE.pth`` naming, read torch-free. ``config``: a WanVAEConfig, or
        a dict / JSON path with the original constructor arguments (vectors/wan22_vae_tiny's
        config.json layout)."""
        from starflow_core.official.pth_reader import iter_pth_tensors, list_pth_tensors

        config = resolve_wan_vae_config(config)
        infos = list_pth_tensors(pth)  # names and shapes only: nothing read yet
        renamed = rename_original(infos)
        shapes = {renamed[name]: info.shape for name, info in infos.items()}
        tensors = ((renamed[name], mx.array(value)) for name, value in iter_pth_tensors(pth, dtype="float32"))
        return cls._load(config, shapes, tensors, str(pth), dtype, temporal_scale)  # one tensor at a time

    @classmethod
    def _load(
        cls,
        config: WanVAEConfig,
        shapes: Mapping[str, tuple[int, ...]],
        tensors: Iterable[tuple[str, mx.array]],
        source: str,
        dtype: mx.Dtype,
        temporal_scale: float,
    ) -> AutoencoderKLWan:
        """Check the file's names and (torch) shapes, then set its tensors one by one."""
        from .checkpoint import stream_into

        model = cls(config, temporal_scale)  # lazy: never materialised, every parameter is replaced
        expected = {name: _torch_shape(name, p.shape, config) for name, p in tree_flatten(model.parameters())}
        check_wan_vae_weights(expected, shapes, source)
        stream_into(model, (sanitize_tensor(name, value) for name, value in tensors), dtype)
        return model

    @property
    def dtype(self) -> mx.Dtype:
        return self.encoder.conv_in.weight.dtype

    # ----- encode / decode ---------------------------------------------------------------------
    def encode(
        self, video: mx.array, sample: bool = False, key: mx.array | None = None, chunk_frames: int = 1
    ) -> mx.array:
        """(B, T, H, W, 3) in [-1, 1], T = 4k + 1 -> normalised latents (B, k + 1, H/16, W/16, z_dim).

        ``sample=True`` adds the posterior's noise as the official ``sample`` does: normalised mean
        + posterior std * N(0, 1) (noise from ``key`` or MLX's global generator). ``chunk_frames``
        latent frames are encoded at a time after the first (the official: 1)."""
        self._check_video(video)
        check_chunk_frames(chunk_frames)
        x = patchify(video.astype(self.dtype), self.config.patch_size)
        step = chunk_frames * self.config.temporal_factor
        cache, moments = CausalCache(), []
        for start, stop in [(0, 1)] + [(s, s + step) for s in range(1, x.shape[1], step)]:
            out = self.quant_conv(self.encoder(x[:, start:stop], cache))
            mx.eval(out, cache.arrays())  # one chunk's graph at a time
            moments.append(out)
        mean, log_variance = mx.split(mx.concatenate(moments, axis=1).astype(mx.float32), 2, axis=-1)
        latents = (mean - mx.array(self.config.latents_mean)) / mx.array(self.config.latents_std)
        if sample:
            std = mx.exp(0.5 * mx.clip(log_variance, -30.0, 20.0))
            latents = latents + std * mx.random.normal(latents.shape, key=key)
        return self._scale_time(latents, self.temporal_scale)

    def iter_decode(self, latents: mx.array, chunk_frames: int = 1) -> Iterator[mx.array]:
        """The video of ``decode``, chunk by chunk: the first frame, then 4 * chunk_frames frames
        at a time (float32, evaluated), so only a chunk of the video need be in memory."""
        self._check_latents(latents)
        check_chunk_frames(chunk_frames)
        z = self._scale_time(latents.astype(mx.float32), 1.0 / self.temporal_scale)
        z = (z * mx.array(self.config.latents_std) + mx.array(self.config.latents_mean)).astype(self.dtype)
        cache = CausalCache()
        for start in [0, *range(1, z.shape[1], chunk_frames)]:
            stop = 1 if start == 0 else start + chunk_frames
            out = self.decoder(self.post_quant_conv(z[:, start:stop]), cache)
            frames = unpatchify(out, self.config.patch_size).astype(mx.float32)
            if self.config.clip_output:
                frames = mx.clip(frames, -1.0, 1.0)
            mx.eval(frames, cache.arrays())
            yield frames

    def decode(self, latents: mx.array, chunk_frames: int = 1) -> mx.array:
        """Normalised latents (B, T', h, w, z_dim) -> video (B, 4(T' - 1) + 1, 16h, 16w, 3), float32."""
        return mx.concatenate(list(self.iter_decode(latents, chunk_frames)), axis=1)

    # ----- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _scale_time(latents: mx.array, scale: float) -> mx.array:
        if scale == 1.0:
            return latents
        return mx.concatenate([latents[:, :1], latents[:, 1:] * scale], axis=1)

    def _check_video(self, video: mx.array) -> None:
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"video must be (B, T, H, W, 3), channels last, got shape {tuple(video.shape)}")
        self.config.latent_frames(video.shape[1])
        factor = self.config.spatial_factor
        if video.shape[2] % factor or video.shape[3] % factor:
            raise ValueError(
                f"video height and width must be multiples of {factor}, got {video.shape[2]}x{video.shape[3]}"
            )

    def _check_latents(self, latents: mx.array) -> None:
        if latents.ndim != 5 or latents.shape[-1] != self.config.z_dim:
            raise ValueError(
                f"latents must be (B, T', h, w, {self.config.z_dim}), channels last, got shape {tuple(latents.shape)}"
            )
