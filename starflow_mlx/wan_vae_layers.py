"""The Wan2.2 VAE's layers in MLX, channels-last: videos and features are (B, T, H, W, C).

Attribute paths are diffusers' ``AutoencoderKLWan`` names (``resnets.0.conv1.weight``), so a
diffusers folder loads by a layout change alone; the original naming is renamed by the table in
starflow_core.official.wan_vae_keys.

Time is causal: a layer's output frame t reads input frames <= t. A video is evaluated chunk of
frames by chunk of frames, the first frame alone, as the Wan code does; what a layer needs from
earlier chunks (the last two input frames of a 3-tap convolution, whether the video's first
frame has been seen) is kept in a ``CausalCache`` that the caller passes in. The arithmetic is
the Wan code's, so a chunked evaluation gives the numbers of a whole-video one.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

CACHE_FRAMES = 2  # a 3-tap causal convolution reads the two frames before its chunk

# MLX's CPU convolution unfolds its input (kernel-volume copies of every pixel's channels) before
# one GEMM: 5.5 GB for one 512-channel 3x3x3 frame at 240x416 (a 480p video's last level).
# Output frames one at a time, in bands of rows each with the input rows it reads, bound that
# scratch to this many bytes; every output pixel is the same dot product over the same inputs.
CONV_SCRATCH_BYTES = 64 * 2**20


class CausalCache:
    """What every causal layer keeps from the chunks it has seen, keyed by the layer.

    A fresh cache is the start of a video; one cache serves one encode or one decode."""

    def __init__(self) -> None:
        self._states: dict[int, Any] = {}

    def read(self, layer: nn.Module) -> Any:
        return self._states.get(id(layer))

    def write(self, layer: nn.Module, state: Any) -> None:
        self._states[id(layer)] = state

    def past_frames(self, layer: nn.Module, x: mx.array) -> mx.array | None:
        """The frames before ``x`` that ``layer`` reads (None at the video's start); remembers
        the last CACHE_FRAMES frames of everything seen for the next chunk."""
        past = self.read(layer)
        seen = x if past is None else mx.concatenate([past, x], axis=1)
        self.write(layer, mx.contiguous(seen[:, -CACHE_FRAMES:]))  # a copy: the chunk's buffer can go
        return past

    def arrays(self) -> list[mx.array]:
        """The cached frames, to evaluate with a chunk's output (so the chunk's graph is freed)."""
        return [state for state in self._states.values() if isinstance(state, mx.array)]


def conv3d(x: mx.array, weight: mx.array, stride: tuple[int, int, int], padding: tuple[int, int]) -> mx.array:
    """mx.conv3d on (B, T, H, W, C) with ``padding`` (rows, columns) zeros; no temporal padding.

    Large inputs go one output frame at a time in bands of rows (see CONV_SCRATCH_BYTES),
    evaluated as they go: for inference, not inside mx.compile or a gradient."""
    batch, frames, height, width, channels = x.shape
    taps, rows, cols = weight.shape[1:4]
    (frame_stride, row_stride, col_stride), (row_pad, col_pad) = stride, padding
    out_frames = (frames - taps) // frame_stride + 1
    out_rows = (height + 2 * row_pad - rows) // row_stride + 1
    out_cols = (width + 2 * col_pad - cols) // col_stride + 1
    row_bytes = batch * out_cols * taps * rows * cols * channels * x.itemsize  # unfolded, one output row
    if row_bytes * out_rows * out_frames <= CONV_SCRATCH_BYTES:
        return mx.conv3d(x, weight, stride=stride, padding=(0, row_pad, col_pad))
    band = max(1, CONV_SCRATCH_BYTES // row_bytes)
    x = mx.pad(x, [(0, 0), (0, 0), (row_pad, row_pad), (0, 0), (0, 0)])  # columns: by conv3d
    out = []
    for frame in range(out_frames):
        clip = x[:, frame * frame_stride : frame * frame_stride + taps]  # (B, taps, H', W, C)
        bands = []
        for first in range(0, out_rows, band):
            last = min(first + band, out_rows)
            rows_in = clip[:, :, first * row_stride : (last - 1) * row_stride + rows]
            bands.append(
                mx.conv3d(rows_in, weight, stride=(1, row_stride, col_stride), padding=(0, 0, col_pad))
            )
            mx.eval(bands[-1])  # one band's scratch at a time
        out.append(mx.concatenate(bands, axis=2))
    return mx.concatenate(out, axis=1)


def _triple(value: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (value, value, value) if isinstance(value, int) else tuple(value)


class CausalConv3d(nn.Module):
    """A 3-D convolution whose temporal padding is all in front (2 x padding[0] frames): the
    frames before the chunk when given (``past``), zeros for what is missing."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        taps, rows, cols = _triple(kernel_size)
        self.stride = _triple(stride)
        time_pad, row_pad, col_pad = _triple(padding)
        self.front_frames = 2 * time_pad
        self.spatial_padding = (row_pad, col_pad)
        self.weight = mx.zeros((out_channels, taps, rows, cols, in_channels))
        self.bias = mx.zeros((out_channels,))

    def __call__(self, x: mx.array, past: mx.array | None = None) -> mx.array:
        if self.front_frames:
            known = 0 if past is None else past.shape[1]
            zeros = mx.zeros((x.shape[0], self.front_frames - known, *x.shape[2:]), dtype=x.dtype)
            x = mx.concatenate([zeros] + ([past] if past is not None else []) + [x], axis=1)
        return conv3d(x, self.weight, self.stride, self.spatial_padding) + self.bias


class Conv2d(nn.Module):
    """A 2-D convolution applied to every frame (torch's nn.Conv2d on (B*T, C, H, W))."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0
    ):
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.weight = mx.zeros((out_channels, kernel_size, kernel_size, in_channels))
        self.bias = mx.zeros((out_channels,))

    def __call__(self, x: mx.array) -> mx.array:
        stride, pad = (1, self.stride, self.stride), (self.padding, self.padding)
        return conv3d(x, self.weight[:, None], stride, pad) + self.bias


class RMSNorm(nn.Module):
    """x / ||x|| over channels, times sqrt(C) and gamma (torch F.normalize, eps 1e-12), in float32."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = mx.ones((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        x32 = x.astype(mx.float32)
        norm = mx.maximum(mx.sqrt(mx.sum(x32 * x32, axis=-1, keepdims=True)), 1e-12)
        scale = x.shape[-1] ** 0.5 * self.gamma.astype(mx.float32)
        return (x32 / norm * scale).astype(x.dtype)


class AttentionBlock(nn.Module):
    """Single-head self-attention over each frame's pixels, with residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = RMSNorm(channels)
        self.to_qkv = Conv2d(channels, 3 * channels, 1)
        self.proj = Conv2d(channels, channels, 1)

    def __call__(self, x: mx.array) -> mx.array:
        batch, frames, height, width, channels = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(batch * frames, 1, height * width, 3 * channels)
        query, key, value = (part.astype(mx.float32) for part in mx.split(qkv, 3, axis=-1))  # (BT, 1, HW, C)
        attended = mx.fast.scaled_dot_product_attention(query, key, value, scale=channels**-0.5)
        attended = attended.astype(x.dtype).reshape(batch, frames, height, width, channels)
        return x + self.proj(attended)


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = RMSNorm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = RMSNorm(out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1)

    def __call__(self, x: mx.array, cache: CausalCache) -> mx.array:
        shortcut = self.conv_shortcut(x) if "conv_shortcut" in self else x
        h = nn.silu(self.norm1(x))
        h = self.conv1(h, cache.past_frames(self.conv1, h))
        h = nn.silu(self.norm2(h))
        h = self.conv2(h, cache.past_frames(self.conv2, h))
        return h + shortcut


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.resnets = [ResidualBlock(channels, channels), ResidualBlock(channels, channels)]
        self.attentions = [AttentionBlock(channels)]

    def __call__(self, x: mx.array, cache: CausalCache) -> mx.array:
        x = self.resnets[0](x, cache)
        return self.resnets[1](self.attentions[0](x), cache)


class Resample(nn.Module):
    """2x spatial down- or upsampling of every frame; the 3d modes also halve / double time.

    ``downsample3d``: the video's first frame passes; later output frames are a stride-2 3-tap
    convolution over (previous frame, two new frames). ``upsample3d``: the first frame passes;
    every later frame becomes two (a causal 3-tap convolution to 2C channels, split in time)."""

    def __init__(self, channels: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = [nn.Identity(), Conv2d(channels, channels, 3, padding=1)]  # [nearest 2x, conv]
        else:
            self.resample = [
                nn.Identity(),
                Conv2d(channels, channels, 3, stride=2),
            ]  # [pad right/bottom, conv]
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(channels, 2 * channels, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1))

    def __call__(self, x: mx.array, cache: CausalCache) -> mx.array:
        if self.mode == "upsample3d":
            x = self._double_frames(x, cache)
        if self.mode.startswith("upsample"):
            batch, frames, height, width, channels = x.shape
            x = mx.broadcast_to(x[:, :, :, None, :, None], (batch, frames, height, 2, width, 2, channels))
            x = self.resample[1](x.reshape(batch, frames, 2 * height, 2 * width, channels))
        else:
            x = self.resample[1](mx.pad(x, [(0, 0), (0, 0), (0, 1), (0, 1), (0, 0)]))
        if self.mode == "downsample3d":
            x = self._halve_frames(x, cache)
        return x

    def _double_frames(self, x: mx.array, cache: CausalCache) -> mx.array:
        if cache.read(self) is None:  # the first chunk (the first frame) passes as it is
            cache.write(self, True)
            cache.write(self.time_conv, mx.zeros((x.shape[0], CACHE_FRAMES, *x.shape[2:]), dtype=x.dtype))
            return x
        batch, frames, height, width, channels = x.shape
        x = self.time_conv(x, cache.past_frames(self.time_conv, x))  # (B, T, H, W, 2C)
        x = x.reshape(batch, frames, height, width, 2, channels).transpose(0, 1, 4, 2, 3, 5)
        return x.reshape(batch, 2 * frames, height, width, channels)  # frame t -> 2t, 2t + 1

    def _halve_frames(self, x: mx.array, cache: CausalCache) -> mx.array:
        previous = cache.read(self)
        cache.write(self, mx.contiguous(x[:, -1:]))
        if previous is None:  # the first chunk (the first frame) passes as it is
            return x
        return self.time_conv(mx.concatenate([previous, x], axis=1))


def _front_pad_frames(x: mx.array, multiple: int) -> mx.array:
    missing = -x.shape[1] % multiple
    return mx.pad(x, [(0, 0), (missing, 0), (0, 0), (0, 0), (0, 0)]) if missing else x


class AvgDown3D(nn.Module):
    """The residual down block's shortcut: space-and-time to channels, then the mean of groups
    of channels (a chunk of odd length gets one zero frame in front)."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int):
        super().__init__()
        self.factor_t, self.factor_s, self.out_channels = factor_t, factor_s, out_channels
        self.group_size = in_channels * factor_t * factor_s**2 // out_channels

    def __call__(self, x: mx.array) -> mx.array:
        x = _front_pad_frames(x, self.factor_t)
        batch, frames, height, width, channels = x.shape
        ft, fs = self.factor_t, self.factor_s
        x = x.reshape(batch, frames // ft, ft, height // fs, fs, width // fs, fs, channels)
        x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # (B, T', H', W', C, ft, fs, fs): torch's channel order
        x = x.reshape(batch, frames // ft, height // fs, width // fs, self.out_channels, self.group_size)
        return x.mean(axis=-1)


class DupUp3D(nn.Module):
    """The residual up block's shortcut: channels to space-and-time, each channel repeated; the
    video's first frame yields one frame (its first factor_t - 1 copies are dropped)."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int):
        super().__init__()
        self.factor_t, self.factor_s, self.out_channels = factor_t, factor_s, out_channels
        self.repeats = out_channels * factor_t * factor_s**2 // in_channels

    def __call__(self, x: mx.array, cache: CausalCache) -> mx.array:
        batch, frames, height, width, _ = x.shape
        ft, fs = self.factor_t, self.factor_s
        x = mx.repeat(x, self.repeats, axis=-1).reshape(
            batch, frames, height, width, self.out_channels, ft, fs, fs
        )
        x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)  # (B, T, ft, H, fs, W, fs, C)
        x = x.reshape(batch, frames * ft, height * fs, width * fs, self.out_channels)
        if cache.read(self) is None:
            cache.write(self, True)
            x = x[:, ft - 1 :]
        return x


class ResidualDownBlock(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, num_res_blocks: int, temporal: bool, spatial: bool
    ):
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_channels, out_channels, 2 if temporal else 1, 2 if spatial else 1)
        self.resnets = [
            ResidualBlock(in_channels if i == 0 else out_channels, out_channels)
            for i in range(num_res_blocks)
        ]
        if spatial:
            self.downsampler = Resample(out_channels, "downsample3d" if temporal else "downsample2d")

    def __call__(self, x: mx.array, cache: CausalCache) -> mx.array:
        shortcut = self.avg_shortcut(x)
        for resnet in self.resnets:
            x = resnet(x, cache)
        if "downsampler" in self:
            x = self.downsampler(x, cache)
        return x + shortcut


class ResidualUpBlock(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, num_res_blocks: int, temporal: bool, spatial: bool
    ):
        super().__init__()
        if spatial:
            self.avg_shortcut = DupUp3D(in_channels, out_channels, 2 if temporal else 1, 2)
        self.resnets = [
            ResidualBlock(in_channels if i == 0 else out_channels, out_channels)
            for i in range(num_res_blocks + 1)
        ]
        if spatial:
            self.upsampler = Resample(out_channels, "upsample3d" if temporal else "upsample2d")

    def __call__(self, x: mx.array, cache: CausalCache) -> mx.array:
        shortcut = self.avg_shortcut(x, cache) if "avg_shortcut" in self else None
        for resnet in self.resnets:
            x = resnet(x, cache)
        if "upsampler" in self:
            x = self.upsampler(x, cache)
        return x if shortcut is None else x + shortcut
