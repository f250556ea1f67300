"""Peak memory of video sampling, learned denoising and Wan decoding at reduced shapes (MLX),
beside the estimate of starflow_core.generation.video_memory: the check of its formulas.

    python benchmarks/video_memory.py            # a few shapes; prints measured vs estimated
"""

from __future__ import annotations

import argparse

from starflow_mlx import command_setup  # noqa: F401  (OpenBLAS for MLX on Linux, before mlx loads)

# isort: split
import mlx.core as mx
import numpy as np

from starflow_core.config import FlowConfig
from starflow_core.generation.precision import Precision
from starflow_core.generation.video_memory import (
    make_video_shape,
    video_denoise_bytes,
    video_kv_cache_bytes,
    video_step_bytes,
)

# a scaled-down 7B: same structure (frame-local shallow blocks, a wider deep block, the learned
# denoiser), widths / 16, 4 deep layers
REDUCED = FlowConfig(
    in_channels=8,
    img_size=8,
    patch_size=1,
    channels=128,
    top_block_channels=256,
    num_blocks=3,
    layers_per_block=(1, 1, 4),
    head_dim=64,
    rope=True,
    sos=True,
    txt_size=16,
    txt_dim=32,
    cond_top_only=True,
    use_softplus=True,
    use_final_norm=True,
    soft_clip=4.0,
    seq_order="L2R",
    noise_std=0.3,
    temporal_causal=2,
    shallow_block_local=True,
    learnable_self_denoiser=True,
    conditional_denoiser=True,
    denoiser_window=10,
)


SHAPES = ((6, 8, False), (11, 8, False), (6, 8, True), (11, 12, True))
CHUNKED_SCORE_BYTES = 64 * 2**10


def measure(
    config: FlowConfig, frames: int, side: int, jacobi: bool, dtype=mx.float32, score_bytes: int | None = None
) -> dict[str, tuple[int, int]]:
    """{phase: (measured bytes above the weights, estimated bytes)} for one shape; score_bytes:
    the denoiser attention's budget of float32 scores per chunk of query rows (default
    starflow_core.frames.DENOISER_SCORE_BYTES, which these shapes fit whole)."""
    import starflow_core.frames
    from starflow_mlx import video
    from starflow_mlx.model import StarFlow

    model = StarFlow(config)
    model.set_dtype(dtype)
    mx.eval(model.parameters())
    num_frames = 4 * (frames - 1) + 1
    shape = make_video_shape(
        config, num_frames, side * 16, side * 16, num_frames, jacobi_block_size=8 if jacobi else None
    )
    rng = np.random.default_rng(0)
    noise = mx.array(rng.standard_normal((1, frames, side, side, config.in_channels), np.float32)).astype(
        dtype
    )
    y = mx.array(rng.standard_normal((1, config.txt_size, config.txt_dim), np.float32)).astype(dtype)
    mx.eval(noise, y)
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    out = model.sample(noise, y, mx.zeros_like(y), 2.0, jacobi=jacobi, block_size=8)
    mx.eval(out)
    sampled = mx.get_peak_memory() - base
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    budget = starflow_core.frames.DENOISER_SCORE_BYTES
    starflow_core.frames.DENOISER_SCORE_BYTES = budget if score_bytes is None else score_bytes
    try:
        mx.eval(video.denoise_video(model, out, y, frames))
    finally:
        starflow_core.frames.DENOISER_SCORE_BYTES = budget
    denoised = mx.get_peak_memory() - base
    dtype_name = {mx.float32: "float32", mx.bfloat16: "bfloat16"}[dtype]
    return {
        "sample": (
            sampled,
            video_kv_cache_bytes(config, shape, dtype_name) + video_step_bytes(config, shape),
        ),
        "denoise": (denoised, video_denoise_bytes(config, shape, dtype_name, score_bytes)),
    }


def table() -> None:
    """The README's table: for each Mac, the runs of the 7B that fit (estimates, not measurements)."""
    from starflow_core.generation.video_memory import estimate_video_memory
    from starflow_core.presets import preset

    config = preset("starflow-v-7b-t2v-480p")
    sizes = ((480, 848), (352, 640), (256, 448))
    for flag, precision in (
        ("bf16", Precision("bfloat16")),
        ("8-bit", Precision("bfloat16", 8)),
        ("4-bit", Precision("bfloat16", 4)),
    ):
        for height, width in sizes:
            cells = []
            for frames in (17, 33, 49, 81):
                shape = make_video_shape(config, frames, height, width, 81)
                estimate = estimate_video_memory(config, precision, shape)
                cells.append(f"{estimate.peak / 1e9:.1f} ({estimate.peak_phase})")
            print(f"| {flag} | {height}x{width} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--table", action="store_true", help="print the 7B's estimates for the README instead"
    )
    if parser.parse_args().table:
        table()
        return
    runs = [(frames, side, jacobi, None) for frames, side, jacobi in SHAPES]
    # the denoiser's attention in chunks of query rows, as the 7B's runs it (64 KiB of scores:
    # 5 rows of 2 heads x 1,600 keys, where the 7B's 512 MiB is 83 rows of 33,646)
    runs += [(frames, side, False, CHUNKED_SCORE_BYTES) for frames, side, _ in SHAPES[:2]] + [
        (11, 12, False, CHUNKED_SCORE_BYTES)
    ]
    for frames, side, jacobi, score_bytes in runs:
        for phase, (measured, estimated) in measure(
            REDUCED, frames, side, jacobi, score_bytes=score_bytes
        ).items():
            if score_bytes and phase != "denoise":
                continue
            run = "jacobi" if jacobi else "sequential"
            attention = "chunked" if score_bytes else "whole"
            print(
                f"{frames:3d} latent frames {side}x{side} {run:10s} {phase:8s} {attention:8s}"
                f"measured {measured / 2**20:8.1f} MiB  estimated {estimated / 2**20:8.1f} MiB  "
                f"ratio {estimated / measured:.2f}"
            )


if __name__ == "__main__":
    main()
