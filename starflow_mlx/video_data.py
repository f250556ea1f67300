"""Video training data of the MLX twin: folders of clips through mlx-data.

The clip folders, the frames taken from each clip and the seeded epoch order are framework-free
(starflow_core.training.video_folders) and shared with the torch twin, so both twins see the
same clips, frames, crops and flips in the same order. Here they become an mlx-data pipeline,
as image folders do in starflow_mlx.data: a buffer of (index, flip, slot, draw) in epoch order,
decoded per clip in background threads, batched, prefetched in order. Videos are
(B, T, H, W, C) numpy, turned into mx.arrays by the input builder.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from starflow_core.extras import require
from starflow_core.training.config import TrainConfig
from starflow_core.training.image_folders import check_batches_exist
from starflow_core.training.video_folders import ClipRef, VideoFolder, video_epoch_batches

from .data import drop_corrupt

__all__ = ["ClipRef", "VideoFolderDataset", "batch_stream"]


class VideoFolderDataset(VideoFolder):
    """A VideoFolder whose items are (T, H, W, C) float32 clips in [-1, 1] with their condition
    (captions stay in the dataset: `text_of(index)`, as for image folders)."""

    def __getitem__(self, ref: ClipRef) -> dict:
        item = self.item(ref)
        item.pop("text", None)
        item["corrupt"] = np.uint8(item["corrupt"])
        return item

    def text_of(self, index: int) -> str:
        return self.targets[index]


def _epoch_stream(dataset: VideoFolderDataset, batches: list[list[ClipRef]], threads: int):
    """An mlx-data stream of the given batches, in order, decoded in `threads` threads."""
    refs = [
        {"index": r.index, "flip": int(r.flip), "slot": r.slot, "draw": r.draw}
        for batch in batches
        for r in batch
    ]

    def load(sample: dict) -> dict:
        ref = ClipRef(int(sample["index"]), bool(sample["flip"]), int(sample["slot"]), int(sample["draw"]))
        return dataset[ref]

    dx = require("mlx.data", "training with MLX")
    buffer = dx.buffer_from_vector(refs).sample_transform(load).batch(len(batches[0]))
    return buffer.ordered_prefetch(4, max(1, threads))


def batch_stream(
    dataset: VideoFolderDataset, train: TrainConfig, epoch: int, start: int
) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, next batch index, batch) from position (epoch, start) of the epoch order.

    A batch holds "video" (B, T, H, W, C), "fps", "slot", "index", "corrupt" and "label" when
    the clips have one; unreadable clips are dropped as unreadable images are
    (starflow_mlx.data.drop_corrupt).
    """
    global_batch = train.micro_batch_size
    while True:
        batches = video_epoch_batches(dataset.buckets, global_batch, train.seed, epoch, train.flip)
        check_batches_exist(len(batches), len(dataset), global_batch, train.buckets)
        if start < len(batches):
            for number, batch in enumerate(
                _epoch_stream(dataset, batches[start:], train.num_workers), start + 1
            ):
                yield epoch, number, drop_corrupt(dict(batch))
        epoch, start = epoch + 1, 0
