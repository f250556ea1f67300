"""Peak memory of sampling a video with the sliding window (local_attn_window) against full attention.

    python benchmarks/video_window.py --frames 24 --window 6 --side 12

Builds one random STARFlow-V-shaped model (fp32; frame-local shallow blocks, text in the deep
block), samples the same noise twice, each in a process of its own so the peak is its own:
once with the deep block attending to a window of `--window` frames (the last `--context`
frames re-encoded when the window slides, default window - 1), once with full attention over
all `--frames` frames. Prints, as JSON, each run's peak memory above the model and inputs
(MLX: its allocator's peak; torch: CUDA's allocator peak, or the process's peak resident size
on CPU), the deep block's KV cache size and the sampling time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def build_config(args, window: int | None):
    from starflow_core.config import FlowConfig

    return FlowConfig(
        in_channels=args.channels_in,
        img_size=args.side,
        patch_size=1,
        channels=args.width,
        num_blocks=3,
        layers_per_block=(1, 1, args.layers),
        head_dim=64,
        rope=True,
        sos=True,
        txt_size=16,
        txt_dim=64,
        cond_top_only=True,
        use_softplus=True,
        use_final_norm=True,
        soft_clip=4.0,
        seq_order="L2R",
        temporal_causal=1,
        shallow_block_local=True,
        local_attn_window=window,
    )


def sample_mlx(args, config) -> tuple[float, float, float]:
    """(seconds, peak bytes above the model and inputs, model and input bytes), MLX."""
    import mlx.core as mx
    import numpy as np

    from starflow_mlx import StarFlow

    mx.random.seed(0)
    model = StarFlow(config)
    for block in model.blocks:  # non-trivial flow: proj_out starts at zero
        block.proj_out.weight = 0.02 * mx.random.normal(block.proj_out.weight.shape)
    mx.eval(model.parameters())
    rng = np.random.default_rng(0)
    noise = mx.array(
        rng.standard_normal((1, args.frames, args.side, args.side, args.channels_in)), mx.float32
    )
    y = mx.array(rng.standard_normal((1, 16, 64)), mx.float32)
    mx.eval(noise, y)
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    start = time.perf_counter()
    mx.eval(model.sample(noise, y, context_length=args.context, jacobi=args.jacobi, progress=True))
    return time.perf_counter() - start, mx.get_peak_memory() - base, base


def sample_torch(args, config) -> tuple[float, float, float]:
    """(seconds, peak bytes above the model and inputs, model and input bytes), torch on CUDA
    when available (allocator statistics), else on CPU (peak resident set size of the process)."""
    import resource

    import torch

    from starflow_torch import StarFlow

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = StarFlow(config).to(device)
    with torch.no_grad():
        for block in model.blocks:  # non-trivial flow: proj_out starts at zero
            block.proj_out.weight.normal_(0, 0.02)
    noise = torch.randn(1, args.frames, args.channels_in, args.side, args.side, device=device)
    y = torch.randn(1, 16, 64, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    model.sample(noise, y, context_length=args.context, jacobi=args.jacobi, progress=True)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return time.perf_counter() - start, peak, base


def measure(args) -> dict:
    """Runs in the worker process: sample once, report the peak memory."""
    window = args.window if args.mode == "window" else None
    config = build_config(args, window)
    seconds, peak, base = (sample_mlx if args.twin == "mlx" else sample_torch)(args, config)
    frame_tokens = args.side**2
    cached = config.txt_size + (window or args.frames) * frame_tokens  # deep block's cache positions
    layer_bytes = 2 * config.layer_config(2).kv_heads * config.head_dim * 4  # keys + values, fp32
    return {
        "twin": args.twin,
        "mode": args.mode,
        "sampler": "jacobi" if args.jacobi else "sequential",
        "frames": args.frames,
        "window": window,
        "context": (args.context or window - 1) if window else None,
        "tokens": args.frames * frame_tokens,
        "model_and_inputs_mb": round(base / 2**20, 1),
        "sampling_peak_above_model_mb": round(peak / 2**20, 1),
        "deep_kv_cache_mb": round(cached * layer_bytes * args.layers / 2**20, 1),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=24, help="latent frames of the video")
    parser.add_argument("--window", type=int, default=6, help="frames the deep block attends to")
    parser.add_argument("--context", type=int, default=None, help="frames re-encoded (default window - 1)")
    parser.add_argument("--side", type=int, default=12, help="latent frame side (tokens per frame: side^2)")
    parser.add_argument("--channels-in", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4, help="layers of the deep block")
    parser.add_argument("--twin", choices=("mlx", "torch"), default="mlx")
    parser.add_argument("--jacobi", action="store_true", help="Jacobi sampling (block size 16)")
    parser.add_argument("--mode", choices=("window", "full"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args)))
        return
    if not 1 <= args.window < args.frames:
        parser.error(f"--window must be between 1 and --frames - 1 ({args.frames - 1}) to slide")
    results = []
    for mode in ("window", "full"):
        command = (
            [sys.executable, __file__, "--mode", mode]
            + [
                f"--{name.replace('_', '-')}={value}"
                for name, value in vars(args).items()
                if value is not None and name not in ("mode", "jacobi")
            ]
            + (["--jacobi"] if args.jacobi else [])
        )
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)  # progress on stderr
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
