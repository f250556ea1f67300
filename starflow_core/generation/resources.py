"""The memory and disk a generation run needs, from the configurations alone (framework-free).

The generate commands compare these with the machine before anything is downloaded or loaded
and refuse, naming an option that fits, a run that cannot fit; the memory report prints them
next to measured peaks. Sizes are decimal (1 GB = 1e9 bytes).

Memory is a sequence of phases (what the pipeline holds at each step: T5 is freed before the
flow loads, the VAE loads for decoding): load text encoder, encode text, load flow, sample,
denoise, decode; the peak is the largest. Weights are exact (from the shapes); activations and caches are formulas whose
constants were measured with MLX on CPU (python -m starflow_mlx.memory_report prints the
estimate beside each measurement).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping

from starflow_core.config import FlowConfig
from starflow_core.generation.precision import DTYPE_BYTES, Precision
from starflow_core.official.shapes import expected_weight_shapes

GB = 1e9
FULL_PRECISION_LINEARS = ("proj_in", "proj_out", "proj_txt")  # as starflow_mlx.quantize
SD_VAE_PARAMETERS = 83_653_863  # stabilityai/sd-vae-ft-ema (diffusers AutoencoderKL, 4 blocks)
SAFETY = 1.1  # the check asks for 10% more than the estimate: allocator slack, the OS's share


# ----- weights --------------------------------------------------------------------------------
def quantized_bytes(shape: tuple[int, ...], bits: int, group_size: int, scale_bytes: int) -> int:
    """A (out, in) weight packed to `bits`, plus a scale and a bias per group of `group_size`."""
    rows, cols = shape
    return rows * cols * bits // 8 + 2 * rows * (cols // group_size) * scale_bytes


def _tensor_bytes(shape: tuple[int, ...], dtype: str, quantize: int | None, group_size: int) -> int:
    if quantize is not None:
        return quantized_bytes(shape, quantize, group_size, DTYPE_BYTES[dtype])
    return math.prod(shape) * DTYPE_BYTES[dtype]


def flow_quantizes(name: str, shape: tuple[int, ...], group_size: int) -> bool:
    """Whether starflow_mlx.quantize quantizes this flow weight: a Linear's (2-D `.weight`)
    outside proj_in / proj_out / proj_txt whose input width splits into whole groups."""
    if not name.endswith(".weight") or len(shape) != 2:
        return False
    return name.split(".")[-2] not in FULL_PRECISION_LINEARS and shape[1] % group_size == 0


def flow_weight_bytes(
    config: FlowConfig, dtype: str, quantize: int | None = None, group_size: int = 64
) -> int:
    total = 0
    for name, shape in expected_weight_shapes(config).items():
        quantized = quantize is not None and flow_quantizes(name, shape, group_size)
        total += _tensor_bytes(shape, dtype, quantize if quantized else None, group_size)
    return total


def flow_parameters(config: FlowConfig) -> int:
    return sum(math.prod(shape) for shape in expected_weight_shapes(config).values())


@dataclasses.dataclass(frozen=True)
class T5Shape:
    """The T5 encoder's size (transformers config.json fields); defaults are google/flan-t5-xl."""

    vocab_size: int = 32128
    d_model: int = 2048
    d_kv: int = 64
    num_heads: int = 32
    d_ff: int = 5120
    num_layers: int = 24
    relative_attention_num_buckets: int = 32
    gated: bool = True

    @classmethod
    def from_hf(cls, config: Mapping) -> T5Shape:
        fields = {f.name for f in dataclasses.fields(cls)} - {"gated"}
        values = {key: config[key] for key in fields if key in config}
        return cls(**values, gated=str(config.get("feed_forward_proj", "relu")).startswith("gated"))

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        inner, shapes = self.num_heads * self.d_kv, {"shared.weight": (self.vocab_size, self.d_model)}
        for i in range(self.num_layers):
            block = f"encoder.block.{i}.layer"
            for name in ("q", "k", "v"):
                shapes[f"{block}.0.SelfAttention.{name}.weight"] = (inner, self.d_model)
            shapes[f"{block}.0.SelfAttention.o.weight"] = (self.d_model, inner)
            if i == 0:
                shapes[f"{block}.0.SelfAttention.relative_attention_bias.weight"] = (
                    self.relative_attention_num_buckets,
                    self.num_heads,
                )
            shapes[f"{block}.0.layer_norm.weight"] = (self.d_model,)
            for name in ("wi_0", "wi_1") if self.gated else ("wi",):
                shapes[f"{block}.1.DenseReluDense.{name}.weight"] = (self.d_ff, self.d_model)
            shapes[f"{block}.1.DenseReluDense.wo.weight"] = (self.d_model, self.d_ff)
            shapes[f"{block}.1.layer_norm.weight"] = (self.d_model,)
        shapes["encoder.final_layer_norm.weight"] = (self.d_model,)
        return shapes


def t5_quantizes(shape: tuple[int, ...], group_size: int) -> bool:
    """As starflow_mlx.t5: linears and the token embedding whose rows split into whole groups."""
    return len(shape) == 2 and shape[1] % group_size == 0


def t5_weight_bytes(t5: T5Shape, dtype: str, quantize: int | None = None, group_size: int = 64) -> int:
    total = 0
    for shape in t5.weight_shapes().values():
        quantized = quantize is not None and t5_quantizes(shape, group_size)
        total += _tensor_bytes(shape, dtype, quantize if quantized else None, group_size)
    return total


# ----- activations and caches (constants measured with MLX on CPU, see the module docstring) ----
@dataclasses.dataclass(frozen=True)
class RunShape:
    """What one pipeline call computes: batch, latent tokens, image pixels, guidance, sampler."""

    batch: int = 1
    tokens: int = 1024  # latent tokens per image (h * w / patch^2)
    pixels: int = 256 * 256  # decoded image pixels (H * W)
    guided: bool = True
    block_size: int = 16  # Jacobi chunk (1 for sequential sampling)


def encode_bytes(t5: T5Shape, rows: int, length: int, dtype: str) -> int:
    """T5 inference: fp32 scores, probabilities and the shared bias (rows, heads, L, L), the FF
    hidden states, a few (rows, L, d_model) residual copies."""
    scores = 4 * rows * t5.num_heads * length * length * 4
    feed_forward = 3 * rows * length * t5.d_ff * max(DTYPE_BYTES[dtype], 4)
    return scores + feed_forward + 6 * rows * length * t5.d_model * 4


def kv_cache_bytes(config: FlowConfig, rows: int, tokens: int, dtype: str) -> int:
    """The largest block's KV cache: keys and values for every layer and position (text first)."""
    largest = 0
    for i, layers in enumerate(config.layers_per_block):
        capacity = tokens + (config.txt_size if config.block_has_text(i) else 0)
        largest = max(largest, 2 * layers * rows * capacity * config.channels * DTYPE_BYTES[dtype])
    return largest


def sample_bytes(config: FlowConfig, shape: RunShape, dtype: str) -> int:
    """Sampling: the largest block's KV cache, plus the text prefill's activations (about ten
    (rows, txt_size, expansion * C) arrays, measured 10.2x in fp32, 6x in bf16) and one step's."""
    rows = shape.batch * (2 if shape.guided else 1)
    capacity = shape.tokens + config.txt_size
    heads = config.channels // config.head_dim
    hidden = config.expansion * config.channels
    prefill = (10 if dtype == "float32" else 6) * rows * config.txt_size * hidden * 4
    step = rows * shape.block_size * (10 * hidden * 4 + 3 * heads * capacity * 4)
    return kv_cache_bytes(config, rows, shape.tokens, dtype) + prefill + step


def denoise_bytes(config: FlowConfig, tokens: int, dtype: str) -> int:
    """One row's score step with per-layer recompute (attention and MLP apart, attention in head
    groups of about 8 MB of scores): every layer's input and a few arrays per block, kept for
    the backward pass, plus one layer's backward scratch. Measured (MLX, CPU) on one width-3072
    layer at 1,152 positions: 233 bytes per (S x C) element in fp32, 123 in bf16; a 13-layer,
    width-1024 flow at 1,024 tokens (fp32) held 0.46 GB over its weights, this formula 0.46."""
    act = DTYPE_BYTES[dtype]
    inputs, longest = 0, 0
    for i, layers in enumerate(config.layers_per_block):
        length = tokens + (config.txt_size if config.block_has_text(i) else 0)
        inputs += (layers + 4 * (layers > 0)) * length * config.channels * act
        longest = max(longest, length) if layers else longest
    heads = config.channels // config.head_dim
    group = min(heads, max(1, 8 * 2**20 // (longest * longest * 4)))  # heads per recomputed group
    per_element = 233 if dtype == "float32" else 123
    return int(inputs + 16.6 * group * longest**2 + per_element * longest * config.channels)


def decode_bytes(pixels: int, dtype: str) -> int:
    """SD-VAE decoding of one image (convolutions in bands of rows, starflow_mlx.vae.Conv2d):
    measured 0.48 GB (fp32) and 0.56 GB (bf16, fp32 group norms) at 256x256."""
    return int((7.4 if dtype == "float32" else 8.5) * pixels * 1024)


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    weights: dict[str, int]  # flow, text encoder, VAE
    phases: dict[str, int]  # peak bytes while each phase runs, what is resident included

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)


def estimate_memory(
    config: FlowConfig,
    precision: Precision,
    shape: RunShape = RunShape(),
    t5: T5Shape | None = None,
    vae_parameters: int = 0,
    denoise: bool = True,
) -> MemoryEstimate:
    """Phase by phase, in pipeline order: T5 is loaded, encodes and is freed; then the flow loads,
    samples and denoises; the VAE loads for decoding (the flow stays for the next batch)."""
    dtype, text_dtype = precision.dtype, precision.text_dtype
    flow = flow_weight_bytes(config, dtype, precision.quantize, precision.group_size)
    vae = vae_parameters * DTYPE_BYTES[dtype]
    largest = max(math.prod(s) for s in expected_weight_shapes(config).values())
    phases = {"load flow": flow + largest * (4 + DTYPE_BYTES[dtype])}
    weights = {"flow": flow, "vae": vae, "text encoder": 0}
    if t5 is not None:
        text = t5_weight_bytes(t5, text_dtype, precision.text_quantize, precision.group_size)
        weights["text encoder"] = text
        largest_t5 = max(math.prod(s) for s in t5.weight_shapes().values())
        rows = min(shape.batch, 8) + 1  # encode_prompts: chunks of 8 prompts, and ""
        phases = {
            "load text encoder": text + largest_t5 * (4 + DTYPE_BYTES[text_dtype]),
            "encode text": text + encode_bytes(t5, rows, config.txt_size, text_dtype),
            **phases,
        }
    phases["sample"] = flow + sample_bytes(config, shape, dtype)
    if denoise and config.noise_std > 0:
        phases["denoise"] = flow + denoise_bytes(config, shape.tokens, dtype)
    if vae_parameters:
        phases["decode"] = flow + vae + decode_bytes(shape.pixels, dtype)
    return MemoryEstimate(weights, phases)


# ----- the machine --------------------------------------------------------------------------
def physical_memory() -> int:
    """Bytes of RAM (Linux and macOS)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def idle_cores(cpus: int, load: float) -> int:
    """Cores not busy with other work: `cpus` less the 1-minute load average, at least 1."""
    return max(1, min(cpus, cpus - int(load + 0.5)))


def cpu_threads(requested: int | None, environ: Mapping[str, str], cpus: int, load: float) -> int | None:
    """Threads for CPU sampling: `requested` (--threads), else None where OMP_NUM_THREADS is set
    (the framework follows it), else the idle cores, so a loaded machine is not oversubscribed
    (torch's default, one thread per core, made sampling several times slower under load)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return requested
    if environ.get("OMP_NUM_THREADS"):
        return None
    return idle_cores(cpus, load)


def machine_cpus() -> tuple[int, float]:
    """(cores this process may run on, the 1-minute load average; 0 where unknown)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return cpus, load


def peak_resident_memory(platform: str | None = None, maxrss: int | None = None) -> int:
    """Bytes of the most resident memory this process has held (getrusage's ru_maxrss: bytes
    on macOS, KiB on Linux)."""
    import resource
    import sys

    platform = sys.platform if platform is None else platform
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if maxrss is None else maxrss
    return maxrss if platform == "darwin" else maxrss * 1024


def describe_peak(resident: int, arrays: int | None, arrays_name: str) -> str:
    """The summary line's peak memory, the same words in both twins: the process's peak resident
    memory, and the framework's own peak (MLX arrays, CUDA tensors) where it is measured."""

    def size(n: int) -> str:
        return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"

    text = f"peak memory {size(resident)} resident (the whole process)"
    return text + (f", {size(arrays)} in {arrays_name}" if arrays else "")


def format_bytes(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:.0f} MB"
