"""Side-by-side sampling benchmark: MLX vs the torch twin, sequential vs Jacobi, same weights and noise.

    python -m starflow_mlx.bench                       # presets tiny and bench-small
    python -m starflow_mlx.bench --preset bench-small --repeats 5 --out bench_results/
    python -m starflow_mlx.bench --preset starflow-3b-t2i-256 --dtype bfloat16 --repeats 1 \
        --no-sweep --no-quantization --no-torch     # 3B-shaped random weights, ~6 GB; very slow on CPU
    python -m starflow_mlx.bench --weights starflow_core/assets/demo     # a trained model (the digits demo)

One process builds a torch StarFlow with random weights, perturbs every proj_out
(std --proj-out-std) and sos embedding so that no block is the identity and Jacobi
has to iterate, saves it with save_pretrained and loads the same folder in MLX. Each
mode is run once to warm up (compilation) and then --repeats times; medians are
reported. With --weights a trained model is timed instead (random noise, random labels or
text features); Jacobi converges differently on trained weights than on perturbed random
ones. Results go to <out>/bench.json and <out>/bench.png.
"""

from __future__ import annotations

from . import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux, before mlx loads)

# isort: split
import argparse
import ctypes
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from starflow_core.config import FlowConfig
from starflow_core.presets import preset

from .blas import blas_status, measure_gemm_gflops
from .model import StarFlow
from .sampling import SamplingStats

# The official sampler (apple/ml-starflow) on bench-small, batch 2, guidance 2.0, on this
# machine: a constant measured by the author of issue #4, not by this script.
OFFICIAL_SAMPLER_SECONDS = {"bench-small": 10.3}
DEFAULT_PRESETS = ("tiny", "bench-small")
SWEEP_BLOCK_SIZES = (8, 16, 32, 64)
SWEEP_TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-6)
MODES = ("mlx sequential", "mlx jacobi", "torch sequential", "torch jacobi")
QUANTIZATION_BITS = (8, 4)
QUANTIZATION_GROUP_SIZE = 64
# MLX's CPU quantized matmul is a plain loop (5-30x slower than BLAS), so quantized samples
# are only drawn for small token counts; bits/dim (one forward pass) is reported for all.
QUANTIZED_SAMPLE_MAX_TOKENS = 64


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
    sweep: bool = True
    torch: bool = True
    quantization: bool = True
    weights: str | None = None  # a trained model folder (ours) instead of perturbed random weights


# ----- model, inputs, cost model ----------------------------------------------------------
def build_random_folder(config: FlowConfig, folder: Path, settings: BenchSettings) -> None:
    """Save a torch StarFlow with random weights whose every block does something."""
    import torch

    from starflow_torch import StarFlow as TorchStarFlow

    torch.manual_seed(settings.seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, settings.dtype))  # build in bf16 directly: 3B is 12 GB in fp32
    try:
        model = TorchStarFlow(config)
    finally:
        torch.set_default_dtype(default_dtype)
    with torch.no_grad():
        for block in model.blocks:
            if hasattr(block, "proj_out"):  # zero-initialised proj_out makes the block the identity
                block.proj_out.weight.normal_(0.0, settings.proj_out_std)
            if hasattr(block, "sos_embed"):
                block.sos_embed.normal_(0.0, 1.0)
    model.save_pretrained(folder)


def trained_folder(path: str) -> Path:
    """The flow folder of --weights: a folder in our format, or a pipeline folder's transformer/."""
    folder = Path(path)
    if (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--weights {path}: no config.json (our format) or transformer/config.json there")
    return folder


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


def block_rows(config: FlowConfig, index: int, batch: int, guidance: float) -> int:
    """Rows a block runs on: guidance doubles the batch of the conditioned blocks."""
    return 2 * batch if (guidance > 0 and config.block_has_text(index)) else batch


def linear_flops_per_token(config: FlowConfig) -> float:
    """Multiply-adds x 2 of one layer's linears for one token: qkv, proj, mlp (4 + 2 e) C^2."""
    return 2.0 * (4 + 2 * config.expansion) * config.channels**2


def flops_per_pass(config: FlowConfig, batch: int, guidance: float) -> dict[str, float]:
    """FLOPs of one full pass over all tokens of every block (linears; attention separately)."""
    tokens = config.grid_size**2
    linear = attention = 0.0
    for i, layers in enumerate(config.layers_per_block):
        rows = block_rows(config, i, batch, guidance)
        context = (config.txt_size if config.block_has_text(i) else 0) + tokens / 2  # mean keys seen
        linear += rows * layers * tokens * linear_flops_per_token(config)
        attention += rows * layers * tokens * 4.0 * config.channels * context
    return {"linear": linear, "attention": attention}


def weight_bytes_per_token(config: FlowConfig, bytes_per_weight: int) -> float:
    """Transformer weight bytes one token's step reads across all blocks (sequential floor)."""
    layers = sum(config.layers_per_block)
    return layers * (4 + 2 * config.expansion) * config.channels**2 * bytes_per_weight


def executed_linear_flops(config, batch, guidance, stats: SamplingStats | None, block_size: int) -> float:
    """Linear FLOPs actually run: a pass per block for sequential, iterations x chunk for Jacobi."""
    tokens = config.grid_size**2
    total = 0.0
    active = [i for i, n in enumerate(config.layers_per_block) if n > 0][::-1]  # deep block first
    for k, i in enumerate(active):
        evaluated = tokens
        if stats is not None and stats.jacobi_iterations:
            iterations = stats.jacobi_iterations[k]
            chunks = [min(block_size, tokens - c * block_size) for c in range(len(iterations))]
            evaluated = sum(n * length for n, length in zip(iterations, chunks, strict=True))
        rows = block_rows(config, i, batch, guidance)
        total += rows * config.layers_per_block[i] * evaluated * linear_flops_per_token(config)
    return total


# ----- timing -----------------------------------------------------------------------------
def set_threads(threads: int) -> None:
    """Threads of both BLAS libraries (OpenBLAS for MLX, torch's intra-op pool)."""
    import torch

    torch.set_num_threads(threads)
    library = blas_status().get("library")
    if library:
        handle = ctypes.CDLL(library)
        if hasattr(handle, "openblas_set_num_threads"):
            handle.openblas_set_num_threads(threads)


def timed(run, repeats: int) -> tuple[list[float], object]:
    """Warm up once, then time `repeats` calls; returns (seconds per call, last output)."""
    output = run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = run()
        seconds.append(time.perf_counter() - start)
    return seconds, output


def relative_rms(a: np.ndarray, b: np.ndarray) -> float:
    """sqrt(mean((a - b)^2)) / sqrt(mean(b^2))."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b**2)), 1e-30))


def mlx_sampler(model: StarFlow, inputs: dict, settings: BenchSettings, jacobi: bool, **jacobi_args):
    """A zero-argument function sampling with MLX; returns (NCHW numpy sample, stats, peak bytes)."""
    noise = mx.array(inputs["noise"].transpose(0, 2, 3, 1))
    y = None
    if "y" in inputs:
        y = mx.array(inputs["y"].astype(np.int32) if inputs["y"].dtype.kind == "i" else inputs["y"])
    y_null = mx.array(inputs["y_null"]) if "y_null" in inputs else None

    def run():
        stats = SamplingStats()
        mx.reset_peak_memory()
        sample = model.sample(noise, y, y_null, settings.guidance, jacobi=jacobi, stats=stats, **jacobi_args)
        mx.eval(sample)
        return np.array(sample).transpose(0, 3, 1, 2), stats, mx.get_peak_memory()

    return run


def torch_sampler(model, inputs: dict, settings: BenchSettings, jacobi: bool, **jacobi_args):
    import torch

    from starflow_torch import SamplingStats as TorchStats

    tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}

    def run():
        stats = TorchStats()
        sample = model.sample(
            tensors["noise"],
            tensors.get("y"),
            tensors.get("y_null"),
            settings.guidance,
            jacobi=jacobi,
            stats=stats,
            **jacobi_args,
        )
        return sample.float().numpy(), stats, None

    return run


def run_preset(settings: BenchSettings, gemm_gflops: float) -> dict:
    """Time the four modes (and the Jacobi sweep) on one preset; returns a JSON-ready dict."""
    config = (
        FlowConfig.load(trained_folder(settings.weights) / "config.json")
        if settings.weights
        else preset(settings.preset)
    )
    inputs = make_inputs(config, settings.batch, settings.seed)
    jacobi_args = dict(block_size=settings.block_size, tol=settings.tol, max_iter=settings.max_iter)
    tokens_per_batch = settings.batch * config.grid_size**2
    flops = flops_per_pass(config, settings.batch, settings.guidance)
    bytes_per_weight = 2 if settings.dtype == "bfloat16" else 4
    with tempfile.TemporaryDirectory() as folder:
        if settings.weights:
            folder = str(trained_folder(settings.weights))
        else:
            build_random_folder(config, Path(folder), settings)
        # the requested dtype, whatever the folder stores (trained weights ship in fp16)
        mlx_model = StarFlow.from_pretrained(folder, dtype=getattr(mx, settings.dtype))
        runners = {"mlx sequential": mlx_sampler(mlx_model, inputs, settings, False)}
        if settings.jacobi:
            runners["mlx jacobi"] = mlx_sampler(mlx_model, inputs, settings, True, **jacobi_args)
        if settings.torch:
            import torch

            from starflow_torch import StarFlow as TorchStarFlow

            torch_model = TorchStarFlow.from_pretrained(folder, dtype=getattr(torch, settings.dtype))
            runners["torch sequential"] = torch_sampler(torch_model, inputs, settings, False)
            if settings.jacobi:
                runners["torch jacobi"] = torch_sampler(torch_model, inputs, settings, True, **jacobi_args)
        rows, samples = {}, {}
        for mode, run in runners.items():
            seconds, (sample, stats, peak) = timed(run, settings.repeats)
            median = float(np.median(seconds))
            jacobi = mode.endswith("jacobi")
            executed = executed_linear_flops(
                config, settings.batch, settings.guidance, stats if jacobi else None, settings.block_size
            )
            samples[mode] = sample
            rows[mode] = {
                "seconds": median,
                "seconds_all": seconds,
                "tokens_per_second": tokens_per_batch / median,
                "jacobi_iterations": stats.jacobi_iterations if jacobi else None,
                "network_steps": stats.steps,
                "executed_gflop": executed / 1e9,
                "achieved_gflops": executed / median / 1e9,
                "roofline_fraction": executed / median / 1e9 / gemm_gflops,
                "peak_memory_gb": None if peak is None else peak / 1e9,
            }
        sweep = []
        if settings.jacobi and settings.sweep:
            sweep = jacobi_sweep(mlx_model, inputs, settings, samples["mlx sequential"])
        quantized = (
            quantization_report(Path(folder), mlx_model, inputs, settings, samples["mlx jacobi"])
            if settings.jacobi and settings.quantization
            else []
        )
    for framework in ("mlx", "torch"):
        if f"{framework} jacobi" in samples:
            deviation = relative_rms(samples[f"{framework} jacobi"], samples[f"{framework} sequential"])
            rows[f"{framework} jacobi"]["rms_deviation_from_sequential"] = deviation
    ratios = speedups(rows, settings.preset)
    if "torch sequential" in samples:
        ratios["mlx_vs_torch_sample_rms_deviation"] = relative_rms(
            samples["mlx sequential"], samples["torch sequential"]
        )
    return {
        "preset": settings.preset,
        "settings": dataclasses.asdict(settings),
        "config": config.to_dict(),
        "gflop_per_pass": {name: value / 1e9 for name, value in flops.items()},
        "sequential_weight_traffic_gb": weight_bytes_per_token(config, bytes_per_weight)
        * config.grid_size**2
        / 1e9,
        "modes": rows,
        "speedups": ratios,
        "jacobi_sweep": sweep,
        "quantization": quantized,
    }


def speedups(rows: dict, preset_name: str) -> dict:
    def ratio(slow: str, fast: str) -> float | None:
        if slow in rows and fast in rows:
            return rows[slow]["seconds"] / rows[fast]["seconds"]
        return None

    out = {
        "mlx jacobi vs mlx sequential": ratio("mlx sequential", "mlx jacobi"),
        "torch jacobi vs torch sequential": ratio("torch sequential", "torch jacobi"),
        "mlx sequential vs torch sequential": ratio("torch sequential", "mlx sequential"),
        "mlx jacobi vs torch jacobi": ratio("torch jacobi", "mlx jacobi"),
    }
    reference = OFFICIAL_SAMPLER_SECONDS.get(preset_name)
    if reference is not None:
        out["official_sampler_reference_seconds"] = reference
        for mode in ("mlx sequential", "mlx jacobi"):
            if mode in rows:
                out[f"{mode} vs official reference"] = reference / rows[mode]["seconds"]
    return out


def jacobi_sweep(model: StarFlow, inputs: dict, settings: BenchSettings, sequential: np.ndarray) -> list:
    """MLX Jacobi over block sizes x tolerances: seconds (one timed run), iterations, deviation."""
    results = []
    for block_size in SWEEP_BLOCK_SIZES:
        for tol in SWEEP_TOLERANCES:
            run = mlx_sampler(
                model, inputs, settings, True, block_size=block_size, tol=tol, max_iter=settings.max_iter
            )
            seconds, (sample, stats, _) = timed(run, 1)
            results.append(
                {
                    "block_size": block_size,
                    "tol": tol,
                    "seconds": seconds[0],
                    "total_iterations": stats.total_iterations,
                    "rms_deviation_from_sequential": relative_rms(sample, sequential),
                }
            )
    return results


def quantization_report(
    folder: Path, full: StarFlow, inputs: dict, settings: BenchSettings, full_sample: np.ndarray
) -> list[dict]:
    """Bits/dim on random data (x ~ N(0, 1)) and sample deviation of 8- and 4-bit models vs full."""
    config = full.config
    rng = np.random.default_rng(settings.seed + 1)
    data = mx.array(rng.standard_normal(inputs["noise"].transpose(0, 2, 3, 1).shape, dtype=np.float32))
    y = mx.array(inputs["y"]) if "y" in inputs else None
    full_bpd = float(mx.mean(full.bits_per_dim(data, y)).item())
    draw_samples = config.grid_size**2 <= QUANTIZED_SAMPLE_MAX_TOKENS
    jacobi_args = dict(block_size=settings.block_size, tol=settings.tol, max_iter=settings.max_iter)
    report = []
    for bits in QUANTIZATION_BITS:
        model = StarFlow.from_pretrained(folder, dtype=mx.float32).quantize(bits, QUANTIZATION_GROUP_SIZE)
        bpd = float(mx.mean(model.bits_per_dim(data, y)).item())
        entry = {"bits": bits, "group_size": QUANTIZATION_GROUP_SIZE, "bits_per_dim": bpd}
        entry.update(full_bits_per_dim=full_bpd, bits_per_dim_delta=bpd - full_bpd)
        if draw_samples:
            sample, _, _ = mlx_sampler(model, inputs, settings, True, **jacobi_args)()
            entry["sample_max_abs_deviation"] = float(np.abs(sample - full_sample).max())
            entry["sample_rms_deviation"] = relative_rms(sample, full_sample)
        report.append(entry)
    return report


# ----- report -----------------------------------------------------------------------------
def machine_info(threads: int, gemm_gflops: float) -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "threads": threads,
        "mlx": mx.__version__,
        "torch": torch.__version__,
        "blas": blas_status(),
        "gemm_gflops_mlx_fp32_1024": gemm_gflops,
    }


def format_table(result: dict) -> str:
    lines = [f"== {result['preset']} ==  {result['gflop_per_pass']['linear']:.1f} GFLOP per pass (linears)"]
    header = f"{'mode':18s} {'s/batch':>8s} {'tok/s':>8s} {'iters':>6s} {'GFLOP/s':>8s} {'roofline':>8s}"
    lines += [header + f" {'rms dev':>9s} {'peak GB':>8s}"]
    for mode, row in result["modes"].items():
        iterations = row["jacobi_iterations"]
        deviation = row.get("rms_deviation_from_sequential")
        peak = row["peak_memory_gb"]
        lines.append(
            f"{mode:18s} {row['seconds']:8.3f} {row['tokens_per_second']:8.1f} "
            f"{sum(map(sum, iterations)) if iterations else '-':>6} {row['achieved_gflops']:8.1f} "
            f"{row['roofline_fraction']:8.1%} {'-' if deviation is None else f'{deviation:.2e}':>9s} "
            f"{'-' if peak is None else f'{peak:.3f}':>8s}"
        )
    for name, value in result["speedups"].items():
        if value is not None:
            unit = "s" if name.endswith("seconds") else ("" if "deviation" in name else "x")
            lines.append(f"  {name}: {value:.3g}{unit}")
    if result["jacobi_sweep"]:
        lines.append("  Jacobi sweep (MLX): block  tol      seconds  iterations  rms dev")
        for entry in result["jacobi_sweep"]:
            lines.append(
                f"  {entry['block_size']:>24d}  {entry['tol']:<7.0e} {entry['seconds']:8.3f}  "
                f"{entry['total_iterations']:>10d}  {entry['rms_deviation_from_sequential']:.2e}"
            )
    for entry in result.get("quantization", []):
        line = (
            f"  {entry['bits']}-bit (group {entry['group_size']}): bits/dim {entry['bits_per_dim']:.5f} "
            f"(full {entry['full_bits_per_dim']:.5f}, delta {entry['bits_per_dim_delta']:+.2e})"
        )
        if "sample_max_abs_deviation" in entry:
            line += (
                f", Jacobi sample max |dev| {entry['sample_max_abs_deviation']:.2e}"
                f" (rel. rms {entry['sample_rms_deviation']:.2e})"
            )
        lines.append(line)
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [r for r in results if r["jacobi_sweep"]]
    figure, axes = plt.subplots(1, 1 + bool(swept), figsize=(12, 4.5))
    axes = np.atleast_1d(axes)
    width = 0.8 / len(results)
    for k, result in enumerate(results):
        modes = list(result["modes"])
        axes[0].bar(
            np.array([MODES.index(m) for m in modes]) + k * width,  # modes not run leave a gap
            [result["modes"][m]["seconds"] for m in modes],
            width,
            label=result["preset"],
        )
    axes[0].set_xticks(np.arange(len(MODES)) + 0.4 - width / 2, MODES, rotation=15)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("seconds per batch")
    axes[0].legend()
    if swept:  # the last (largest) preset's sweep
        result = swept[-1]
        for tol in SWEEP_TOLERANCES:
            entries = [e for e in result["jacobi_sweep"] if e["tol"] == tol]
            axes[1].plot(
                [e["block_size"] for e in entries],
                [e["seconds"] for e in entries],
                "o-",
                label=f"tol {tol:g}",
            )
        axes[1].set_xscale("log", base=2)
        axes[1].set_xlabel("Jacobi block size")
        axes[1].set_ylabel("seconds per batch (MLX)")
        axes[1].set_title(f"{result['preset']}: MLX Jacobi sweep")
        axes[1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_benchmark(presets: list[str], settings: BenchSettings, out: Path) -> list[dict]:
    """Benchmark every preset, print the tables, write bench.json and bench.png into `out`."""
    set_threads(settings.threads)
    gemm_gflops = measure_gemm_gflops()
    results = []
    for name in presets:
        result = run_preset(dataclasses.replace(settings, preset=name), gemm_gflops)
        print(format_table(result), flush=True)
        results.append(result)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(settings.threads, gemm_gflops), "results": results}
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, out / "bench.png")
    print(
        f"GEMM roofline {gemm_gflops:.1f} GFLOP/s (MLX fp32 1024^2, {settings.threads} thread(s)); wrote {out}"
    )
    return results


def main(argv: list[str] | None = None) -> None:
    defaults = BenchSettings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", action="append", help=f"repeatable; default {' '.join(DEFAULT_PRESETS)}")
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--guidance", type=float, default=defaults.guidance)
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--tol", type=float, default=defaults.tol)
    parser.add_argument("--max-iter", type=int, default=defaults.max_iter)
    parser.add_argument("--proj-out-std", type=float, default=defaults.proj_out_std)
    parser.add_argument(
        "--weights",
        help="benchmark a trained model (our format, or a pipeline folder) instead of random weights",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=defaults.dtype)
    parser.add_argument("--threads", type=int, default=defaults.threads, help="BLAS threads, both frameworks")
    parser.add_argument("--no-sweep", action="store_true", help="skip the Jacobi block-size/tol sweep")
    parser.add_argument("--no-torch", action="store_true", help="time MLX only")
    parser.add_argument(
        "--no-jacobi",
        action="store_true",
        help="time sequential sampling only (no Jacobi, sweep, quantization)",
    )
    parser.add_argument("--no-quantization", action="store_true", help="skip the 8/4-bit report")
    args = parser.parse_args(argv)
    settings = BenchSettings(
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
        torch=not args.no_torch,
        quantization=not args.no_quantization,
        weights=args.weights,
    )
    presets = args.preset or list(DEFAULT_PRESETS)
    if args.weights:
        presets = [Path(args.weights).name]  # a label for the table; the folder's config is used
    run_benchmark(presets, settings, args.out)


if __name__ == "__main__":
    main()
