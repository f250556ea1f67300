"""Training data of the MLX twin: image folders and encoded latent shards through mlx-data.

The folder conventions, buckets and the seeded epoch order are framework-free
(starflow_core.training.image_folders) and shared with the torch twin, so both twins see the
same samples, crops and flips in the same order. Here they become an mlx-data pipeline:
a buffer of (index, flip, slot) in epoch order, decoded per sample in background
threads, batched, prefetched in order. Arrays are NHWC numpy, turned into mx.arrays
by the input builder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from starflow_core.extras import require
from starflow_core.training.config import TrainConfig
from starflow_core.training.image_folders import (
    SHARD_INDEX,
    ImageFolder,
    SampleRef,
    check_batches_exist,
    epoch_batches,
    shard_fingerprint,
)
from starflow_core.validation import read_shard_index

__all__ = [
    "SHARD_INDEX",
    "ImageFolderDataset",
    "LatentShardDataset",
    "SampleRef",
    "batch_stream",
]


class ImageFolderDataset(ImageFolder):
    """An ImageFolder whose items are (H, W, C) float32 arrays in [-1, 1] with their condition."""

    def read_image(self, index: int, flip: bool) -> np.ndarray | None:
        """Sample `index` as (H, W, C) float32 in [-1, 1] (mlx-data batches numpy), or None if
        it cannot be read."""
        return self.read_pixels(index, flip)

    def __getitem__(self, ref: SampleRef) -> dict:
        pixels = self.read_image(ref.index, ref.flip)
        item = {"slot": ref.slot, "index": ref.index, "corrupt": pixels is None}
        if pixels is None:  # a placeholder, dropped from the batch unless every sample is corrupt
            pixels = np.zeros((*self.image_size_of(ref.index), self.channels), np.float32)
        item["image"] = pixels
        target = self.target_of(ref.index)
        if "label" in target:
            item["label"] = target["label"]
        return item

    def text_of(self, index: int) -> str:
        return self.targets[index]


class LatentShardDataset:
    """Latents and text features written by either twin's encoder (encode_dataset).

    Shards hold (N, C, h, w) latents; items are (h, w, C) float32.
    """

    def __init__(self, folder: str | Path):
        from safetensors.numpy import load_file

        folder = Path(folder)
        index_path = folder / SHARD_INDEX
        if not index_path.is_file():
            raise FileNotFoundError(
                f"{folder} has no {SHARD_INDEX}; encode the image folder first: "
                "python -m starflow_mlx.encode_dataset"
            )
        self.folder = folder
        self.index = read_shard_index(index_path)
        self.shards = self.index["shards"]
        if not self.shards or sum(s["count"] for s in self.shards) == 0:
            raise ValueError(f"{folder} holds no encoded samples")
        self.locations = [(s, row) for s, shard in enumerate(self.shards) for row in range(shard["count"])]
        self.buckets = [self.shards[s]["bucket"] for s, _ in self.locations]
        self.null_text = None  # (txt_size, txt_dim): the encoded empty prompt, for text models
        if "null_text" in self.index:
            self.null_text = load_file(str(folder / self.index["null_text"]))["text"].astype(np.float32)
        self._handles: dict[int, object] = {}

    def fingerprint(self) -> dict:
        return shard_fingerprint(self.folder, self.index)

    def __len__(self) -> int:
        return len(self.locations)

    def _shard(self, number: int):
        from safetensors import safe_open

        if number not in self._handles:
            self._handles[number] = safe_open(str(self.folder / self.shards[number]["file"]), "np")
        return self._handles[number]

    def __getitem__(self, ref: SampleRef) -> dict:
        number, row = self.locations[ref.index]
        shard = self._shard(number)
        latent = shard.get_slice("latents")[row : row + 1][0].astype(np.float32)
        item = {
            "latent": np.ascontiguousarray(latent.transpose(1, 2, 0)),
            "slot": ref.slot,
            "index": ref.index,
            "corrupt": False,
        }
        if "text" in shard.keys():  # noqa: SIM118 (safe_open is not a dict)
            item["text_features"] = shard.get_slice("text")[row : row + 1][0].astype(np.float32)
        if "label" in shard.keys():  # noqa: SIM118
            item["label"] = int(shard.get_slice("label")[row : row + 1][0])
        return item


def _epoch_stream(dataset, batches: list[list[SampleRef]], threads: int):
    """An mlx-data stream of the given batches, in order, decoded in `threads` threads."""
    refs = [{"index": r.index, "flip": int(r.flip), "slot": r.slot} for batch in batches for r in batch]

    def load(sample: dict) -> dict:
        ref = SampleRef(int(sample["index"]), bool(sample["flip"]), int(sample["slot"]))
        item = dataset[ref]
        item["corrupt"] = np.uint8(item["corrupt"])
        return item

    dx = require("mlx.data", "training with MLX")
    buffer = dx.buffer_from_vector(refs).sample_transform(load).batch(len(batches[0]))
    return buffer.ordered_prefetch(4, max(1, threads))


def batch_stream(dataset, train: TrainConfig, epoch: int, start: int) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, next batch index, batch) from position (epoch, start) of the epoch order.

    A batch holds stacked arrays ("image" or "latent" (B, H, W, C), "slot", "index",
    "corrupt", and "label" / "text_features" when the data has them); corrupt samples
    are dropped, `valid` is False when none was readable (placeholders are kept).
    """
    global_batch = train.micro_batch_size
    flip = train.flip and isinstance(dataset, ImageFolderDataset)
    while True:
        batches = epoch_batches(dataset.buckets, global_batch, train.seed, epoch, flip)
        check_batches_exist(len(batches), len(dataset), global_batch, train.buckets)
        if start < len(batches):
            for number, batch in enumerate(
                _epoch_stream(dataset, batches[start:], train.num_workers), start + 1
            ):
                yield epoch, number, drop_corrupt(dict(batch))
        epoch, start = epoch + 1, 0


def drop_corrupt(batch: dict) -> dict:
    """Keep the readable samples; count the others in batch["corrupt"] (an int)."""
    corrupt = batch["corrupt"].astype(bool)
    if not corrupt.any():
        return {**batch, "corrupt": 0, "valid": True, "corrupt_index": []}
    kept = ~corrupt if not corrupt.all() else np.ones_like(corrupt)
    out = {key: value[kept] for key, value in batch.items() if key != "corrupt"}
    out["corrupt"] = int(corrupt.sum())
    out["corrupt_index"] = [int(i) for i in batch["index"][corrupt]]  # dataset indices, for warnings
    out["valid"] = not corrupt.all()
    return out
