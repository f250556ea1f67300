"""The Wan2.2 VAE's configuration, shared by both twins: diffusers' ``AutoencoderKLWan`` arguments
(the names of ``Wan-AI/Wan2.2-TI2V-5B-Diffusers``'s ``vae/config.json``), read from that file or
from the original constructor arguments (``WanVAE_(dim=, dec_dim=, ...)``) of the official code.

The video layout it describes: 3 colour channels, ``patch_size`` 2 (2x2 pixels -> 12 channels
before the encoder), ``len(dim_mult) - 1`` spatial halvings and one temporal halving per true
entry of ``temperal_downsample`` (the upstream spelling, kept so config files load as they are):
16x spatial and 4x temporal for Wan2.2, so ``4k + 1`` frames -> ``k + 1`` latent frames.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Wan2.2's latent statistics, as the official misc/wan_vae2.py and the diffusers config hold them.
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip

# diffusers config.json keys that do not change the computation here.
_IGNORED_DIFFUSERS_KEYS = frozenset(
    {"_class_name", "_diffusers_version", "_name_or_path", "scale_factor_temporal", "scale_factor_spatial"}
)
# Original constructor argument -> our (diffusers) field.
_ORIGINAL_ARGUMENTS = {
    "dim": "base_dim",
    "dec_dim": "decoder_base_dim",
    "z_dim": "z_dim",
    "dim_mult": "dim_mult",
    "num_res_blocks": "num_res_blocks",
    "attn_scales": "attn_scales",
    "temperal_downsample": "temperal_downsample",
    "dropout": "dropout",
}


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """Wan2.2's VAE (``is_residual``, patch size 2); defaults are the released 5B model's VAE."""

    base_dim: int = 160
    decoder_base_dim: int = 256
    z_dim: int = 48
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = WAN22_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN22_LATENTS_STD
    is_residual: bool = True
    in_channels: int = 12
    out_channels: int = 12
    patch_size: int = 2
    # Clip the decoded video to [-1, 1]: the released config.json says false, and the official
    # code never clips (diffusers 0.42 has no such key and always clamps).
    clip_output: bool = False

    def __post_init__(self) -> None:
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "temperal_downsample", tuple(bool(v) for v in self.temperal_downsample))
        for name in ("base_dim", "decoder_base_dim", "z_dim", "num_res_blocks", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"WanVAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.is_residual:
            raise ValueError(
                "WanVAEConfig.is_residual must be true: this is the Wan2.2 VAE (Wan2.1's is not supported)"
            )
        if self.attn_scales:
            raise ValueError(f"WanVAEConfig.attn_scales must be empty (as in Wan2.2), got {self.attn_scales}")
        if len(self.dim_mult) < 2 or len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"WanVAEConfig.temperal_downsample needs one entry per down block but the last "
                f"(len(dim_mult) - 1 = {len(self.dim_mult) - 1}), got {self.temperal_downsample}"
            )
        pixels = 3 * self.patch_size**2
        if self.in_channels != pixels or self.out_channels != pixels:
            raise ValueError(
                f"WanVAEConfig.in_channels and out_channels must be 3 * patch_size**2 = {pixels} "
                f"(RGB video), got {self.in_channels} and {self.out_channels}"
            )
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise ValueError(
                    f"WanVAEConfig.{name} must have z_dim = {self.z_dim} entries, got {len(getattr(self, name))}"
                )
        if min(self.latents_std) <= 0:
            raise ValueError("WanVAEConfig.latents_std must be positive")

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent side: patch_size x 2 per down block but the last (16 for Wan2.2)."""
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first (4 for Wan2.2)."""
        return 2 ** sum(self.temperal_downsample)

    def latent_frames(self, frames: int) -> int:
        """Latent frames for ``frames`` video frames (which must be temporal_factor * k + 1)."""
        if frames < 1 or (frames - 1) % self.temporal_factor:
            raise ValueError(
                f"a Wan VAE video needs {self.temporal_factor}k + 1 frames (1, {1 + self.temporal_factor}, "
                f"{1 + 2 * self.temporal_factor}, ...), got {frames}"
            )
        return 1 + (frames - 1) // self.temporal_factor

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers ``AutoencoderKLWan`` config dict (lists, as its config.json stores them),
        less ``clip_output``, which the installed diffusers does not take."""
        config = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "clip_output"
        }
        config = {key: list(value) if isinstance(value, tuple) else value for key, value in config.items()}
        spatial = 2 ** (len(self.dim_mult) - 1)
        return {
            **config,
            "scale_factor_spatial": spatial * self.patch_size,
            "scale_factor_temporal": self.temporal_factor,
        }

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], source: str = "config") -> WanVAEConfig:
        """From a diffusers ``vae/config.json`` dict; unknown keys are an error."""
        config = dict(config)
        class_name = config.get("_class_name", "AutoencoderKLWan")
        if class_name != "AutoencoderKLWan":
            raise ValueError(f"{source}: _class_name is {class_name!r}, expected 'AutoencoderKLWan'")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known - _IGNORED_DIFFUSERS_KEYS)
        if unknown:
            raise ValueError(f"{source}: unknown AutoencoderKLWan config keys {unknown}")
        if config.get("patch_size") is None:
            raise ValueError(f"{source}: patch_size is missing: not a Wan2.2 VAE config")
        try:
            return cls(**{key: value for key, value in config.items() if key in known})
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_official(cls, config: Mapping[str, Any], source: str = "config") -> WanVAEConfig:
        """From ``{"constructor": {dim, dec_dim, z_dim, ...}, "latents_mean", "latents_std",
        "patch_size"}`` (the original ``WanVAE_`` arguments, as the wan22_vae_tiny test vectors'
        config.json). Arguments left out take the values the official loader (``video_vae2``)
        gives them; latents_mean / latents_std left out are Wan2.2's (the official constants)."""
        config = dict(config)
        family = config.pop("family", "wan2.2-vae")
        if family != "wan2.2-vae":
            raise ValueError(f"{source}: family is {family!r}, expected 'wan2.2-vae'")
        arguments = dict(config.pop("constructor", {}))
        arguments.pop("device", None)  # where the original puts its constants; no computation
        unknown = sorted(set(arguments) - set(_ORIGINAL_ARGUMENTS))
        if unknown:
            raise ValueError(f"{source}: unknown Wan VAE constructor arguments {unknown}")
        fields = {_ORIGINAL_ARGUMENTS[key]: value for key, value in arguments.items()}
        for key in ("latents_mean", "latents_std", "patch_size"):
            if key in config:
                fields[key] = config.pop(key)
        if config:
            raise ValueError(f"{source}: unknown Wan VAE config keys {sorted(config)}")
        patch = fields.get("patch_size", cls.patch_size)
        fields.setdefault("in_channels", 3 * patch**2)
        fields.setdefault("out_channels", 3 * patch**2)
        try:
            return cls(**fields)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None


def resolve_wan_vae_config(config: Mapping[str, Any] | str | Path | WanVAEConfig) -> WanVAEConfig:
    """A WanVAEConfig, or the original constructor arguments as a dict or a JSON file's path."""
    if isinstance(config, WanVAEConfig):
        return config
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"Wan VAE config not found: {path}")
        return WanVAEConfig.from_official(json.loads(path.read_text()), source=str(path))
    return WanVAEConfig.from_official(config)


def split_temporal_scale(vae_name: str) -> tuple[str, float]:
    """The official VAE name ``<repository>[:<temporal scale>]`` -> (repository, scale), as the
    official VAE wrapper reads it: ``Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6`` -> (..., 0.6); 1.0 without."""
    name, _, suffix = vae_name.partition(":")
    if not suffix:
        return name, 1.0
    try:
        return name, check_temporal_scale(float(suffix))
    except ValueError:
        raise ValueError(
            f"VAE name {vae_name!r}: the part after ':' must be a positive number (e.g. ':0.6')"
        ) from None


def check_temporal_scale(scale: float) -> float:
    if not scale > 0:
        raise ValueError(f"temporal_scale must be positive (the official suffix, e.g. 0.6), got {scale!r}")
    return float(scale)


def check_chunk_frames(chunk_frames: int) -> int:
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(
            f"chunk_frames must be a positive integer (latent frames per chunk), got {chunk_frames!r}"
        )
    return chunk_frames
