"""SD-VAE for the PyTorch twin: diffusers' ``AutoencoderKL`` behind starflow_mlx.vae's calls.

Tensors are NCHW: images (B, 3, H, W) in [-1, 1], latents (B, 4, H/8, W/8) for SD-VAE.
Subclassing keeps the diffusers attribute paths, so parameter names equal the MLX twin's.
Latent convention (as the official STARFlow code): ``latents = posterior * scaling_factor``.
``encode`` / ``decode`` return tensors (not diffusers output objects) and do not switch off
autograd: wrap inference in ``torch.no_grad()``.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch

from starflow_core.official.keys import vae_key_to_diffusers
from starflow_core.validation import read_vae_config

from .checkpoint import read_official_state_dict, read_safetensors_mapped

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def sanitize(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official fine-tuned / deprecated diffusers names -> current diffusers names; attention
    projections stored as 1x1 convs -> linear. Layouts stay torch (OIHW)."""
    sanitized = {}
    for key, value in weights.items():
        new_key = vae_key_to_diffusers(key)
        if ".attentions." in new_key and value.ndim == 4:
            value = value.reshape(value.shape[0], value.shape[1])
        sanitized[new_key] = value
    return sanitized


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Memory-mapped: tensors are read as from_pretrained copies them out one by one."""
    if path.suffix == ".safetensors":
        return read_safetensors_mapped(path)  # checks the header: clear errors for damaged files
    if path.suffix in (".bin", ".pth", ".pt"):
        return read_official_state_dict(path)  # weights_only; a file carrying code is refused by name
    raise ValueError(f"{path}: unsupported weights file type {path.suffix!r} (.safetensors, .bin, .pth, .pt)")


def check_weights_match(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Raise ValueError listing missing / unexpected keys and wrong shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not match the config; missing keys {missing}, unexpected keys {unexpected}"
        )
    wrong_shapes = [
        f"{key}: expected {tuple(expected[key].shape)}, got {tuple(value.shape)}"
        for key, value in weights.items()
        if value.shape != expected[key].shape
    ]
    if wrong_shapes:
        raise ValueError(f"{source}: weight shapes do not match the config: {wrong_shapes}")


class AutoencoderKL(diffusers.AutoencoderKL):
    """SD-VAE. ``encode``: images (B, C, H, W) in [-1, 1] -> scaled latents (B, latent_channels, H/f, W/f);
    ``decode``: scaled latents -> images (B, C, H, W), nominally in [-1, 1] (not clipped)."""

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, weights_file: str | Path | None = None, dtype: torch.dtype = torch.float32
    ) -> AutoencoderKL:
        """Load a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

        ``weights_file`` replaces the folder's weights, e.g. the official STARFlow VAE with the
        decoder fine-tuned on noisy latents (``pytorch_model.bin``, official key naming).
        """
        folder = Path(folder)
        config_path = folder / CONFIG_NAME
        read_vae_config(config_path)  # every field of the right type, or a message naming the file
        weights_path = Path(weights_file) if weights_file is not None else folder / WEIGHTS_NAME
        if not weights_path.is_file():
            raise FileNotFoundError(f"VAE weights not found: {weights_path}")
        from .checkpoint import build_empty, stream_into

        model = build_empty(lambda: cls.from_config(cls.load_config(folder)))  # no memory yet
        weights = sanitize(read_weights(weights_path))  # memory-mapped views
        check_weights_match(model, weights, str(weights_path))
        order = sorted(weights, key=lambda key: weights[key].nbytes, reverse=True)  # largest first
        stream_into(model, ((key, weights.pop(key)) for key in order), dtype)  # one at a time
        return model.eval()

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be 4D (B, C, H, W) NCHW, got shape {tuple(images.shape)}")
        if images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"images must have {self.config.in_channels} channels in axis 1 (NCHW), "
                f"got shape {tuple(images.shape)}"
            )
        factor = self.downsample_factor
        if images.shape[2] % factor or images.shape[3] % factor:
            raise ValueError(
                f"image height and width must be divisible by {factor}, "
                f"got {images.shape[2]}x{images.shape[3]}"
            )

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 4 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"latents must be 4D (B, {self.config.latent_channels}, h, w) NCHW, "
                f"got shape {tuple(latents.shape)}"
            )

    def encode(
        self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, C, H, W) images in [-1, 1] -> (B, latent_channels, H/f, W/f) latents times scaling_factor.

        ``sample=False`` returns the posterior mean; ``sample=True`` draws from the posterior.
        """
        self._check_images(images)
        posterior = super().encode(images.to(self.dtype)).latent_dist
        latents = posterior.sample(generator=generator) if sample else posterior.mean
        return latents * self.config.scaling_factor

    def decode(self, latents: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
        """(B, latent_channels, h, w) scaled latents -> (B, C, h*f, w*f) images, ``batch_size`` at a time."""
        self._check_latents(latents)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        images = [
            super(AutoencoderKL, self).decode(chunk.to(self.dtype) / self.config.scaling_factor).sample
            for chunk in latents.split(batch_size)
        ]
        return torch.cat(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean."""
        return self.decode(self.encode(images))
