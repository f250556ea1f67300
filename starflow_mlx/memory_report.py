"""Peak memory of each phase of the 3B text-to-image pipeline in MLX, for bf16, 8-bit and 4-bit.

    python -m starflow_mlx.memory_report                      # all options, files in a temp folder
    python -m starflow_mlx.memory_report --options bf16 --json memory.json --work-dir /big/disk

Writes weight files with the release's shapes filled with random values (no download: the
flow in bf16 as its converted cache, 7.7 GB; flan-T5-XL's encoder in fp32 as on the Hub,
4.9 GB; the SD-VAE), then runs the pipeline's phases in order and reports each one's peak
(mx.get_peak_memory: every byte MLX's arrays hold) and its ratio to the weights resident.
Loading and decoding use the full shapes. The other compute phases use the full shapes on a
GPU and, on a CPU, the reduced shapes of starflow_core.generation.memory_report (the output
says which); quantized compute phases run only on a GPU (MLX's quantized CPU kernels take
minutes here). Each row also shows the estimate the generate command checks against.
"""

from __future__ import annotations

from . import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux, before mlx loads)

# isort: split
import argparse
import json
import sys
import tempfile
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from starflow_core.command_line import run_command
from starflow_core.generation import memory_report as report
from starflow_core.generation.resources import RunShape, T5Shape, estimate_memory

from .model import StarFlow
from .pipeline import DTYPES
from .t5 import T5Encoder
from .vae import AutoencoderKL, AutoencoderKLConfig


def weight_bytes(module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


def phase_peak(run):
    """(result, peak bytes of MLX arrays while `run` ran, everything resident included)."""
    mx.clear_cache()
    mx.reset_peak_memory()
    result = run()
    return result, mx.get_peak_memory()


def write_vae_folder(folder: Path) -> None:
    """diffusers layout (conv weights OIHW) of the SD-VAE, from this twin's parameter shapes."""
    config = AutoencoderKLConfig()
    shapes = {}
    for name, value in tree_flatten(AutoencoderKL(config).parameters()):  # lazy: nothing allocated
        shape = tuple(value.shape)
        shapes[name] = (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else shape
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


def measure_option(option: str, root: Path, full_compute: bool) -> list[report.PhaseResult]:
    precision = report.OPTIONS[option]
    dtype, text_dtype = DTYPES[precision.dtype], DTYPES[precision.text_dtype]
    q, text_q = precision.quantize, precision.text_quantize
    full = report.release_estimate(option).phases
    results = []

    def add(phase, shape, peak, weights, estimate):
        results.append(report.PhaseResult(option, phase, shape, peak, weights, estimate))
        shown = "-" if peak is None else f"{peak / 1e9:.2f} GB"
        print(f"  {option:6} {phase:18} {shape:8} {shown}", flush=True)

    # ----- full shapes: loading, and decoding with the 3B flow resident -----
    t5, peak = phase_peak(lambda: T5Encoder.from_pretrained(root / "t5", dtype=text_dtype, quantize=text_q))
    add("load text encoder", "3B", peak, weight_bytes(t5), full["load text encoder"])
    del t5
    flow, peak = phase_peak(lambda: StarFlow.from_pretrained(root / "flow", dtype=dtype, quantize=q))
    add("load flow", "3B", peak, weight_bytes(flow), full["load flow"])

    def decode():
        vae = AutoencoderKL.from_pretrained(root / "vae", dtype=dtype)
        latents = mx.random.normal((1, 32, 32, 4)).astype(dtype)
        images = vae.decode(latents, batch_size=1)
        mx.eval(images)
        return weight_bytes(vae)

    vae_bytes, peak = phase_peak(decode)
    add("decode", "3B", peak, weight_bytes(flow) + vae_bytes, full["decode"])
    del flow

    # ----- encode, sample, denoise: full shapes on a GPU, reduced ones on a CPU -----
    if q is not None and not full_compute:
        for phase in ("encode text", "sample", "denoise"):
            add(phase, "3B", None, 0, full[phase])
        return results
    shape_name = "3B" if full_compute else "reduced"
    config = report.RELEASE_CONFIG if full_compute else report.REDUCED_FLOW
    t5_shape = T5Shape() if full_compute else report.REDUCED_T5
    tokens = config.img_size**2
    estimate = estimate_memory(config, precision, RunShape(batch=1, tokens=tokens), t5_shape, 0).phases
    encoder = T5Encoder.from_pretrained(
        root / ("t5" if full_compute else "t5_reduced"), dtype=text_dtype, quantize=text_q
    )
    ids = mx.random.randint(0, t5_shape.vocab_size, (2, config.txt_size))  # the prompt and ""

    def encode(model):
        features = model(ids, mx.ones(ids.shape, dtype=mx.int32))
        mx.eval(features)
        return features

    features, peak = phase_peak(lambda: encode(encoder))
    add("encode text", shape_name, peak, weight_bytes(encoder), estimate["encode text"])
    encoder = None  # T5 is freed before the flow loads
    flow = StarFlow.from_pretrained(
        root / ("flow" if full_compute else "flow_reduced"), dtype=dtype, quantize=q
    )
    noise = mx.random.normal((1, config.img_size, config.img_size, config.in_channels))
    y, y_null = features[:1].astype(mx.float32), features[1:].astype(mx.float32)

    def sample():  # Jacobi, the release's sampler; one iteration a chunk holds the same memory
        x = flow.sample(noise, y, y_null, 3.6, jacobi=True, block_size=16, max_iter=32 if full_compute else 1)
        mx.eval(x)
        return x

    x, peak = phase_peak(sample)
    add("sample", shape_name, peak, weight_bytes(flow), estimate["sample"])

    def denoise():
        out = flow.denoise(x, y)
        mx.eval(out)
        return out

    _, peak = phase_peak(denoise)
    add("denoise", shape_name, peak, weight_bytes(flow), estimate["denoise"])
    return results


def reference_run() -> list[str]:
    """The reference measurement (REFERENCE_FLOW, fp32, random weights): peak of a guided (3.6) sample
    and its score step, over the weight bytes; and the score step keeping every layer's
    activations (as before per-layer recompute)."""
    config = report.REFERENCE_FLOW
    model = StarFlow(config)
    for block in model.blocks:  # proj_out starts at zero (the identity); make every block act
        block.proj_out.weight = mx.random.normal(block.proj_out.weight.shape) * 0.03
    mx.eval(model.parameters())
    weights = weight_bytes(model)
    noise = mx.random.normal((1, config.img_size, config.img_size, config.in_channels))
    y = mx.random.normal((1, config.txt_size, config.txt_dim))
    lines = [
        f"Reference: flow width 1024, {model.num_parameters() / 1e6:.0f}M parameters, fp32, "
        f"1,024 latent tokens + 128 text tokens, guidance 3.6, batch 1 ({weights / 1e9:.2f} GB of weights)"
    ]

    def generate(jacobi):
        x = model.sample(noise, y, mx.zeros_like(y), 3.6, jacobi=jacobi, max_iter=3)
        mx.eval(x)
        mx.eval(model.denoise(x, y))
        return x

    for jacobi in (False, True):
        x, peak = phase_peak(lambda jacobi=jacobi: generate(jacobi))
        sampler = "Jacobi (16-token chunks, at most 3 iterations)" if jacobi else "sequential"
        lines.append(f"  {sampler} sample + score step: peak {peak / weights:.2f}x the weight bytes")

    def keep_everything():
        score = mx.grad(lambda v: mx.sum(model.log_prob(v, y)))(x)
        mx.eval(score)

    _, peak = phase_peak(keep_everything)
    lines.append(f"  score step keeping every layer's activations (no recompute): {peak / weights:.2f}x")
    return lines


def text_quantization_effect(root: Path) -> list[str]:
    """What 8-bit T5 changes (random weights, fp32 compute): the features of T5-XL's width with 2
    of its 24 layers, and the latents the reduced flow samples from them (sequential, guided)."""
    ids = mx.random.randint(0, report.REDUCED_T5.vocab_size, (2, report.REDUCED_FLOW.txt_size))
    features = {}
    for bits in (None, 8):
        encoder = T5Encoder.from_pretrained(root / "t5_reduced", dtype=mx.float32, quantize=bits)
        features[bits] = encoder(ids, mx.ones(ids.shape, dtype=mx.int32))
        mx.eval(features[bits])
    relative = float(mx.max(mx.abs(features[8] - features[None])) / mx.max(mx.abs(features[None])))
    flow = StarFlow.from_pretrained(root / "flow_reduced", dtype=mx.float32)
    for block in flow.blocks:  # the random files' proj_out is small; make the text matter
        block.proj_out.weight = block.proj_out.weight * 5
    noise = mx.random.normal((1, 16, 16, 4), key=mx.random.key(0))
    latents = {}
    for bits, y in features.items():
        latents[bits] = flow.sample(noise, y[:1], y[1:], 3.6)
        mx.eval(latents[bits])
    moved = float(mx.max(mx.abs(latents[8] - latents[None])) / mx.max(mx.abs(latents[None])))
    rms = float(
        mx.sqrt(mx.mean(mx.square(latents[8] - latents[None]))) / mx.sqrt(mx.mean(mx.square(latents[None])))
    )
    return [
        "8-bit T5 (random weights, T5-XL width, 2 of 24 layers, fp32 compute): features moved by "
        f"{relative:.2%} of their largest value; the reduced flow's guided sample by {moved:.2%} "
        f"(max) / {rms:.2%} (rms) of its scale"
    ]


def build_parser():
    return report.build_parser("starflow_mlx.memory_report", __doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: report_memory(args))


def report_memory(args: argparse.Namespace) -> int:
    """Write the weight files, measure each phase, print the report (and its JSON)."""
    on_gpu = mx.default_device() == mx.gpu
    info = mx.device_info()
    device = f"MLX {mx.default_device()} ({info.get('device_name', info.get('architecture', '?'))})"
    created_root = args.work_dir is None or not args.work_dir.exists()
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="starflow_memory_"))
    wrote = False
    notes = [
        "peak: the most bytes MLX's arrays held during the phase, everything resident included; "
        "weights: the bytes of the weights resident then; estimate: what `generate` checks against.",
        "Loading and decoding use the 3B release's shapes (flow 3,858,281,544 parameters, flan-T5-XL "
        "encoder, SD-VAE, one 256x256 image, batch 1, guidance 3.6).",
    ]
    if not on_gpu:
        notes.append(
            "On this CPU, encode/sample/denoise use REDUCED shapes: flow width 512, layers 1 1 1 1 1 2, "
            "16x16 latent tokens + 128 text tokens; T5 width 2048 with 2 of 24 layers; Jacobi with one "
            "iteration per chunk. Quantized options' compute phases are not run on CPU (MLX's "
            "quantized CPU kernels run at ~0.1 GFLOPS in bf16 here); their rows give the estimate only."
        )
    try:
        wrote = not report.work_files_present(root)
        if wrote:
            write_files(root)
        report.write_vae_config(root / "vae")
        results = []
        for option in args.options:
            print(f"measuring {option}", flush=True)
            results += measure_option(option, root, full_compute=on_gpu)
        extra = [] if args.no_reference else reference_run()
        extra += text_quantization_effect(root)
    finally:
        if not args.keep_files and (wrote or created_root):
            report.remove_work_files(root, created_root)
    print()
    print(report.format_results(results, device, notes))
    measured = {(r.option, r.phase): r.peak for r in results if r.shape == "3B" and r.peak is not None}
    print("\n3B, batch 1, per option: phases measured at full shape where given above, the rest estimated")
    for option in args.options:
        phases = dict(report.release_estimate(option).phases)
        phases.update({phase: peak for (opt, phase), peak in measured.items() if opt == option})
        listed = ", ".join(f"{phase} {value / 1e9:.2f}" for phase, value in phases.items())
        disk = report.first_run_disk(option)
        print(f"  {option}: peak {max(phases.values()) / 1e9:.2f} GB ({listed} GB)")
        print(
            f"         first-run disk {sum(disk.values()) / 1e9:.1f} GB: "
            + ", ".join(f"{what} {size / 1e9:.1f} GB" for what, size in disk.items())
        )
    print("\nWhat you need (README):\n" + report.needs_table(measured), flush=True)
    print("\n" + "\n".join(extra))
    if args.json:
        results_json = {"device": device, "notes": notes, **report.summary(results), "reference": extra}
        args.json.write_text(json.dumps(results_json, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
