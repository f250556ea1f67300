"""How to sample (GenerationSettings) and the check that a sample is finite."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from starflow_core.field_types import check_field_types


class NonFiniteSampleError(ValueError):
    """A sample holds NaN or inf (broken weights, overflow in a low-precision dtype)."""


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """How to sample; `None` fields take the model's defaults (model_index.json "sampling")."""

    guidance: float = 0.0
    jacobi: bool = False
    block_size: int = 16
    tol: float = 1e-3
    max_iter: int = 32

    def __post_init__(self) -> None:
        check_field_types(self)  # model_index.json "sampling" values of the wrong type, NaN tolerances
        if self.guidance < 0 or not math.isfinite(self.guidance):
            raise ValueError(f"guidance (cfg) must be a finite number >= 0, got {self.guidance}")
        if self.block_size < 1 or self.max_iter < 1:
            raise ValueError(
                f"block_size and max_iter must be >= 1, got {self.block_size} and {self.max_iter}"
            )
        if self.tol <= 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")

    def sampler_name(self) -> str:
        if not self.jacobi:
            return "sequential"
        return f"jacobi(block_size={self.block_size}, tol={self.tol:g}, max_iter={self.max_iter})"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerationSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown sampling settings {unknown}; valid: {sorted(names)}")
        return cls(**values)

    def merged(self, **overrides: Any) -> GenerationSettings:
        """These settings with every override that is not None applied."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


# ----- pixels ---------------------------------------------------------------------------
GUIDANCE_USUAL = 100.0  # beyond this a non-finite sample is blamed on the guidance (usual: 0 to ~10)


def check_finite(samples: np.ndarray, seeds: Sequence[int], what: str, guidance: float = 0.0) -> None:
    bad = [seed for seed, row in zip(seeds, samples, strict=True) if not np.isfinite(row).all()]
    if not bad:
        return
    if abs(guidance) > GUIDANCE_USUAL:
        raise NonFiniteSampleError(
            f"{what} for seed(s) {bad} contain NaN or inf; nothing was written. The guidance {guidance:g} "
            "is far beyond the usual range (0 to about 10) and overflows: lower --cfg"
        )
    raise NonFiniteSampleError(
        f"{what} for seed(s) {bad} contain NaN or inf; nothing was written. Check the model weights "
        "(re-convert them) or use a wider --dtype (float32)"
    )
