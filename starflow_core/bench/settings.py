"""What a sampling benchmark run measures: settings, the command-line options every bench command
shares (both twins and the driver), and the inputs (noise and conditions) built from a seed."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from starflow_core.config import FlowConfig
from starflow_core.presets import preset

DEFAULT_PRESETS = ("tiny", "bench-small")
MODES = ("mlx sequential", "mlx jacobi", "torch sequential", "torch jacobi")
SWEEP_BLOCK_SIZES = (8, 16, 32, 64)
SWEEP_TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-6)
QUANTIZATION_BITS = (8, 4)
QUANTIZATION_GROUP_SIZE = 64
# MLX's CPU quantized matmul is a plain loop (5-30x slower than BLAS), so quantized samples
# are only drawn for small token counts; bits/dim (one forward pass) is reported for all.
QUANTIZED_SAMPLE_MAX_TOKENS = 64
# The official sampler (apple/ml-starflow) on bench-small, batch 2, guidance 2.0, on the 2-core
# CI machine: a constant measured by the author of issue #4, not by these scripts.
OFFICIAL_SAMPLER_SECONDS = {"bench-small": 10.3}


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    preset: str = "bench-small"
    batch: int = 2
    guidance: float = 2.0
    block_size: int = 16
    tol: float = 1e-3
    max_iter: int = 32
    repeats: int = 3
    seed: int = 0
    proj_out_std: float = 0.03
    dtype: str = "float32"  # "bfloat16" for the 3B preset (12 GB in fp32)
    threads: int = 1
    jacobi: bool = True  # False: sequential modes only (no Jacobi, sweep or quantization report)
    sweep: bool = True  # the MLX Jacobi block-size x tolerance sweep
    quantization: bool = True  # the MLX 8/4-bit report
    weights: str | None = None  # a model folder (ours or a pipeline folder) instead of random weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every bench command: `python -m starflow_{mlx,torch}.bench`, benchmarks/sampling.py."""
    defaults = BenchSettings()
    parser.add_argument("--preset", action="append", help=f"repeatable; default {' '.join(DEFAULT_PRESETS)}")
    parser.add_argument(
        "--weights", help="time this model (our format, or a pipeline folder) instead of random weights"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_results"), help="folder for bench.json")
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--guidance", type=float, default=defaults.guidance)
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--tol", type=float, default=defaults.tol)
    parser.add_argument("--max-iter", type=int, default=defaults.max_iter)
    parser.add_argument("--proj-out-std", type=float, default=defaults.proj_out_std)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=defaults.dtype)
    parser.add_argument("--threads", type=int, default=defaults.threads, help="BLAS / intra-op threads")
    parser.add_argument(
        "--no-jacobi",
        action="store_true",
        help="time sequential sampling only (no Jacobi, sweep, quantization)",
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the MLX Jacobi block-size/tol sweep")
    parser.add_argument("--no-quantization", action="store_true", help="skip the MLX 8/4-bit report")


def settings_from_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[BenchSettings, list[str]]:
    """(settings, preset names) from parsed options; with --weights the one name is the folder's.

    Bad options end the command through `parser.error` (exit code 2, one line) before anything runs.
    """
    for name in ("repeats", "batch", "threads", "block_size", "max_iter"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        if args.weights:
            trained_folder(args.weights)
            names = [Path(args.weights).name]  # a label for the table; the folder's config is used
        else:
            names = args.preset or list(DEFAULT_PRESETS)
            for name in names:
                preset(name)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    settings = BenchSettings(
        preset=names[0],
        batch=args.batch,
        guidance=args.guidance,
        block_size=args.block_size,
        tol=args.tol,
        max_iter=args.max_iter,
        repeats=args.repeats,
        seed=args.seed,
        proj_out_std=args.proj_out_std,
        dtype=args.dtype,
        threads=args.threads,
        jacobi=not args.no_jacobi,
        sweep=not args.no_sweep,
        quantization=not args.no_quantization,
        weights=args.weights,
    )
    return settings, names


def settings_to_arguments(settings: BenchSettings) -> list[str]:
    """The command-line options that reproduce `settings` (the driver passes them to each twin)."""
    arguments = [
        f"--repeats={settings.repeats}",
        f"--batch={settings.batch}",
        f"--guidance={settings.guidance!r}",
        f"--block-size={settings.block_size}",
        f"--tol={settings.tol!r}",
        f"--max-iter={settings.max_iter}",
        f"--proj-out-std={settings.proj_out_std!r}",
        f"--seed={settings.seed}",
        f"--dtype={settings.dtype}",
        f"--threads={settings.threads}",
    ]
    if settings.weights:
        arguments.append(f"--weights={settings.weights}")
    else:
        arguments.append(f"--preset={settings.preset}")
    flags = {
        "--no-jacobi": settings.jacobi,
        "--no-sweep": settings.sweep,
        "--no-quantization": settings.quantization,
    }
    return arguments + [flag for flag, enabled in flags.items() if not enabled]


def trained_folder(path: str | Path) -> Path:
    """The flow folder of --weights: a folder in our format, or a pipeline folder's transformer/."""
    folder = Path(path)
    if (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"--weights {path}: no config.json (our format) or transformer/config.json there"
        )
    return folder


def bench_config(settings: BenchSettings) -> FlowConfig:
    """The configuration being timed: the --weights folder's, or the preset's."""
    if settings.weights:
        return FlowConfig.load(trained_folder(settings.weights) / "config.json")
    return preset(settings.preset)


def make_inputs(config: FlowConfig, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Noise (B, C, H, W) and conditions as numpy: text features y, y_null (B, txt_size,
    txt_dim) fp32 (zeros for the null prompt), or integer labels y (B,) for label models."""
    rng = np.random.default_rng(seed)
    shape = (batch, config.in_channels, config.img_size, config.img_size)
    inputs = {"noise": rng.standard_normal(shape, dtype=np.float32)}
    if config.num_classes:
        inputs["y"] = rng.integers(0, config.num_classes, batch).astype(np.int64)
    elif config.txt_size:
        text_shape = (batch, config.txt_size, config.txt_dim)
        inputs["y"] = rng.standard_normal(text_shape, dtype=np.float32)
        inputs["y_null"] = np.zeros(text_shape, dtype=np.float32)
    return inputs
