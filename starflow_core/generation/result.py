"""What one pipeline call produced: `Generation` (numpy arrays, the same in both twins) and
`GeneratedImages`, what `pipe(...)` returns: a sequence of PIL images that knows its seeds
and parameters and saves itself as the command line does."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.generation.images import to_uint8
from starflow_core.generation.precision import Precision
from starflow_core.generation.record import flat_metadata
from starflow_core.generation.settings import GenerationSettings
from starflow_core.version import package_version


# ----- results ----------------------------------------------------------------------------
@dataclasses.dataclass
class Generation:
    """What one pipeline call produced; arrays are numpy float32, NHWC in both twins.

    `latents` are the flow's samples (after denoising when it ran); `images` the decoded
    pixels in [-1, 1] before quantisation to uint8.
    """

    model: str
    prompts: list[str]
    seeds: list[int]
    settings: GenerationSettings
    height: int
    width: int
    denoise: str  # "score" | "decoder" | "none"
    steps: int
    latents: np.ndarray  # (B, h, w, C)
    images: np.ndarray  # (B, H, W, 3)
    precision: Precision | None = None  # dtypes and quantization the pipeline ran in
    source: str | None = None  # what loads the model by name (release, repo id, folder path)
    decoder: str | None = None  # the fine-tuned decoder used, when one was
    framework: str = ""  # "mlx" | "torch"
    seeds_drawn: bool = False  # True when the seeds were drawn at random (none were given)
    edit: dict[str, Any] = dataclasses.field(default_factory=dict)  # image-to-image / inpainting inputs
    negative_prompt: str | None = None  # guidance's null condition instead of "" (None: "")

    def uint8(self) -> np.ndarray:
        return to_uint8(self.images)

    def parameters(self, index: int) -> dict[str, Any]:
        """Everything needed to make image `index` again (JSON values; the "parameters" entry of
        the image's metadata and its `--metadata` sidecar)."""
        settings = self.settings
        precision = self.precision or Precision()
        return {
            "model": self.source or self.model,
            "model_name": self.model,
            "prompt": self.prompts[index],
            "seed": self.seeds[index],
            "guidance": settings.guidance,
            "sampler": "jacobi" if settings.jacobi else "sequential",
            "jacobi_block_size": settings.block_size,
            "jacobi_tol": settings.tol,
            "jacobi_max_iter": settings.max_iter,
            "height": self.height,
            "width": self.width,
            "denoise": self.denoise,
            "decoder": self.decoder,
            "dtype": precision.dtype,
            "text_dtype": precision.text_dtype,
            "quantize": precision.quantize,
            "text_quantize": precision.text_quantize,
            "group_size": precision.group_size,
            "steps": self.steps,
            "framework": self.framework,
            "version": package_version(),
            **({"negative_prompt": self.negative_prompt} if self.negative_prompt else {}),
            **self.edit,
        }

    def metadata(self, index: int) -> dict[str, str]:
        """PNG tEXt entries describing image `index`: readable ones, and "parameters" (JSON)."""
        return flat_metadata(self.parameters(index))

    def pil_images(self) -> list:
        """PIL images at their generated size, their metadata entries in `.info`."""
        from PIL import Image

        images = []
        for index, row in enumerate(self.uint8()):
            image = Image.fromarray(row)
            image.info.update(self.metadata(index))
            images.append(image)
        return images


class GeneratedImages(Sequence):
    """What `pipe(prompts)` returns: a sequence of PIL images (len, indexing, iteration, as the
    plain list it used to be), with `.images`, `.seeds`, `.prompts`, `.parameters` (one dict
    per image: everything needed to make it again), `.generation` (the arrays) and `.save`."""

    def __init__(self, generation: Generation):
        self.generation = generation
        self.images = generation.pil_images()

    @property
    def seeds(self) -> list[int]:
        return list(self.generation.seeds)

    @property
    def prompts(self) -> list[str]:
        return list(self.generation.prompts)

    @property
    def parameters(self) -> list[dict[str, Any]]:
        return [self.generation.parameters(i) for i in range(len(self.images))]

    def __getitem__(self, index):
        return self.images[index]

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"GeneratedImages({len(self)} image(s), prompts={self.prompts!r}, seeds={self.seeds})"

    def save(
        self,
        path_or_folder: str | Path,
        *,
        overwrite: bool = False,
        metadata: bool = False,
        grid: bool = False,
    ) -> list[Path]:
        """Write the images as the command line does and return the paths written.

        `path_or_folder` ending in .png, .jpg, .jpeg or .webp is a file in that format (several
        images: `<stem>_0000_seed<S><suffix>`, ...); anything else is a folder
        (`0000_seed<S>.png`, ...). Existing files are kept unless `overwrite`: new ones take the
        next free `_1`, `_2` name. Images smaller than 64 px are enlarged (nearest neighbour)
        as the command line does. `metadata` adds a JSON sidecar per file; `grid` writes one
        grid image instead (rows labelled with their prompt when each row holds one)."""
        from starflow_core.generation.writer import ImageWriter

        writer = ImageWriter(Path(path_or_folder), len(self), overwrite=overwrite, sidecar=metadata)
        writer.check()
        pixels = self.generation.uint8()
        for index in range(len(self)):
            record = self.generation.parameters(index)
            if grid:
                writer.add_to_grid(pixels[index], record)
            else:
                writer.write_image(index, pixels[index], record)
        if grid:
            writer.write_grid(columns=_grid_columns(self.prompts, self.seeds))
        return writer.written


def _grid_columns(prompts: list[str], seeds: list[int]) -> int | None:
    """One row per prompt when the images are every prompt with the same seeds in order."""
    distinct = list(dict.fromkeys(prompts))
    per_row = len(prompts) // len(distinct)
    if len(distinct) > 1 and all(prompts[i] == distinct[i // per_row] for i in range(len(prompts))):
        row_seeds = seeds[:per_row]
        if all(seeds[i] == row_seeds[i % per_row] for i in range(len(seeds))):
            return per_row
    return None
