"""Sample sets for evaluation: N samples written as numbered shards, resumable, data-parallel.

A sample set is a folder:

    manifest.json          the generation parameters (model, count, conditions, seeds, sampler, ...)
    samples_000000.npz     arr_0: (n, H, W, 3) uint8 NHWC, the layout of ADM's evaluation suite;
    samples_000001.npz     arr_1: class labels (label models); seeds; prompts (text models)
    ...

Sample j (0 <= j < N) is drawn with seed `first_seed + j` under condition j mod the number of
conditions (class j mod C: class-balanced; or line j mod P of the prompt file), so every
sample is fixed by its index alone. Shard s holds samples [s * shard_size, (s + 1) * shard_size).
Rank r of W generates the shards s with s mod W = r, skipping those already complete; a shard
is written to a temporary file and renamed when whole, so a killed run leaves complete shards
only, and running the same command again completes the set without duplicating or changing
any sample (any W). A folder made with other parameters is refused, never mixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.io import atomic_path, atomic_write_json

MANIFEST = "manifest.json"
SHARD_PATTERN = "samples_{:06d}.npz"
FORMAT = "starflow-sample-set/1"

# prompts, seeds -> (n, H, W, 3) uint8 images
Generator = Callable[[list[str], list[int]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class SamplePlan:
    """Which sample has which condition and seed, and how they are grouped into shards."""

    count: int
    shard_size: int
    conditions: tuple[str, ...]  # class indices as text for label models, prompts, or ("",)
    first_seed: int = 0
    labels: bool = False  # conditions are class indices (stored as arr_1)

    def __post_init__(self) -> None:
        if self.count < 1 or self.shard_size < 1:
            raise ValueError(
                f"need at least one sample and shard size >= 1, got {self.count}, {self.shard_size}"
            )
        if not self.conditions:
            raise ValueError('a sample plan needs at least one condition ("" for unconditional)')

    @property
    def num_shards(self) -> int:
        return -(-self.count // self.shard_size)

    def indices(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.count))

    def prompts(self, shard: int) -> list[str]:
        return [self.conditions[j % len(self.conditions)] for j in self.indices(shard)]

    def seeds(self, shard: int) -> list[int]:
        return [self.first_seed + j for j in self.indices(shard)]

    def shards_of_rank(self, rank: int, world_size: int) -> list[int]:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        return list(range(rank, self.num_shards, world_size))

    def describe(self) -> dict[str, Any]:
        """What fixes the samples (the manifest's identity part): long prompt lists by hash."""
        conditions = list(self.conditions)
        digest = hashlib.sha256("\n".join(conditions).encode()).hexdigest()
        return {
            "count": self.count,
            "shard_size": self.shard_size,
            "first_seed": self.first_seed,
            "conditions": "classes"
            if self.labels
            else ("unconditional" if conditions == [""] else "prompts"),
            "num_conditions": len(conditions),
            "conditions_sha256": digest,
        }


def class_balanced_conditions(num_classes: int) -> tuple[str, ...]:
    return tuple(str(label) for label in range(num_classes))


def shard_path(folder: Path, shard: int) -> Path:
    return Path(folder) / SHARD_PATTERN.format(shard)


def shard_is_complete(path: Path, expected: int) -> bool:
    """A shard counts as done when it loads and holds the expected number of images."""
    try:
        with np.load(path) as data:
            return data["arr_0"].shape[0] == expected and data["arr_0"].dtype == np.uint8
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False


def prepare_folder(folder: Path, manifest: dict[str, Any]) -> None:
    """Create the set's folder and manifest, or check that an existing one was made with the
    same parameters (refusing to mix two sets). Every rank may call it: they write the same."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; give a folder for the sample set")
    path = folder / MANIFEST
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{path} is not readable JSON ({err}); remove it or pick another folder"
            ) from err
        changed = sorted(k for k in set(existing) | set(manifest) if existing.get(k) != manifest.get(k))
        if changed:
            details = ", ".join(f"{k}: {existing.get(k)!r} -> {manifest.get(k)!r}" for k in changed[:4])
            raise ValueError(
                f"{folder} holds a sample set made with other parameters ({details}); "
                "use another --output folder, or the same parameters to resume it"
            )
        return
    if folder.is_dir() and any(folder.glob("samples_*.npz")):
        raise ValueError(f"{folder} holds sample shards but no {MANIFEST}; use another --output folder")
    atomic_write_json(path, manifest)


def pending_shards(folder: Path, plan: SamplePlan, rank: int, world_size: int) -> list[int]:
    return [
        shard
        for shard in plan.shards_of_rank(rank, world_size)
        if not shard_is_complete(shard_path(folder, shard), len(plan.indices(shard)))
    ]


def write_shard(folder: Path, plan: SamplePlan, shard: int, images: np.ndarray) -> Path:
    expected = len(plan.indices(shard))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != expected or images.shape[-1] != 3:
        raise ValueError(
            f"shard {shard}: expected ({expected}, H, W, 3) uint8, got {images.shape} {images.dtype}"
        )
    arrays = {"arr_0": images, "seeds": np.asarray(plan.seeds(shard), dtype=np.int64)}
    prompts = plan.prompts(shard)
    if plan.labels:
        arrays["arr_1"] = np.asarray([int(p) for p in prompts], dtype=np.int64)
    elif any(prompts):
        arrays["prompts"] = np.asarray(prompts)
    path = shard_path(folder, shard)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def generate_shards(
    folder: Path,
    plan: SamplePlan,
    generate: Generator,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[Sequence[int]], Iterator[int]] | None = None,
) -> list[int]:
    """Generate this rank's missing shards in order; returns the shards written."""
    todo = pending_shards(folder, plan, rank, world_size)
    written = []
    for shard in progress(todo) if progress else todo:
        prompts, seeds = plan.prompts(shard), plan.seeds(shard)
        parts = [
            generate(prompts[first : first + batch_size], seeds[first : first + batch_size])
            for first in range(0, len(seeds), batch_size)
        ]
        write_shard(folder, plan, shard, np.concatenate(parts))
        written.append(shard)
    return written


def completed(folder: Path, plan: SamplePlan) -> int:
    """How many samples of the plan are on disk in complete shards."""
    return sum(
        len(plan.indices(shard))
        for shard in range(plan.num_shards)
        if shard_is_complete(shard_path(folder, shard), len(plan.indices(shard)))
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a sample set (no {MANIFEST}); make one with sample-eval")
    return json.loads(path.read_text())


def shard_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("samples_*.npz"))
