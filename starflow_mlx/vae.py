"""SD-VAE (the diffusers ``AutoencoderKL`` architecture) written natively in MLX.

Arrays are NHWC: images (B, H, W, 3) in [-1, 1], latents (B, H/8, W/8, 4) for SD-VAE.
Attribute paths are the diffusers parameter names, so a diffusers folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``) loads as it is; every key
rename and the conv layout change live in ``sanitize``.

Latent convention (as the official STARFlow code): ``latents = posterior * scaling_factor``.
``shift_factor``, ``latents_mean`` and ``latents_std`` of a diffusers config are read and
not applied, like the official VAE wrapper does for ``AutoencoderKL``.

Numerics: group norm statistics and the mid-block attention softmax run in float32 whatever
the weight dtype, so float16 / bfloat16 models do not overflow there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from starflow_core.official.keys import vae_key_to_diffusers
from starflow_core.validation import read_vae_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

# diffusers config keys we read and deliberately do not use (see module docstring).
_IGNORED_CONFIG_KEYS = frozenset(
    {
        "_class_name",
        "_diffusers_version",
        "_name_or_path",
        "sample_size",
        "force_upcast",
        "shift_factor",
        "latents_mean",
        "latents_std",
    }
)


@dataclass(frozen=True)
class AutoencoderKLConfig:
    """The hyperparameters of a diffusers ``AutoencoderKL`` that change the computation."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"AutoencoderKLConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.block_out_channels:
            raise ValueError("AutoencoderKLConfig.block_out_channels must not be empty")
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise ValueError(
                    f"AutoencoderKLConfig.block_out_channels {self.block_out_channels} must be divisible "
                    f"by norm_num_groups={self.norm_num_groups}"
                )
        if self.scaling_factor <= 0:
            raise ValueError(f"AutoencoderKLConfig.scaling_factor must be > 0, got {self.scaling_factor}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, config: dict, source: str = "config") -> AutoencoderKLConfig:
        """Build from a diffusers ``config.json`` dict; unknown keys are an error."""
        config = dict(config)
        class_name = config.get("_class_name", "AutoencoderKL")
        if class_name != "AutoencoderKL":
            raise ValueError(f"{source}: _class_name is {class_name!r}, expected 'AutoencoderKL'")
        num_blocks = len(config.get("block_out_channels", cls.block_out_channels))
        for key, expected in (
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ):
            block_types = list(config.pop(key, [expected] * num_blocks))
            if block_types != [expected] * num_blocks:
                raise ValueError(f"{source}: {key} must be {num_blocks} x {expected!r}, got {block_types}")
        act_fn = config.pop("act_fn", "silu")
        if act_fn != "silu":
            raise ValueError(f"{source}: act_fn {act_fn!r} is not supported (only 'silu')")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known - _IGNORED_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"{source}: unknown AutoencoderKL config keys {unknown}")
        return cls(**{key: value for key, value in config.items() if key in known})


class GroupNorm(nn.Module):
    """torch.nn.GroupNorm on NHWC input, statistics and affine in float32."""

    def __init__(self, num_groups: int, channels: int, eps: float = 1e-6):
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.weight = mx.ones((channels,))
        self.bias = mx.zeros((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        batch, height, width, channels = x.shape
        # torch groups consecutive channels: group g holds channels [g*C/G, (g+1)*C/G).
        grouped = x.astype(mx.float32).reshape(batch, height * width, self.num_groups, -1)  # (B, HW, G, C/G)
        mean = grouped.mean(axis=(1, 3), keepdims=True)
        var = grouped.var(axis=(1, 3), keepdims=True)
        normed = ((grouped - mean) * mx.rsqrt(var + self.eps)).reshape(batch, height, width, channels)
        out = normed * self.weight.astype(mx.float32) + self.bias.astype(mx.float32)
        return out.astype(x.dtype)


# MLX's CPU convolution unfolds its input (kernel^2 copies of every pixel's channels) before one
# GEMM: 0.7 GB for one 256 -> 128 channel 3x3 conv at 256x256, 2.2 GB for a whole SD-VAE decode.
# Bands of output rows, each with the input rows it reads, bound that scratch to this many bytes;
# every output pixel is the same dot product over the same inputs as in one call.
CONV_SCRATCH_BYTES = 64 * 2**20


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters) that convolves large stride-1 inputs in bands of rows.

    Evaluates as it goes: for inference (decode / encode), not inside mx.compile or a gradient."""

    def __call__(self, x: mx.array) -> mx.array:
        batch, height, width, channels = x.shape
        kernel, pad = self.weight.shape[1], self.padding[0]
        band = CONV_SCRATCH_BYTES // max(1, batch * width * channels * kernel * kernel * x.itemsize)
        if kernel == 1 or self.stride != (1, 1) or band >= height or band < 1:
            return super().__call__(x)
        padded = mx.pad(x, [(0, 0), (pad, pad), (0, 0), (0, 0)])  # columns are padded by conv2d
        bands = []
        for first in range(0, height, band):
            rows = padded[:, first : min(first + band, height) + kernel - 1]
            bands.append(mx.conv2d(rows, self.weight, padding=(0, self.padding[1])))
            mx.eval(bands[-1])  # one band's scratch at a time (lazily, MLX would schedule all at once)
        out = mx.concatenate(bands, axis=1)
        return out + self.bias if "bias" in self else out


class ResnetBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_groups: int):
        super().__init__()
        self.norm1 = GroupNorm(num_groups, in_channels)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = GroupNorm(num_groups, out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv1(nn.silu(self.norm1(x)))
        h = self.conv2(nn.silu(self.norm2(h)))
        if "conv_shortcut" in self:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nn.Module):
    """Single-head self-attention over all pixels, with residual (the VAE mid block)."""

    def __init__(self, channels: int, num_groups: int):
        super().__init__()
        self.group_norm = GroupNorm(num_groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = [nn.Linear(channels, channels)]

    def __call__(self, x: mx.array) -> mx.array:
        batch, height, width, channels = x.shape
        h = self.group_norm(x).reshape(batch, height * width, channels)  # (B, HW, C)
        query = self.to_q(h).astype(mx.float32)
        key = self.to_k(h).astype(mx.float32)
        value = self.to_v(h).astype(mx.float32)
        scores = (query * channels**-0.5) @ key.swapaxes(1, 2)  # (B, HW, HW), float32
        attended = (mx.softmax(scores, axis=-1) @ value).astype(x.dtype)  # (B, HW, C)
        out = self.to_out[0](attended).reshape(batch, height, width, channels)
        return x + out


class Downsample2D(nn.Module):
    """Pad bottom/right by one, then a stride-2 3x3 conv (diffusers ``padding=0`` variant)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)]))


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, kernel_size=3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        batch, height, width, channels = x.shape
        x = mx.broadcast_to(x[:, :, None, :, None, :], (batch, height, 2, width, 2, channels))
        return self.conv(x.reshape(batch, 2 * height, 2 * width, channels))


class UNetMidBlock2D(nn.Module):
    def __init__(self, channels: int, num_groups: int, add_attention: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(channels, channels, num_groups) for _ in range(2)]
        self.attentions = [Attention(channels, num_groups)] if add_attention else []

    def __call__(self, x: mx.array) -> mx.array:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int, num_groups: int, downsample: bool
    ):
        super().__init__()
        self.resnets = [
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, num_groups)
            for i in range(num_layers)
        ]
        self.downsamplers = [Downsample2D(out_channels)] if downsample else []

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.resnets + self.downsamplers:
            x = layer(x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, num_groups: int, upsample: bool):
        super().__init__()
        self.resnets = [
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, num_groups)
            for i in range(num_layers)
        ]
        self.upsamplers = [Upsample2D(out_channels)] if upsample else []

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.resnets + self.upsamplers:
            x = layer(x)
        return x


class Encoder(nn.Module):
    """(B, H, W, in_channels) -> (B, H/f, W/f, 2 * latent_channels): posterior mean and log-variance."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        channels = config.block_out_channels
        groups = config.norm_num_groups
        self.conv_in = Conv2d(config.in_channels, channels[0], kernel_size=3, padding=1)
        self.down_blocks = [
            DownEncoderBlock2D(
                channels[max(i - 1, 0)], channels[i], config.layers_per_block, groups, i < len(channels) - 1
            )
            for i in range(len(channels))
        ]
        self.mid_block = UNetMidBlock2D(channels[-1], groups, config.mid_block_add_attention)
        self.conv_norm_out = GroupNorm(groups, channels[-1])
        self.conv_out = Conv2d(channels[-1], 2 * config.latent_channels, kernel_size=3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """(B, h, w, latent_channels) unscaled latents -> (B, h*f, w*f, out_channels)."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        channels = tuple(reversed(config.block_out_channels))
        groups = config.norm_num_groups
        self.conv_in = Conv2d(config.latent_channels, channels[0], kernel_size=3, padding=1)
        self.mid_block = UNetMidBlock2D(channels[0], groups, config.mid_block_add_attention)
        self.up_blocks = [
            UpDecoderBlock2D(
                channels[max(i - 1, 0)],
                channels[i],
                config.layers_per_block + 1,
                groups,
                i < len(channels) - 1,
            )
            for i in range(len(channels))
        ]
        self.conv_norm_out = GroupNorm(groups, channels[-1])
        self.conv_out = Conv2d(channels[-1], config.out_channels, kernel_size=3, padding=1)

    def __call__(self, z: mx.array) -> mx.array:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """diffusers (or official STARFlow fine-tuned) VAE weights -> this module's names and layouts.

    Every change in one place:
    - official fine-tuned prefixes ``encoder.0/encoder.1/decoder.0/decoder.1`` ->
      ``encoder/quant_conv/post_quant_conv/decoder`` (``starflow_core.official.keys.OFFICIAL_VAE_PREFIXES``);
    - deprecated attention names ``query/key/value/proj_attn`` -> ``to_q/to_k/to_v/to_out.0``;
    - attention projections stored as 1x1 convs (C, C, 1, 1) -> linear (C, C);
    - conv weights torch OIHW -> MLX OHWI: ``transpose(0, 2, 3, 1)``.
    """
    sanitized = {}
    for key, value in weights.items():
        new_key = vae_key_to_diffusers(key)
        if ".attentions." in new_key and value.ndim == 4:
            value = value.reshape(value.shape[0], value.shape[1])
        elif value.ndim == 4:
            value = value.transpose(0, 2, 3, 1)
        sanitized[new_key] = value
    return sanitized


def check_weights_match(model: nn.Module, weights: dict[str, mx.array], source: str) -> None:
    """Raise ValueError listing missing / unexpected keys and wrong shapes."""
    expected = dict(tree_flatten(model.parameters()))
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


def read_weights(path: Path) -> dict[str, mx.array]:
    """A safetensors file, or a torch zip checkpoint (``.bin``/``.pth``/``.pt``, e.g. the official
    fine-tuned VAE) read without torch and without running pickled code."""
    if path.suffix == ".safetensors":
        return mx.load(str(path))
    if path.suffix in (".bin", ".pth", ".pt"):
        from starflow_core.official.pth_reader import read_pth_state_dict

        return {key: mx.array(value) for key, value in read_pth_state_dict(path, dtype="float32").items()}
    raise ValueError(f"{path}: unsupported weights file type {path.suffix!r} (.safetensors, .bin, .pth, .pt)")


class AutoencoderKL(nn.Module):
    """SD-VAE. ``encode``: images (B, H, W, C) in [-1, 1] -> scaled latents (B, H/f, W/f, latent_channels);
    ``decode``: scaled latents -> images (B, H, W, C), nominally in [-1, 1] (not clipped, like diffusers)."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, kernel_size=1)
        if config.use_post_quant_conv:
            self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, kernel_size=1)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, weights_file: str | Path | None = None, dtype: mx.Dtype = mx.float32
    ) -> AutoencoderKL:
        """Load a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

        ``weights_file`` replaces the folder's weights, e.g. the official STARFlow VAE with the
        decoder fine-tuned on noisy latents (``pytorch_model.bin``, official key naming), or
        any safetensors file in diffusers or official naming.
        """
        folder = Path(folder)
        config_path = folder / CONFIG_NAME
        config = AutoencoderKLConfig.from_diffusers(read_vae_config(config_path), source=str(config_path))
        weights_path = Path(weights_file) if weights_file is not None else folder / WEIGHTS_NAME
        if not weights_path.is_file():
            raise FileNotFoundError(f"VAE weights not found: {weights_path}")
        from .checkpoint import stream_into

        model = cls(config)  # lazy: never materialised, every parameter is replaced below
        weights = sanitize(read_weights(weights_path))  # lazy for safetensors: nothing read yet
        check_weights_match(model, weights, str(weights_path))
        # tensor by tensor into dtype: popped, so the file's copy of each is freed once converted
        order = sorted(weights, key=lambda key: weights[key].nbytes, reverse=True)  # largest first
        stream_into(model, ((key, weights.pop(key)) for key in order), dtype)
        return model

    @property
    def dtype(self) -> mx.Dtype:
        return self.encoder.conv_in.weight.dtype

    def _check_images(self, images: mx.array) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be 4D (B, H, W, C) NHWC, got shape {tuple(images.shape)}")
        if images.shape[-1] != self.config.in_channels:
            raise ValueError(
                f"images must have {self.config.in_channels} channels in the last axis (NHWC), "
                f"got shape {tuple(images.shape)}"
            )
        factor = self.config.downsample_factor
        if images.shape[1] % factor or images.shape[2] % factor:
            raise ValueError(
                f"image height and width must be divisible by {factor}, "
                f"got {images.shape[1]}x{images.shape[2]}"
            )

    def _check_latents(self, latents: mx.array) -> None:
        if latents.ndim != 4 or latents.shape[-1] != self.config.latent_channels:
            raise ValueError(
                f"latents must be 4D (B, h, w, {self.config.latent_channels}) NHWC, "
                f"got shape {tuple(latents.shape)}"
            )

    def encode(self, images: mx.array, sample: bool = False, key: mx.array | None = None) -> mx.array:
        """(B, H, W, C) images in [-1, 1] -> (B, H/f, W/f, latent_channels) latents times scaling_factor.

        ``sample=False`` returns the posterior mean; ``sample=True`` draws from the posterior
        (mean + std * noise, noise from ``key`` or MLX's global generator).
        """
        self._check_images(images)
        moments = self.encoder(images.astype(self.dtype))  # (B, h, w, 2 * latent_channels)
        if "quant_conv" in self:
            moments = self.quant_conv(moments)
        mean, log_variance = mx.split(moments, 2, axis=-1)
        latents = mean
        if sample:
            std = mx.exp(0.5 * mx.clip(log_variance, -30.0, 20.0))
            latents = mean + std * mx.random.normal(mean.shape, dtype=mean.dtype, key=key)
        return latents * self.config.scaling_factor

    def decode(self, latents: mx.array, batch_size: int = 4) -> mx.array:
        """(B, h, w, latent_channels) scaled latents -> (B, h*f, w*f, C) images.

        Decodes ``batch_size`` latents at a time and evaluates each slice, so peak memory
        is that of one slice.
        """
        self._check_latents(latents)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        images = []
        for start in range(0, latents.shape[0], batch_size):
            z = latents[start : start + batch_size].astype(self.dtype) / self.config.scaling_factor
            if "post_quant_conv" in self:
                z = self.post_quant_conv(z)
            decoded = self.decoder(z)
            mx.eval(decoded)
            images.append(decoded)
        return mx.concatenate(images, axis=0)
