"""What `starflow-eval` reads: a sample set, an .npz of images, an image folder, or statistics.

Every reader yields uint8 RGB batches (n, H, W, 3), the input of the feature extractors, with
the condition of each image where one is known (class labels of a sample set or of ADM's
`arr_1`, prompts of a text sample set). Nothing is loaded whole: a 50,000-image set streams.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from starflow_core.evaluation import sample_sets

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclasses.dataclass(frozen=True)
class Batch:
    images: np.ndarray  # (n, H, W, 3) uint8
    labels: np.ndarray | None = None  # (n,) int64 class indices
    prompts: list[str] | None = None


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """A readable set of images: `batches(size)` streams them, `count` says how many."""

    path: Path
    kind: str  # "sample set" | "npz" | "folder"
    count: int
    files: tuple[Path, ...] = ()

    def batches(self, size: int) -> Iterator[Batch]:
        if self.kind == "folder":
            shape = read_rgb(self.files[0]).shape
            for first in range(0, len(self.files), size):
                images = [read_rgb(path) for path in self.files[first : first + size]]
                for path, image in zip(self.files[first : first + size], images, strict=True):
                    if image.shape != shape:
                        raise ValueError(
                            f"{path} is {image.shape[1]}x{image.shape[0]}, the folder's first image "
                            f"{shape[1]}x{shape[0]}; a set's images must share one size"
                        )
                yield Batch(np.stack(images))
            return
        for file in self.files:
            with np.load(file) as data:
                images, labels = data["arr_0"], data.get("arr_1")
                prompts = [str(p) for p in data["prompts"]] if "prompts" in data else None
            images = as_rgb_uint8(images, file)
            for first in range(0, len(images), size):
                part = slice(first, first + size)
                yield Batch(
                    images[part],
                    None if labels is None else labels[part].astype(np.int64),
                    None if prompts is None else prompts[part],
                )


def as_rgb_uint8(images: np.ndarray, where: Path) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"{where}: arr_0 must be uint8 images (N, H, W, 3) (NHWC, as ADM's evaluation suite), "
            f"got {images.dtype} {images.shape}"
        )
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def open_images(path: Path) -> ImageSource:
    """A sample set folder, an .npz holding arr_0, or a folder of image files (sorted, recursive)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir() and (path / sample_sets.MANIFEST).is_file():
        return _sample_set(path)
    if path.is_file() and path.suffix == ".npz":
        with np.load(path) as data:
            if "arr_0" not in data:
                raise ValueError(f"{path} holds no images (no arr_0; keys: {sorted(data.files)})")
            count = len(data["arr_0"])
        return ImageSource(path, "npz", count, (path,))
    if path.is_dir():
        files = tuple(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        if not files:
            raise ValueError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return ImageSource(path, "folder", len(files), files)
    raise ValueError(f"{path}: expected a sample set folder, an .npz of images or an image folder")


def _sample_set(folder: Path) -> ImageSource:
    manifest = sample_sets.read_manifest(folder)
    count, shard_size = int(manifest["count"]), int(manifest["shard_size"])
    shards = -(-count // shard_size)
    missing = [
        shard
        for shard in range(shards)
        if not sample_sets.shard_is_complete(
            sample_sets.shard_path(folder, shard), min(shard_size, count - shard * shard_size)
        )
    ]
    if missing:
        done = count - sum(min(shard_size, count - s * shard_size) for s in missing)
        raise ValueError(
            f"{folder} is incomplete: {done}/{count} samples ({len(missing)} shard(s) missing, first "
            f"{missing[0]}); run the same sample-eval command again to finish it"
        )
    return ImageSource(
        folder, "sample set", count, tuple(sample_sets.shard_path(folder, s) for s in range(shards))
    )


def has_statistics(path: Path) -> bool:
    """An .npz with mu and sigma: reference statistics (ADM's reference batches also hold arr_0)."""
    if Path(path).suffix != ".npz" or not Path(path).is_file():
        return False
    with np.load(path) as data:
        return "mu" in data.files and "sigma" in data.files


def has_images(path: Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return True
    with np.load(path) as data:
        return "arr_0" in data.files
