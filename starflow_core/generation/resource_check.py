"""Refuse, before any download or allocation, a run this machine cannot hold.

The generate commands call `check_run` first: the memory the chosen options need (estimated
phase by phase, starflow_core.generation.resources) against the machine's, and the disk a
first run writes (downloads, the converted flow) against the free space where it goes. A run
that does not fit raises InsufficientResourcesError (exit 2) naming the need, what the machine
has and the options that would fit; nothing has been downloaded or written by then.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from starflow_core.config import FlowConfig
from starflow_core.generation.precision import Precision
from starflow_core.generation.resources import (
    SAFETY,
    SD_VAE_PARAMETERS,
    MemoryEstimate,
    RunShape,
    T5Shape,
    estimate_memory,
    flow_weight_bytes,
    format_bytes,
)
from starflow_core.generation.settings import GenerationSettings
from starflow_core.io import read_safetensors_header, safetensors_shapes
from starflow_core.sources.pipeline_folder import PipelineParts, read_pipeline_folder
from starflow_core.sources.releases import (
    CONVERTED,
    DiskNeed,
    OfficialRelease,
    first_run_disk,
    release_by_name,
)
from starflow_core.validation import read_json_object


class InsufficientResourcesError(ValueError):
    """The run needs more memory or disk than this machine has (names an option that fits)."""


@dataclasses.dataclass(frozen=True)
class ModelSizes:
    """What the estimate needs to know about a model, before its weights are on disk."""

    name: str
    config: FlowConfig
    t5: T5Shape | None
    vae_parameters: int
    vae_downsample: int
    sampling: GenerationSettings = GenerationSettings()
    release: OfficialRelease | None = None


def model_sizes(source: str) -> ModelSizes | None:
    """Sizes of a release (from its table) or a local pipeline folder; None for a Hub repo id
    (its configuration is unknown before it is downloaded)."""
    release = release_by_name(source)
    if release is not None:
        t5 = T5Shape() if release.text_repo else None  # google/flan-t5-xl
        parameters = SD_VAE_PARAMETERS if release.vae_repo else 0
        downsample = 8 if release.vae_repo else 1  # SD-VAE
        return ModelSizes(release.name, release.config, t5, parameters, downsample, release.sampling, release)
    if not Path(source).expanduser().is_dir():
        return None
    return parts_sizes(read_pipeline_folder(Path(source).expanduser()))


def parts_sizes(parts: PipelineParts) -> ModelSizes:
    t5 = None
    if parts.text_encoder is not None:
        t5 = T5Shape.from_hf(read_json_object(parts.text_encoder / "config.json", "convert the model again"))
    parameters = 0
    if parts.vae is not None:
        weights = next(iter(sorted(parts.vae.glob("*.safetensors"))), None)
        shapes = safetensors_shapes(read_safetensors_header(weights)) if weights else {}
        parameters = sum(_count(shape) for shape in shapes.values()) or SD_VAE_PARAMETERS
    return ModelSizes(parts.name, parts.flow_config, t5, parameters, parts.vae_downsample, parts.sampling)


def _count(shape: tuple[int, ...]) -> int:
    count = 1
    for n in shape:
        count *= n
    return count


def estimate_run(sizes: ModelSizes, precision: Precision, shape: RunShape, denoise: bool) -> MemoryEstimate:
    return estimate_memory(sizes.config, precision, shape, sizes.t5, sizes.vae_parameters, denoise)


# ----- the checks ------------------------------------------------------------------------------
def alternatives(precision: Precision, quantization: bool) -> list[tuple[str, Precision]]:
    """Smaller settings to suggest, smallest change first (quantization only where available)."""
    options = []
    if precision.dtype == "float32":
        options.append(("--dtype bfloat16", dataclasses.replace(precision, dtype="bfloat16")))
    if quantization:
        dtype = "bfloat16" if precision.dtype == "float32" else precision.dtype
        flag = "--dtype bfloat16 " if dtype != precision.dtype else ""
        for bits, text in ((8, None), (4, None), (4, 8)):
            candidate = dataclasses.replace(precision, dtype=dtype, quantize=bits, text_quantize=text)
            if (candidate.quantize or 0, candidate.text_quantize or 0) == (
                precision.quantize or 0,
                precision.text_quantize or 0,
            ):
                continue
            extra = f" --quantize-text {text}" if text else ""
            options.append((f"{flag}--quantize {bits}{extra}", candidate))
    return options


def check_memory(
    sizes: ModelSizes,
    precision: Precision,
    shape: RunShape,
    denoise: bool,
    available: tuple[int, str],
    quantization: bool,
) -> MemoryEstimate:
    """Raise InsufficientResourcesError if the estimated peak (plus SAFETY) exceeds `available`
    (bytes, and what they are: "physical memory", "Metal's recommended working set", ...)."""
    estimate = estimate_run(sizes, precision, shape, denoise)
    limit, where = available
    if estimate.peak * SAFETY <= limit:
        return estimate
    fitting = []
    for flags, candidate in alternatives(precision, quantization):
        need = estimate_run(sizes, candidate, shape, denoise).peak
        if need * SAFETY <= limit:
            fitting.append(f"{flags} needs about {format_bytes(need)}")
    advice = "; ".join(fitting[:2]) if fitting else "no option of this command fits; use a larger machine"
    raise InsufficientResourcesError(
        f"{sizes.name} with {describe(precision)} needs about {format_bytes(estimate.peak)} of memory at its "
        f"peak ({estimate.peak_phase}), and this machine has {format_bytes(limit)} ({where}): {advice}. "
        "Nothing was downloaded or loaded; --no-resource-check runs it anyway"
    )


def describe(precision: Precision) -> str:
    text = f"--dtype {precision.dtype}"
    if precision.quantize:
        text += f" --quantize {precision.quantize}"
    if precision.text_quantize:
        text += f" --quantize-text {precision.text_quantize}"
    return text


def free_disk(folder: Path) -> tuple[int, Path]:
    """Free bytes on the filesystem that would hold `folder` (its nearest existing ancestor)."""
    folder = Path(folder).expanduser().absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free, folder


def check_disk(
    release: OfficialRelease, precision: Precision, free: Callable[[Path], tuple[int, Path]] | None = None
) -> list[DiskNeed]:
    """Raise InsufficientResourcesError if a filesystem lacks the space a first run writes to it."""
    free = free or free_disk
    needs = first_run_disk(release, precision.dtype)
    by_device: dict[int, list[DiskNeed]] = {}
    for need in needs:
        _, existing = free(need.folder)
        by_device.setdefault(os.stat(existing).st_dev, []).append(need)
    for group in by_device.values():
        available, where = free(group[0].folder)
        total = sum(need.size for need in group)
        if total <= available:
            continue
        listed = ", ".join(f"{need.what} {format_bytes(need.size)}" for need in group)
        advice = ""
        if precision.dtype == "float32" and any(need.what.startswith(CONVERTED) for need in group):
            smaller = total - flow_weight_bytes(release.config, "float32") // 2  # a bf16 converted copy
            if smaller <= available:
                advice = f"; with --dtype bfloat16 it writes {format_bytes(smaller)}"
        raise InsufficientResourcesError(
            f"the first run of {release.name} writes about {format_bytes(total)} under {where} ({listed}) "
            f"but only {format_bytes(available)} is free{advice}. Free some space or point HF_HUB_CACHE "
            "and STARFLOW_MLX_CACHE at a larger disk; nothing was downloaded"
        )
    return needs
