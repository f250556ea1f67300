"""The Wan2.2 VAE for the PyTorch twin: diffusers' ``AutoencoderKLWan`` behind starflow_mlx.wan_vae's
calls. Tensors: videos (B, T, 3, H, W) in [-1, 1], T = 4k + 1; latents (B, k + 1, z_dim, H/16, W/16),
normalised: (mean - latents_mean) / latents_std. diffusers works on (B, C, T, H, W); the wrapper
transposes at its edges.

Subclassing keeps the diffusers attribute paths, so parameter names equal the MLX twin's. The
chunk loops are diffusers' ``_encode`` / ``_decode`` over its own encoder and decoder (the first
frame alone, then ``chunk_frames`` latent frames at a time), without the final clamp: the official
code does not clip the decoded video. ``encode`` / ``decode`` do not switch off autograd: wrap
inference in ``torch.no_grad()``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import diffusers
import torch

from starflow_core.official.wan_vae_keys import check_wan_vae_weights, rename_original
from starflow_core.wan_vae_config import (
    WanVAEConfig,
    check_chunk_frames,
    check_temporal_scale,
    resolve_wan_vae_config,
)

from .checkpoint import build_empty, read_official_state_dict, read_safetensors_mapped, stream_into

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class AutoencoderKLWan(diffusers.AutoencoderKLWan):
    """``encode``: video (B, T, 3, H, W) in [-1, 1] -> normalised latents (B, T', z_dim, H/16, W/16);
    ``decode``: normalised latents -> video, nominally in [-1, 1] (not clipped, as the official,
    unless the config's ``clip_output``).

    ``temporal_scale``: the official ``<vae>:<scale>`` suffix (``...-Diffusers:0.6`` for
    STARFlow-V): encode multiplies the latents of every latent frame after the first by it, decode
    divides them by it first, as the official VAE wrapper does (utils/model_setup.py). 1.0: none.
    """

    temporal_scale: float = 1.0
    clip_output: bool = False  # the config key diffusers 0.42 does not take (WanVAEConfig.clip_output)

    # ----- loading ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, folder: str | Path, dtype: torch.dtype = torch.float32, temporal_scale: float = 1.0
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
        return cls._load(
            config, read_safetensors_mapped(weights_path), str(weights_path), dtype, temporal_scale
        )

    @classmethod
    def from_official(
        cls,
        pth: str | Path,
        config: Mapping[str, Any] | str | Path | WanVAEConfig,
        dtype: torch.dtype = torch.float32,
        temporal_scale: float = 1.0,
    ) -> AutoencoderKLWan:
        """The original ``Wan2.2_VAE.pth`` naming, renamed into diffusers' by the core table.
        ``config``: a WanVAEConfig, or a dict / JSON path with the original constructor arguments."""
        config = resolve_wan_vae_config(config)
        state = read_official_state_dict(pth)  # weights_only: a file carrying code is refused
        renamed = rename_original(state)
        return cls._load(
            config, {renamed[name]: value for name, value in state.items()}, str(pth), dtype, temporal_scale
        )

    @classmethod
    def _load(
        cls,
        config: WanVAEConfig,
        weights: dict[str, torch.Tensor],
        source: str,
        dtype: torch.dtype,
        temporal_scale: float,
    ) -> AutoencoderKLWan:
        model = build_empty(lambda: cls.from_config(config.to_diffusers()))  # no memory yet
        expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
        check_wan_vae_weights(expected, {name: tuple(value.shape) for name, value in weights.items()}, source)
        order = sorted(weights, key=lambda key: weights[key].nbytes, reverse=True)  # largest first
        stream_into(model, ((key, weights.pop(key)) for key in order), dtype)
        model.temporal_scale = check_temporal_scale(temporal_scale)
        model.clip_output = config.clip_output
        return model.eval()

    @property
    def wan_config(self) -> WanVAEConfig:
        fields = {key: self.config[key] for key in _CONFIG_FIELDS if key != "clip_output"}
        return WanVAEConfig.from_diffusers({**fields, "clip_output": self.clip_output})

    # ----- encode / decode ---------------------------------------------------------------------
    def encode(
        self,
        video: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        chunk_frames: int = 1,
    ) -> torch.Tensor:
        """(B, T, 3, H, W) in [-1, 1], T = 4k + 1 -> normalised latents (B, k + 1, z_dim, H/16, W/16).

        ``sample=True`` adds the posterior's noise as the official ``sample`` does: normalised mean
        + posterior std * N(0, 1). ``chunk_frames`` latent frames are encoded at a time after the
        first (diffusers and the official: 1)."""
        config = self.wan_config
        self._check_video(video, config)
        check_chunk_frames(chunk_frames)
        x = diffusers.models.autoencoders.autoencoder_kl_wan.patchify(
            video.to(self.dtype).transpose(1, 2), config.patch_size
        )  # (B, 12, T, H/2, W/2)
        step = chunk_frames * config.temporal_factor
        self.clear_cache()
        moments = []
        for start, stop in [(0, 1)] + [(s, s + step) for s in range(1, x.shape[2], step)]:
            self._enc_conv_idx = [0]
            chunk = self.encoder(
                x[:, :, start:stop], feat_cache=self._enc_feat_map, feat_idx=self._enc_conv_idx
            )
            moments.append(self.quant_conv(chunk))
        self.clear_cache()
        mean, log_variance = (
            torch.cat(moments, dim=2).float().transpose(1, 2).chunk(2, dim=2)
        )  # (B, T', z, h, w)
        latents = (mean - _per_channel(config.latents_mean, mean)) / _per_channel(config.latents_std, mean)
        if sample:
            std = torch.exp(0.5 * log_variance.clamp(-30.0, 20.0))
            device = (
                generator.device if generator is not None else latents.device
            )  # the generator's own device
            latents = latents + std * torch.randn(latents.shape, generator=generator, device=device).to(
                latents.device
            )
        return self._scale_time(latents, self.temporal_scale)

    def iter_decode(self, latents: torch.Tensor, chunk_frames: int = 1) -> Iterator[torch.Tensor]:
        """The video of ``decode``, chunk by chunk: the first frame, then 4 * chunk_frames frames
        at a time (float32), so only a chunk of the video need be in memory."""
        config = self.wan_config
        self._check_latents(latents, config)
        check_chunk_frames(chunk_frames)
        z = self._scale_time(latents.float(), 1.0 / self.temporal_scale)
        z = z * _per_channel(config.latents_std, z) + _per_channel(config.latents_mean, z)
        z = z.to(self.dtype).transpose(1, 2)  # (B, z_dim, T', h, w)
        self.clear_cache()
        try:
            for start in [0, *range(1, z.shape[2], chunk_frames)]:
                stop = 1 if start == 0 else start + chunk_frames
                self._conv_idx = [0]
                out = self.decoder(
                    self.post_quant_conv(z[:, :, start:stop]),
                    feat_cache=self._feat_map,
                    feat_idx=self._conv_idx,
                    first_chunk=start == 0,
                )
                frames = diffusers.models.autoencoders.autoencoder_kl_wan.unpatchify(out, config.patch_size)
                if config.clip_output:
                    frames = frames.clamp(-1.0, 1.0)
                yield frames.float().transpose(1, 2)  # (B, t, 3, H, W)
        finally:
            self.clear_cache()

    def decode(self, latents: torch.Tensor, chunk_frames: int = 1) -> torch.Tensor:
        """Normalised latents (B, T', z_dim, h, w) -> video (B, 4(T' - 1) + 1, 3, 16h, 16w), float32."""
        return torch.cat(list(self.iter_decode(latents, chunk_frames)), dim=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean (diffusers' forward would call the encode above)."""
        return self.decode(self.encode(video))

    # ----- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _scale_time(latents: torch.Tensor, scale: float) -> torch.Tensor:
        if scale == 1.0:
            return latents
        return torch.cat([latents[:, :1], latents[:, 1:] * scale], dim=1)

    @staticmethod
    def _check_video(video: torch.Tensor, config: WanVAEConfig) -> None:
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, T, 3, H, W), got shape {tuple(video.shape)}")
        config.latent_frames(video.shape[1])
        factor = config.spatial_factor
        if video.shape[3] % factor or video.shape[4] % factor:
            raise ValueError(
                f"video height and width must be multiples of {factor}, got {video.shape[3]}x{video.shape[4]}"
            )

    @staticmethod
    def _check_latents(latents: torch.Tensor, config: WanVAEConfig) -> None:
        if latents.ndim != 5 or latents.shape[2] != config.z_dim:
            raise ValueError(
                f"latents must be (B, T', {config.z_dim}, h, w), got shape {tuple(latents.shape)}"
            )


_CONFIG_FIELDS = tuple(field for field in WanVAEConfig.__dataclass_fields__)


def _per_channel(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 1, -1, 1, 1)
