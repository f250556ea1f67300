"""The framework-free half of the memory report (python -m starflow_mlx.memory_report and its
torch twin): the model shapes it measures, random weight files written without a framework,
and the tables it prints.

The report writes files with the real shapes of the 3B release (the flow in the run's dtype, as
its converted cache; flan-T5-XL's encoder in fp32, as on the Hub; the SD-VAE), filled with
random values (no download), and measures each pipeline phase's peak memory. Loading always
uses the full shapes. The compute phases (encode, sample, denoise, decode) use the full shapes
on a GPU and, on a CPU, the reduced shapes below, which the output states.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from starflow_core.config import FlowConfig
from starflow_core.generation.precision import Precision
from starflow_core.generation.resources import (
    GB,
    SD_VAE_PARAMETERS,
    RunShape,
    T5Shape,
    estimate_memory,
    format_bytes,
)
from starflow_core.io import atomic_path, atomic_write_text
from starflow_core.official.pth_reader import convert_float_array
from starflow_core.presets import preset

RELEASE_CONFIG = preset("starflow-3b-t2i-256")
# The options of the report, as the generate command spells them.
OPTIONS = {
    "bf16": Precision("bfloat16"),
    "8-bit": Precision("bfloat16", quantize=8, text_quantize=8),
    "4-bit": Precision("bfloat16", quantize=4, text_quantize=8),
}
# Compute phases on a CPU: the 3B's text shape and 16x16 latent tokens, width 512 and one layer
# per block (two in the deep one), T5-XL's width with 2 of its 24 layers. Activations and caches
# depend on width, tokens and a block's layers; the report prints the estimate for these shapes
# beside the measurement, and the 3B's from the same formulas.
REDUCED_FLOW = RELEASE_CONFIG.replace(channels=512, img_size=16, layers_per_block=(1, 1, 1, 1, 1, 2))
REDUCED_T5 = dataclasses.replace(T5Shape(), num_layers=2)
# The reference measurement: a guided, score-denoised generation at the 3B's 1,024 tokens with a
# 164M-parameter flow of width 1024 in fp32 (9.4x its weight bytes before per-layer recompute).
REFERENCE_FLOW = RELEASE_CONFIG.replace(channels=1024, layers_per_block=(2, 2, 2, 2, 2, 3))
T5_CONFIG_JSON = {
    "model_type": "t5",
    "d_model": 2048,
    "d_kv": 64,
    "d_ff": 5120,
    "num_layers": 24,
    "num_heads": 32,
    "vocab_size": 32128,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
}
# The SD-VAE's diffusers config, written by both twins so either reads the other's work folder
SD_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}
# the folders of random weights the report writes into its work folder
WORK_FOLDERS = ("flow", "t5", "vae", "flow_reduced", "t5_reduced")
WEIGHT_FILES = {
    "flow": "model.safetensors",
    "t5": "model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "flow_reduced": "model.safetensors",
    "t5_reduced": "model.safetensors",
}
SAFETENSORS_DTYPES = {"float32": ("F32", np.float32), "bfloat16": ("BF16", np.uint16)}


def write_random_safetensors(
    path: Path,
    shapes: Mapping[str, tuple[int, ...]],
    dtype: str,
    scale: Callable[[str], float],
    seed: int = 0,
) -> int:
    """A safetensors file of random normal values (times scale(name)), written tensor by tensor
    (memory: one tensor). Large files repeat one block of random numbers; the values only need
    to be finite and of the right scale for loading. Returns the file size."""
    code, _ = SAFETENSORS_DTYPES[dtype]
    itemsize = 4 if dtype == "float32" else 2
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape) * itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    block = np.random.default_rng(seed).standard_normal(1 << 20, dtype=np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little") + encoded)
        for i, (name, shape) in enumerate(shapes.items()):
            count = math.prod(shape)
            values = np.resize(np.roll(block, i), count) * np.float32(scale(name))
            if dtype == "bfloat16":
                values = convert_float_array(values, "float32", "bfloat16")
            handle.write(np.ascontiguousarray(values).data)
    return path.stat().st_size


def flow_scale(name: str) -> float:
    """Weights 0.02; norm weights 1 (LayerNorm) or 0 (the offset RMSNorm); biases small."""
    if name.endswith("norm.weight"):
        return 0.0 if "final_norm" in name else 1.0
    return 0.002 if name.endswith(".bias") else 0.02


def write_t5_folder(folder: Path, t5: T5Shape | None = None) -> None:
    """config.json + fp32 model.safetensors holding the encoder (as flan-t5-xl's shards do)."""
    t5 = t5 or T5Shape()
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(T5_CONFIG_JSON, num_layers=t5.num_layers)
    # weights first: a full disk then leaves no config.json announcing weights that are not there
    write_random_safetensors(
        folder / "model.safetensors", t5.weight_shapes(), "float32", t5_scale(t5), seed=1
    )
    atomic_write_text(folder / "config.json", json.dumps(config))


def t5_scale(t5: T5Shape) -> Callable[[str], float]:
    """transformers' T5 initialisation (factor 1): the scales that keep activations of order one,
    so quantization errors are measured on a well-conditioned network."""

    def scale(name: str) -> float:
        if "layer_norm" in name or name.startswith("shared"):
            return 1.0
        if name.endswith(".q.weight"):
            return (t5.d_model * t5.d_kv) ** -0.5
        if name.endswith((".o.weight", ".wo.weight")):
            return (t5.num_heads * t5.d_kv if ".o." in name else t5.d_ff) ** -0.5
        return t5.d_model**-0.5  # k, v, wi

    return scale


def write_flow_folder(folder: Path, config: FlowConfig, dtype: str) -> None:
    """Our flow folder (config.json + model.safetensors) in `dtype`, as the converted cache."""
    from starflow_core.official.shapes import expected_weight_shapes

    folder.mkdir(parents=True, exist_ok=True)
    # weights first: a full disk then leaves no config.json announcing weights that are not there
    write_random_safetensors(folder / "model.safetensors", expected_weight_shapes(config), dtype, flow_scale)
    config.save(folder / "config.json")


# ----- results and tables ----------------------------------------------------------------------
@dataclasses.dataclass
class PhaseResult:
    option: str
    phase: str
    shape: str  # "3B" or "reduced"
    peak: int | None  # bytes measured (None: not measured here)
    weights: int  # bytes of the weights resident in that phase
    estimate: int  # the estimator's peak for the same shapes

    @property
    def ratio(self) -> float | None:
        return None if self.peak is None else self.peak / max(self.weights, 1)


def release_estimate(option: str):
    return estimate_memory(RELEASE_CONFIG, OPTIONS[option], RunShape(batch=1), T5Shape(), SD_VAE_PARAMETERS)


def first_run_disk(option: str) -> dict[str, int]:
    """What a first run writes with an empty cache (the release's downloads and conversion)."""
    from starflow_core.generation.resources import flow_parameters, flow_weight_bytes
    from starflow_core.sources.releases import RELEASES

    release = RELEASES["starflow-3b-t2i-256"]
    return {
        "apple/starflow .pth (fp32)": flow_parameters(RELEASE_CONFIG) * 4,
        "flan-t5-xl encoder shards (at most)": release.text_download_bytes,
        "sd-vae-ft-ema": release.vae_download_bytes,
        "converted flow (bf16)": flow_weight_bytes(RELEASE_CONFIG, OPTIONS[option].dtype),
    }


def format_results(results: list[PhaseResult], device: str, notes: list[str]) -> str:
    lines = [f"Memory report, measured on {device}", *notes, ""]
    header = f"{'option':7} {'phase':18} {'shapes':8} {'peak':>9} {'weights':>9} {'ratio':>6} {'estimate':>9}"
    lines += [header, "-" * len(header)]
    for r in results:
        peak = format_bytes(r.peak) if r.peak is not None else "-"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        lines.append(
            f"{r.option:7} {r.phase:18} {r.shape:8} {peak:>9} {format_bytes(r.weights):>9} {ratio:>6} "
            f"{format_bytes(r.estimate):>9}"
        )
    return "\n".join(lines)


def needs_table(measured_load: Mapping[tuple[str, str], int]) -> str:
    """The README's "What you need" table: the 3B's peak per option (the load phases measured
    here where given, the compute phases estimated) and the first run's disk."""
    rows = [
        "| Option | Flags | Peak memory (phase) | Weights (flow / T5) | First-run disk |",
        "|---|---|---|---|---|",
    ]
    flags = {
        "bf16": "--dtype bfloat16",
        "8-bit": "--quantize 8 --quantize-text 8",
        "4-bit": "--quantize 4 --quantize-text 8",
    }
    for option in OPTIONS:
        estimate = release_estimate(option)
        phases = dict(estimate.phases)
        for (opt, phase), peak in measured_load.items():
            if opt == option and phase in phases:
                phases[phase] = peak
        peak_phase = max(phases, key=phases.get)
        disk = sum(first_run_disk(option).values())
        weights = (
            f"{format_bytes(estimate.weights['flow'])} / {format_bytes(estimate.weights['text encoder'])}"
        )
        rows.append(
            f"| {option} | `{flags[option]}` | {format_bytes(phases[peak_phase])} ({peak_phase}) | {weights} "
            f"| {format_bytes(disk)} |"
        )
    return "\n".join(rows)


def summary(results: list[PhaseResult]) -> dict:
    return {
        "results": [dataclasses.asdict(r) for r in results],
        "targets": {"bf16 peak": 9 * GB, "4-bit flow + 8-bit T5 peak": 4 * GB},
    }


# ----- the work folder --------------------------------------------------------------------
def write_vae_config(folder: Path) -> None:
    """The SD-VAE's full diffusers config.json (rewritten on reuse: older reports wrote less)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(SD_VAE_CONFIG, indent=2) + "\n")


def work_files_present(root: Path) -> bool:
    """Every weight file of the report is already in `root` (kept by --keep-files, either twin)."""
    return all((root / folder / name).is_file() for folder, name in WEIGHT_FILES.items())


def remove_work_files(root: Path, created_root: bool) -> None:
    """Delete the weight folders this run wrote (13 GB), and `root` itself if this run created it."""
    import shutil

    for folder in WORK_FOLDERS:
        shutil.rmtree(root / folder, ignore_errors=True)
    if created_root:
        shutil.rmtree(root, ignore_errors=True)


def build_parser(module: str, description: str):
    """The report's options (each with its help) for `module`: starflow_mlx.memory_report (with
    the quantized options) or starflow_torch.memory_report (with --device)."""
    from starflow_core.command_line import command_parser

    parser = command_parser(module, description)
    if module.startswith("starflow_torch"):
        parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    else:
        parser.add_argument(
            "--options",
            nargs="+",
            choices=list(OPTIONS),
            default=list(OPTIONS),
            help="the precisions to measure: bf16, 8-bit (flow and T5) and 4-bit (flow; T5 8-bit)",
        )
    add_common_arguments(parser)
    if not module.startswith("starflow_torch"):
        parser.add_argument(
            "--no-reference",
            action="store_true",
            help="skip the reference run (a 164M-parameter flow of width 1024 at 1,024 tokens, fp32)",
        )
    return parser


def add_common_arguments(parser) -> None:
    """The options both twins' reports share, each with its help."""
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="where the random weight files go (13 GB; default: a temporary folder); files another "
        "run kept there with --keep-files, by either twin, are reused",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument(
        "--keep-files",
        action="store_true",
        help="keep the weight files this run writes (otherwise they are deleted at the end)",
    )
