"""Peak memory of each phase of the 3B text-to-image pipeline in the PyTorch twin (bf16).

    python -m starflow_torch.memory_report                    # CUDA when available, else CPU
    python -m starflow_torch.memory_report --device cpu --json memory_torch.json

The twin of starflow_mlx.memory_report (same files, phases and tables; torch has no weight
quantization, so bf16 only). On CUDA the peak is torch.cuda.max_memory_allocated; on a CPU it
is the process's anonymous resident memory (RssAnon), sampled every 10 ms: weight files are
memory-mapped, and their pages are the OS's reclaimable cache, not counted. Loading and
decoding use the full shapes; on a CPU, encode / sample / denoise use the reduced shapes of
starflow_core.generation.memory_report (the output says which).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from starflow_core.command_line import run_command
from starflow_core.generation import memory_report as report
from starflow_core.generation.resources import RunShape, T5Shape, estimate_memory

if TYPE_CHECKING:  # torch, diffusers and transformers load once the arguments are read
    import torch


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def anonymous_memory() -> int:
    """Bytes of the process's anonymous resident memory (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"RssAnon:\s+(\d+) kB", status).group(1)) * 1024


def phase_peak(run, device: torch.device):
    """(result, peak bytes while `run` ran, everything resident included)."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        result = run()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device)
    peak, done = [anonymous_memory()], threading.Event()

    def sample():
        while not done.wait(0.01):
            peak[0] = max(peak[0], anonymous_memory())

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        result = run()
    finally:
        done.set()
        watcher.join()
    return result, max(peak[0], anonymous_memory())


def write_vae_folder(folder: Path) -> None:
    """The SD-VAE in diffusers' layout, shapes from a meta-device model."""
    import diffusers
    import torch

    config = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4}
    config["up_block_types"] = ["UpDecoderBlock2D"] * 4
    with torch.device("meta"):
        model = diffusers.AutoencoderKL(**config, layers_per_block=2, latent_channels=4, sample_size=256)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    report.write_vae_config(folder)
    report.write_random_safetensors(
        folder / "diffusion_pytorch_model.safetensors", shapes, "float32", report.flow_scale, seed=2
    )


def write_files(root: Path) -> None:
    print(f"writing random weight files with the release's shapes into {root} (about 13 GB)", flush=True)
    report.write_flow_folder(root / "flow", report.RELEASE_CONFIG, "bfloat16")
    report.write_t5_folder(root / "t5")
    write_vae_folder(root / "vae")
    report.write_flow_folder(root / "flow_reduced", report.REDUCED_FLOW, "bfloat16")
    report.write_t5_folder(root / "t5_reduced", report.REDUCED_T5)


def measure(root: Path, device: torch.device, full_compute: bool) -> list[report.PhaseResult]:
    """The compute phases first, then loading and decoding at full shape: on a CPU the allocator
    keeps memory it once held, so a small phase measured after the 3B would show the 3B's."""
    import torch

    from .model import StarFlow
    from .pipeline import DTYPES
    from .text import load_t5_encoder
    from .vae import AutoencoderKL

    option = "bf16"
    precision = report.OPTIONS[option]
    dtype = DTYPES[precision.dtype]
    full = report.release_estimate(option).phases
    baseline = 0 if device.type == "cuda" else anonymous_memory()  # the interpreter and libraries
    results = []

    def add(phase, shape, peak, weights, estimate):
        results.append(report.PhaseResult(option, phase, shape, peak - baseline, weights, estimate))
        print(f"  {option:6} {phase:18} {shape:8} {(peak - baseline) / 1e9:.2f} GB", flush=True)

    shape_name = "3B" if full_compute else "reduced"
    config = report.RELEASE_CONFIG if full_compute else report.REDUCED_FLOW
    t5_shape = T5Shape() if full_compute else report.REDUCED_T5
    estimate = estimate_memory(
        config, precision, RunShape(batch=1, tokens=config.img_size**2), t5_shape, 0
    ).phases
    encoder = load_t5_encoder(root / ("t5" if full_compute else "t5_reduced"), dtype, device)
    ids = torch.randint(0, t5_shape.vocab_size, (2, config.txt_size), device=device)

    @torch.no_grad()
    def encode(model):
        return model(input_ids=ids).last_hidden_state

    features, peak = phase_peak(lambda: encode(encoder), device)
    add("encode text", shape_name, peak, weight_bytes(encoder), estimate["encode text"])
    encoder = None  # freed before the flow loads, as in the pipeline
    flow = StarFlow.from_pretrained(root / ("flow" if full_compute else "flow_reduced"), dtype, device=device)
    noise = torch.randn(1, config.in_channels, config.img_size, config.img_size, device=device)
    y, y_null = features[:1].float(), features[1:].float()

    @torch.no_grad()
    def sample(model):
        max_iter = 32 if full_compute else 1  # one iteration a chunk holds the same memory
        return model.sample(noise, y, y_null, 3.6, jacobi=True, block_size=16, max_iter=max_iter)

    x, peak = phase_peak(lambda: sample(flow), device)
    add("sample", shape_name, peak, weight_bytes(flow), estimate["sample"])
    _, peak = phase_peak(lambda: flow.denoise(x, y), device)
    add("denoise", shape_name, peak, weight_bytes(flow), estimate["denoise"])
    flow = None

    t5, peak = phase_peak(lambda: load_t5_encoder(root / "t5", dtype, device), device)
    add("load text encoder", "3B", peak, weight_bytes(t5), full["load text encoder"])
    t5 = None
    flow, peak = phase_peak(lambda: StarFlow.from_pretrained(root / "flow", dtype, device=device), device)
    add("load flow", "3B", peak, weight_bytes(flow), full["load flow"])

    @torch.no_grad()
    def decode():
        vae = AutoencoderKL.from_pretrained(root / "vae", dtype=dtype).to(device)
        vae.decode(torch.randn(1, 4, 32, 32, device=device, dtype=dtype), batch_size=1)
        return weight_bytes(vae)

    vae_bytes, peak = phase_peak(decode, device)
    add("decode", "3B", peak, weight_bytes(flow) + vae_bytes, full["decode"])
    return results


def build_parser():
    return report.build_parser("starflow_torch.memory_report", __doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: report_memory(args))


def report_memory(args: argparse.Namespace) -> int:
    """Write the weight files, measure each phase, print the report (and its JSON)."""
    import torch

    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ValueError(f"unknown --device {args.device!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA GPU is visible; use --device cpu")
    on_gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    described = f"torch {device} ({name})"
    created_root = args.work_dir is None or not args.work_dir.exists()
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="starflow_memory_"))
    wrote = False
    notes = [
        "peak: "
        + (
            "torch.cuda.max_memory_allocated"
            if on_gpu
            else "anonymous resident memory (RssAnon) "
            "above the process's baseline, sampled every 10 ms; memory-mapped weight files are not counted"
        )
        + "; weights: the bytes of the weights resident then; estimate: the MLX-measured estimator.",
        "Loading and decoding use the 3B release's shapes (batch 1, guidance 3.6).",
    ]
    if not on_gpu:
        notes.append(
            "On this CPU, encode/sample/denoise use REDUCED shapes: flow width 512, layers 1 1 1 1 1 2, "
            "16x16 latent tokens + 128 text tokens; T5 width 2048 with 2 of 24 layers; one Jacobi "
            "iteration per chunk."
        )
    start = time.perf_counter()
    try:
        wrote = not report.work_files_present(root)
        if wrote:
            write_files(root)
        report.write_vae_config(root / "vae")
        results = measure(root, device, full_compute=on_gpu)
    finally:
        if not args.keep_files and (wrote or created_root):
            report.remove_work_files(root, created_root)
    print()
    print(report.format_results(results, described, notes))
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        args.json.write_text(
            json.dumps({"device": described, "notes": notes, **report.summary(results)}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
