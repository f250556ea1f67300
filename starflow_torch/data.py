"""Training data of the torch twin: image folders, encoded latent shards, a sharded batch sampler.

The folder conventions, buckets and the seeded epoch order are framework-free
(starflow_core.training.image_folders); this module turns them into torch Datasets and a
Sampler that gives each process its share of every global batch.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import torch

from starflow_core.training.config import TrainConfig
from starflow_core.training.image_folders import (
    ASPECT_RATIOS,
    IMAGE_SUFFIXES,
    SHARD_INDEX,
    ImageFolder,
    SampleRef,
    aspect_ratio_to_size,
    center_crop_resize,
    check_batches_exist,
    epoch_batches,
    nearest_bucket,
    shard_fingerprint,
)
from starflow_core.validation import read_shard_index

__all__ = [
    "ASPECT_RATIOS",
    "IMAGE_SUFFIXES",
    "SHARD_INDEX",
    "ImageFolderDataset",
    "LatentShardDataset",
    "SampleRef",
    "ShardedBatchSampler",
    "batch_stream",
    "aspect_ratio_to_size",
    "center_crop_resize",
    "check_batches_exist",
    "collate",
    "epoch_batches",
    "ignore_stop_signals",
    "workers_start_deaf",
    "nearest_bucket",
]


# ----- image folders --------------------------------------------------------------------
class ImageFolderDataset(ImageFolder, torch.utils.data.Dataset):
    """An ImageFolder whose items are (C, H, W) tensors in [-1, 1] with their condition."""

    def read_image(self, index: int, flip: bool) -> torch.Tensor | None:
        """Sample `index` as a (C, H, W) tensor in [-1, 1], or None if it cannot be read."""
        pixels = self.read_pixels(index, flip)
        return None if pixels is None else torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    def __getitem__(self, ref: SampleRef) -> dict:
        image = self.read_image(ref.index, ref.flip)
        item = {
            "image": image,
            "slot": ref.slot,
            "index": ref.index,
            "corrupt": image is None,
            **self.target_of(ref.index),
        }
        if image is None:  # a placeholder, dropped by collate unless the whole share is corrupt
            item["image"] = torch.zeros(self.channels, *self.image_size_of(ref.index))
        return item


# ----- encoded latent shards -----------------------------------------------------------
class LatentShardDataset(torch.utils.data.Dataset):
    """Latents and text features written by `python -m starflow_torch.encode_dataset`."""

    def __init__(self, folder: str | Path):
        from safetensors.torch import load_file

        folder = Path(folder)
        index_path = folder / SHARD_INDEX
        if not index_path.is_file():
            raise FileNotFoundError(
                f"{folder} has no {SHARD_INDEX}; run python -m starflow_torch.encode_dataset"
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
            self.null_text = load_file(str(folder / self.index["null_text"]))["text"].float()
        self._handles: dict[int, object] = {}  # opened lazily, per worker process

    def fingerprint(self) -> dict:
        return shard_fingerprint(self.folder, self.index)

    def __len__(self) -> int:
        return len(self.locations)

    def _shard(self, number: int):
        from safetensors import safe_open

        if number not in self._handles:
            self._handles[number] = safe_open(str(self.folder / self.shards[number]["file"]), "pt")
        return self._handles[number]

    def __getitem__(self, ref: SampleRef) -> dict:
        number, row = self.locations[ref.index]
        shard = self._shard(number)
        item = {"latent": shard.get_slice("latents")[row : row + 1][0].float(), "slot": ref.slot}
        if "text" in shard.keys():  # noqa: SIM118 (safe_open is not a dict)
            item["text_features"] = shard.get_slice("text")[row : row + 1][0].float()
        if "label" in shard.keys():  # noqa: SIM118
            item["label"] = int(shard.get_slice("label")[row : row + 1][0])
        return item

    def __getstate__(self) -> dict:  # safetensors handles cannot be pickled to workers
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


# ----- batching -------------------------------------------------------------------------
class ShardedBatchSampler(torch.utils.data.Sampler):
    """This process's share of each global batch of an epoch, starting at batch `start`.

    Process r of W reads slots [r*b, (r+1)*b) of every global batch (b = batch/W), so
    processes never overlap and together see exactly the single-process batches.
    """

    def __init__(self, batches: list[list[SampleRef]], rank: int, world_size: int, start: int = 0):
        self.batches = batches[start:]
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[SampleRef]]:
        for batch in self.batches:
            share = len(batch) // self.world_size
            yield batch[self.rank * share : (self.rank + 1) * share]


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn: leave SIGINT / SIGTERM to the main process.

    A signal sent to the whole process group (Ctrl-C, `kill -TERM -PGID`, systemd, SLURM)
    reaches the workers too; torch's worker handler then exits, and the main process raises
    instead of finishing its step and saving. Ignoring them here lets the main process stop
    cleanly; it shuts the workers down itself (and they exit if it dies). Workers start with
    the signals blocked (`workers_start_deaf`), so one sent before this runs is dropped here.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def workers_start_deaf() -> Iterator[None]:
    """Block SIGINT / SIGTERM while DataLoader workers are forked (they inherit the mask); the
    main process gets a signal that arrived meanwhile as soon as the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def collate(items: list[dict]) -> dict:
    """Stack the readable samples; `corrupt` counts the ones that failed to decode.

    If none is readable, the placeholders are kept with valid=False, so that this
    process still runs the forward and backward its peers wait for, at weight 0.
    """
    kept = [item for item in items if not item.get("corrupt", False)]
    batch: dict = {
        "corrupt": len(items) - len(kept),
        "corrupt_index": [item["index"] for item in items if item.get("corrupt", False)],  # for warnings
        "valid": bool(kept),
    }
    kept = kept or items
    batch["slot"] = torch.tensor([item["slot"] for item in kept])
    for key in ("image", "latent", "text_features"):
        if key in kept[0]:
            batch[key] = torch.stack([item[key] for item in kept])
    if "text" in kept[0]:
        batch["text"] = [item["text"] for item in kept]
    if "label" in kept[0]:
        batch["label"] = torch.tensor([item["label"] for item in kept], dtype=torch.long)
    return batch


def batch_stream(
    dataset, train: TrainConfig, epoch: int, start: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, next batch index, batch) for process `rank` of `world_size`, from
    position (epoch, start) of the epoch order (the twin of starflow_mlx.data.batch_stream)."""
    global_batch = train.micro_batch_size
    if global_batch % world_size:
        raise ValueError(
            f"batch_size/grad_accum={global_batch} must be divisible by the {world_size} processes"
        )
    flip = train.flip and isinstance(dataset, ImageFolderDataset)
    while True:
        batches = epoch_batches(dataset.buckets, global_batch, train.seed, epoch, flip)
        check_batches_exist(len(batches), len(dataset), global_batch, train.buckets)
        sampler = ShardedBatchSampler(batches, rank, world_size, start)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=train.num_workers,
            worker_init_fn=ignore_stop_signals if train.num_workers else None,
        )
        with workers_start_deaf() if train.num_workers else contextlib.nullcontext():
            batches_of_epoch = iter(loader)  # forks the workers
        for number, batch in enumerate(batches_of_epoch, start=start + 1):
            yield epoch, number, batch
        epoch, start = epoch + 1, 0
