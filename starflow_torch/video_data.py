"""Video training data of the torch twin: folders of clips as a torch Dataset, batched by the
sharded sampler of starflow_torch.data.

The clip folders, the frames taken from each clip and the seeded epoch order are framework-free
(starflow_core.training.video_folders) and shared with the MLX twin, so both twins see the
same clips, frames, crops and flips in the same order. Videos are (B, T, C, H, W) tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from starflow_core.training.config import TrainConfig
from starflow_core.training.image_folders import check_batches_exist
from starflow_core.training.video_folders import ClipRef, VideoFolder, video_epoch_batches

from .data import ShardedBatchSampler, collate, ignore_stop_signals, workers_start_deaf

__all__ = ["ClipRef", "VideoFolderDataset", "batch_stream", "collate_clips"]


class VideoFolderDataset(VideoFolder, torch.utils.data.Dataset):
    """A VideoFolder whose items are (T, C, H, W) tensors in [-1, 1] with their condition."""

    def __getitem__(self, ref: ClipRef) -> dict:
        item = self.item(ref)
        item["video"] = torch.from_numpy(item["video"]).permute(0, 3, 1, 2).contiguous()
        return item


def collate_clips(items: list[dict]) -> dict:
    """Stack the readable clips (as starflow_torch.data.collate stacks images) with their fps."""
    batch = collate(items)
    kept = [item for item in items if not item["corrupt"]] or items
    batch["video"] = torch.stack([item["video"] for item in kept])
    batch["fps"] = torch.tensor([item["fps"] for item in kept], dtype=torch.long)
    batch["index"] = torch.tensor([item["index"] for item in kept], dtype=torch.long)
    return batch


def batch_stream(
    dataset: VideoFolderDataset,
    train: TrainConfig,
    epoch: int,
    start: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, next batch index, batch) for process `rank` of `world_size`, from position
    (epoch, start) of the epoch order (the twin of starflow_mlx.video_data.batch_stream)."""
    global_batch = train.micro_batch_size
    if global_batch % world_size:
        raise ValueError(
            f"batch_size/grad_accum={global_batch} must be divisible by the {world_size} processes"
        )
    while True:
        batches = video_epoch_batches(dataset.buckets, global_batch, train.seed, epoch, train.flip)
        check_batches_exist(len(batches), len(dataset), global_batch, train.buckets)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=ShardedBatchSampler(batches, rank, world_size, start),
            collate_fn=collate_clips,
            num_workers=train.num_workers,
            worker_init_fn=ignore_stop_signals if train.num_workers else None,
        )
        with workers_start_deaf() if train.num_workers else contextlib.nullcontext():
            batches_of_epoch = iter(loader)  # forks the workers
        for number, batch in enumerate(batches_of_epoch, start=start + 1):
            yield epoch, number, batch
        epoch, start = epoch + 1, 0
