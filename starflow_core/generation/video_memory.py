"""Peak memory of a video run (STARFlow-V), from the configurations alone, and the check before
any download (the video twin of resources.estimate_memory / resource_check.check_memory).

Phases, in pipeline order (T5 is freed before the flow loads; the flow stays through decoding):

    encode text   T5 weights + activations (resources.encode_bytes), prompts and "" in one batch
    load flow     flow weights (exact, by dtype / quantization) + one tensor being converted
    sample        flow + the largest block's KV cache + one Jacobi chunk's activations
    denoise       flow + the learned denoiser's activations over a chunk of frames
    decode        flow + VAE weights + the Wan VAE's streamed decode (one chunk of frames)

The deep block's KV cache dominates long videos:

    2 (keys, values) x layers x rows x (frames_cached x tokens_per_frame + txt_size) x width x bytes

rows = batch x 2 under guidance (the deep block is the conditioned one), frames_cached = the
latent frames (T' = (num_frames - 1) / 4 + 1), or the sliding window beyond the training length,
tokens_per_frame = (H / 16) x (W / 16), width = kv heads x head_dim (4096 in the 7B's deep
block). Frame-local shallow blocks cache one frame per row: 2 x layers x B x T' x
tokens_per_frame x channels x bytes. Activation and decode constants were measured with MLX
on CPU at reduced shapes (tests/test_video_memory.py checks the estimate against a measured
peak); the figures for the 7B are these formulas, not measurements on a Mac.
"""

from __future__ import annotations

import dataclasses
import math

from starflow_core.config import FlowConfig
from starflow_core.frames import query_chunk_rows
from starflow_core.generation.precision import DTYPE_BYTES, Precision
from starflow_core.generation.resources import (
    SAFETY,
    MemoryEstimate,
    T5Shape,
    encode_bytes,
    flow_weight_bytes,
    format_bytes,
    t5_weight_bytes,
)
from starflow_core.official.shapes import expected_weight_shapes
from starflow_core.video.settings import latent_frames, sliding_window

FLAN_T5_XL = T5Shape()  # google/flan-t5-xl, the 7B's text encoder
WAN22_VAE_PARAMETERS = 704_688_668  # Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/ (diffusers 0.42)
WAN22_DECODER_BASE_DIM = 256
# the streamed decode's peak above the weights: bytes per output pixel per decoder_base_dim channel,
# plus a fixed part; fitted above MLX CPU float32 measurements at decoder_base_dim 32 / 64 and
# 128 / 256 px sides (295 / 363 / 306 / 700 MiB measured, 313 / 502 / 376 / 753 MiB estimated)
WAN_DECODE_BYTES_PER_PIXEL_CHANNEL = 120
WAN_DECODE_FIXED_BYTES = 250 * 2**20


@dataclasses.dataclass(frozen=True)
class VideoShape:
    """What one video batch computes."""

    batch: int
    frames: int  # pixel frames
    latent_frames: int
    cached_frames: int  # latent frames in the deep block's cache (the window, or every frame)
    tokens_per_frame: int
    pixels: int  # per frame, H x W
    guided: bool
    chunk: int  # tokens a Jacobi step evaluates at once (4 x block_size after the first frame; 1 sequential)


def make_video_shape(
    config: FlowConfig,
    num_frames: int,
    height: int,
    width: int,
    trained_frames: int,
    *,
    batch: int = 1,
    guided: bool = True,
    jacobi_block_size: int | None = 32,
    spatial: int = 16,
    temporal: int = 4,
) -> VideoShape:
    frames = latent_frames(num_frames, temporal)
    window = sliding_window(config.local_attn_window, latent_frames(trained_frames, temporal), frames)
    tokens = (height // spatial // config.patch_size) * (width // spatial // config.patch_size)
    return VideoShape(
        batch=batch,
        frames=num_frames,
        latent_frames=frames,
        cached_frames=window.frames if window else frames,
        tokens_per_frame=tokens,
        pixels=height * width,
        guided=guided,
        chunk=4 * jacobi_block_size if jacobi_block_size else 1,
    )


def video_kv_cache_bytes(config: FlowConfig, shape: VideoShape, dtype: str) -> int:
    """The largest block's KV cache (see the module docstring)."""
    act, largest = DTYPE_BYTES[dtype], 0
    for i, layers in enumerate(config.layers_per_block):
        width = config.layer_config(i).kv_heads * config.head_dim
        if config.block_is_frame_local(i):
            positions, rows = shape.tokens_per_frame, shape.batch * shape.latent_frames
        else:
            positions = shape.cached_frames * shape.tokens_per_frame
            rows = shape.batch * (2 if shape.guided and config.block_has_text(i) else 1)
        positions += config.txt_size if config.block_has_text(i) else 0
        # every layer's keys and values, and one layer's again (its in-place update copies it)
        largest = max(largest, 2 * (layers + 1) * rows * positions * width * act)
    return largest


def video_step_bytes(config: FlowConfig, shape: VideoShape) -> int:
    """One Jacobi chunk in the deep block: MLP and projections (about ten (rows, chunk, hidden)
    float32 arrays) and the attention scores (rows, heads, chunk, positions) in float32, x3."""
    deep = config.layer_config(config.deep_block)
    rows = shape.batch * (2 if shape.guided else 1)
    positions = shape.cached_frames * shape.tokens_per_frame + config.txt_size
    hidden = deep.channels * deep.expansion
    return rows * shape.chunk * (10 * hidden * 4 + 3 * deep.query_heads * positions * 4)


def video_denoise_bytes(
    config: FlowConfig, shape: VideoShape, dtype: str, score_bytes: int | None = None
) -> int:
    """The learned denoiser on one video's chunk of frames (forward only): its attention mask
    (positions x positions bool), one chunk of query rows' scores in the model's dtype (batch, heads,
    rows, positions; rows from starflow_core.frames.query_chunk_rows under score_bytes, default
    DENOISER_SCORE_BYTES, all positions when they fit) and a quarter more, and about ten
    (positions, hidden) arrays, half in the model's dtype and half in float32 (the norms run in
    float32). Fitted to MLX CPU at reduced shapes (benchmarks/video_memory.py): float32 1.02
    whole / 0.98 chunked of the measured, bfloat16 1.12 / 1.08 (11 latent frames of 12x12)."""
    if not config.learnable_self_denoiser:
        return 0
    positions = shape.cached_frames * shape.tokens_per_frame + config.txt_size
    heads = config.query_heads
    rows = min(positions, query_chunk_rows(shape.batch, heads, positions, score_bytes))
    scores = 5 * shape.batch * heads * rows * positions * DTYPE_BYTES[dtype] // 4
    hidden = 10 * shape.batch * positions * config.mlp_width * (DTYPE_BYTES[dtype] + 4) // 2
    return int(positions * positions + scores + hidden)


def wan_decode_bytes(pixels: int, decoder_base_dim: int = WAN22_DECODER_BASE_DIM) -> int:
    """The Wan VAE's streamed decode: one chunk of frames at a time, so not the video's length."""
    return int(WAN_DECODE_BYTES_PER_PIXEL_CHANNEL * pixels * decoder_base_dim + WAN_DECODE_FIXED_BYTES)


def estimate_video_memory(
    config: FlowConfig,
    precision: Precision,
    shape: VideoShape,
    t5: T5Shape | None = FLAN_T5_XL,
    vae_parameters: int = WAN22_VAE_PARAMETERS,
    denoise: bool = True,
    decoder_base_dim: int = WAN22_DECODER_BASE_DIM,
) -> MemoryEstimate:
    dtype, text_dtype = precision.dtype, precision.text_dtype
    flow = flow_weight_bytes(config, dtype, precision.quantize, precision.group_size)
    largest = max(math.prod(s) for s in expected_weight_shapes(config).values())
    weights = {"flow": flow, "vae": vae_parameters * DTYPE_BYTES[dtype], "text encoder": 0}
    phases = {}
    if t5 is not None:
        text = t5_weight_bytes(t5, text_dtype, precision.text_quantize, precision.group_size)
        weights["text encoder"] = text
        phases["encode text"] = text + encode_bytes(t5, shape.batch + 1, config.txt_size, text_dtype)
    phases["load flow"] = flow + largest * (4 + DTYPE_BYTES[dtype])
    phases["sample"] = flow + video_kv_cache_bytes(config, shape, dtype) + video_step_bytes(config, shape)
    if denoise and config.noise_std > 0:
        phases["denoise"] = flow + video_denoise_bytes(config, shape, dtype)
    if vae_parameters:
        phases["decode"] = flow + weights["vae"] + wan_decode_bytes(shape.pixels, decoder_base_dim)
    return MemoryEstimate(weights, phases)


def fits(estimate: MemoryEstimate, memory: int) -> bool:
    """Whether the estimated peak, with the check's 10% margin, fits in `memory` bytes."""
    return estimate.peak * SAFETY <= memory


def describe_estimate(estimate: MemoryEstimate) -> str:
    return f"{format_bytes(estimate.peak)} at its peak ({estimate.peak_phase})"


# ----- the check before any download --------------------------------------------------------------
def video_shape(release, num_frames, height, width, aspect_ratio, cfg, jacobi, batch: int = 1) -> VideoShape:
    """The shape a video release's run computes, from the command's flags and the release's defaults."""
    from starflow_core.generation.inputs import aspect_ratio_size

    config, video = release.config, release.video
    num_frames = num_frames or video.num_frames
    multiple = 16 * config.patch_size
    if height is None or width is None:
        base = config.img_size * 16
        height, width = aspect_ratio_size(base, aspect_ratio, multiple) if aspect_ratio else (base, base)
    settings = release.sampling.merged(guidance=cfg, jacobi=jacobi)
    return make_video_shape(
        config,
        num_frames,
        height,
        width,
        video.num_frames,
        batch=batch,
        guided=settings.guidance > 0,
        jacobi_block_size=settings.block_size if settings.jacobi else None,
    )


def check_video_memory(
    release,
    precision: Precision,
    shape: VideoShape,
    denoise: bool,
    available: tuple[int, str],
    quantization: bool,
) -> MemoryEstimate:
    """Raise InsufficientResourcesError (naming settings that fit) when the estimate exceeds `available`."""
    from starflow_core.generation.resource_check import InsufficientResourcesError, alternatives, describe

    estimate = estimate_video_memory(release.config, precision, shape, denoise=denoise)
    limit, where = available
    if fits(estimate, limit):
        return estimate
    fitting = [
        f"{flags} needs about {format_bytes(need)}"
        for flags, candidate in alternatives(precision, quantization)
        if fits(estimate_video_memory(release.config, candidate, shape, denoise=denoise), limit)
        for need in [estimate_video_memory(release.config, candidate, shape, denoise=denoise).peak]
    ]
    advice = "; ".join(fitting[:2]) or shorter_advice(release, precision, shape, denoise, limit, quantization)
    raise InsufficientResourcesError(
        f"{release.name} with {describe(precision)}, {shape.frames} frames of {shape.tokens_per_frame} "
        f"latent tokens, needs about {describe_estimate(estimate)}, and this machine has "
        f"{format_bytes(limit)} ({where}): {advice}. Nothing was downloaded or loaded; "
        "--no-resource-check runs it anyway"
    )


def shorter_advice(
    release, precision: Precision, shape: VideoShape, denoise: bool, limit: int, quantization: bool
) -> str:
    """The longest shorter video at this size (4k + 1 frames) that fits with these settings or
    smaller ones, with the learned denoiser if possible; or that none does."""
    from starflow_core.generation.resource_check import alternatives

    options = [("", precision), *alternatives(precision, quantization)]
    for skip_denoise in [False, True] if denoise else [True]:
        for frames in (65, 49, 33, 17, 9, 5):
            if frames >= shape.frames:
                continue
            frames_latent = latent_frames(frames, 4)
            smaller = dataclasses.replace(
                shape,
                frames=frames,
                latent_frames=frames_latent,
                cached_frames=min(shape.cached_frames, frames_latent),
            )
            for flags, candidate in options:
                need = estimate_video_memory(
                    release.config, candidate, smaller, denoise=not skip_denoise
                ).peak
                if need * SAFETY <= limit:
                    words = [
                        f"--num-frames {frames}",
                        flags,
                        "--no-denoise" if skip_denoise and denoise else "",
                    ]
                    return f"{' '.join(w for w in words if w)} needs about {format_bytes(need)}"
    return "no length at this size fits; try a smaller --height/--width (README table)"
