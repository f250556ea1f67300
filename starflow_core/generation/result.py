"""What one pipeline call produced (numpy arrays, the same in both twins)."""

from __future__ import annotations

import dataclasses

import numpy as np

from starflow_core.generation.images import to_uint8
from starflow_core.generation.precision import Precision
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
    edit: dict[str, str] = dataclasses.field(default_factory=dict)  # image-to-image / inpainting inputs

    def uint8(self) -> np.ndarray:
        return to_uint8(self.images)

    def metadata(self, index: int) -> dict[str, str]:
        """PNG tEXt entries describing image `index` (enough to reproduce it)."""

        settings = self.settings
        return {
            "model": self.model,
            "prompt": self.prompts[index],
            "seed": str(self.seeds[index]),
            "cfg": f"{settings.guidance:g}",
            "sampler": settings.sampler_name(),
            "steps": str(self.steps),
            "height": str(self.height),
            "width": str(self.width),
            "denoise": self.denoise,
            "version": f"starflow-mlx {package_version()}",
            **(self.precision.metadata() if self.precision is not None else {}),
            **self.edit,
        }

    def pil_images(self) -> list:
        from PIL import Image

        return [Image.fromarray(row) for row in self.uint8()]
