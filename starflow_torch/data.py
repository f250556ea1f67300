"""Training data: image folders, encoded latent shards, and a sharded bucket batch sampler.

Image folders follow the Hugging Face imagefolder convention: captions in
`metadata.jsonl` (one JSON object per line with `file_name` and `text`), or one
subfolder per class for label models. Images are centre-cropped to their aspect
ratio bucket, resized, optionally flipped and scaled to [-1, 1].

Randomness lives in the sampler, which is a pure function of (seed, epoch): it
decides the order, the flips and which process reads which sample, so a run can be
resumed at any batch and any number of processes sees the same global batches.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# The official training buckets (dataset.py), width:height.
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "16:9", "9:16", "4:5", "5:4", "21:9", "9:21")


def aspect_ratio_to_size(target_size: int, ratio: str, multiple: int) -> tuple[int, int]:
    """(height, width) with area about target_size^2 and sides multiples of `multiple` (official)."""
    rw, rh = (int(v) for v in ratio.split(":"))
    r = rw / rh
    area = target_size**2
    height = max(multiple, round(math.sqrt(area / r) / multiple) * multiple)
    width = max(multiple, round(math.sqrt(area * r) / multiple) * multiple)
    return height, width


def nearest_bucket(width: int, height: int) -> str:
    """The aspect-ratio bucket closest to width/height in log space."""
    log_ratio = math.log(width / height)

    def distance(ratio: str) -> float:
        rw, rh = (int(v) for v in ratio.split(":"))
        return abs(math.log(rw / rh) - log_ratio)

    return min(ASPECT_RATIOS, key=distance)


@dataclass(frozen=True)
class SampleRef:
    """One sample of a global batch: dataset index, flip decision, position in the global batch."""

    index: int
    flip: bool
    slot: int


# ----- image folders --------------------------------------------------------------------
class ImageFolderDataset(torch.utils.data.Dataset):
    """Images with captions (metadata.jsonl), class labels (subfolders) or nothing (unconditional)."""

    def __init__(
        self, folder: str | Path, conditioning: str, image_size: int, multiple: int, buckets: bool = False
    ):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no image folder at {folder}")
        self.folder = folder
        self.conditioning = conditioning
        self.image_size = image_size
        self.multiple = multiple
        self.class_names: list[str] = []
        if conditioning == "text":
            self.files, self.targets = self._read_metadata(folder)
        elif conditioning == "label":
            self.files, self.targets = self._read_class_folders(folder)
        elif conditioning == "none":
            self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            self.targets = [None] * len(self.files)
        else:
            raise ValueError(f"conditioning must be text, label or none, got {conditioning!r}")
        if not self.files:
            raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); nothing to train on")
        self.buckets = [self._bucket_of(path) if buckets else "1:1" for path in self.files]

    @staticmethod
    def _read_metadata(folder: Path) -> tuple[list[Path], list[str]]:
        metadata = folder / "metadata.jsonl"
        if not metadata.is_file():
            raise FileNotFoundError(
                f"{folder} has no metadata.jsonl; a text model needs one line per image: "
                '{"file_name": "a.png", "text": "a caption"}'
            )
        files, texts = [], []
        for number, line in enumerate(metadata.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{metadata}, line {number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where} is not valid JSON: {err}") from err
            if not isinstance(entry, dict) or "file_name" not in entry:
                raise ValueError(f"{where} has no 'file_name'")
            if not isinstance(entry.get("text"), str):
                raise ValueError(f"{where} ({entry['file_name']}) has no 'text' caption string")
            path = folder / entry["file_name"]
            if not path.is_file():
                raise FileNotFoundError(f"{where} names {entry['file_name']}, which does not exist")
            files.append(path)
            texts.append(entry["text"])
        return files, texts

    def _read_class_folders(self, folder: Path) -> tuple[list[Path], list[int]]:
        self.class_names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not self.class_names:
            raise ValueError(
                f"{folder} has no class subfolders; a label model needs <folder>/<class>/<image>"
            )
        files, labels = [], []
        for label, name in enumerate(self.class_names):
            for path in sorted((folder / name).rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(path)
                    labels.append(label)
        return files, labels

    @staticmethod
    def _bucket_of(path: Path) -> str:
        try:
            with Image.open(path) as image:  # reads the header only
                return nearest_bucket(*image.size)
        except (OSError, ValueError, SyntaxError):
            return "1:1"  # unreadable: reported as corrupt when loaded

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, index: int, flip: bool) -> torch.Tensor | None:
        """(3, H, W) in [-1, 1], or None if the file cannot be decoded."""
        height, width = aspect_ratio_to_size(self.image_size, self.buckets[index], self.multiple)
        try:
            with Image.open(self.files[index]) as image:
                image = image.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None
        image = center_crop_resize(image, height, width)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)
        return pixels.float() / 127.5 - 1.0

    def __getitem__(self, ref: SampleRef) -> dict:
        image = self.load_image(ref.index, ref.flip)
        item = {"image": image, "slot": ref.slot, "corrupt": image is None}
        if image is None:  # a placeholder, dropped by collate unless the whole share is corrupt
            height, width = aspect_ratio_to_size(self.image_size, self.buckets[ref.index], self.multiple)
            item["image"] = torch.zeros(3, height, width)
        if self.conditioning == "text":
            item["text"] = self.targets[ref.index]
        elif self.conditioning == "label":
            item["label"] = self.targets[ref.index]
        return item


def center_crop_resize(image: Image.Image, height: int, width: int) -> Image.Image:
    """Crop the largest centred window of aspect width/height, then resize (antialiased)."""
    w, h = image.size
    if w * height > h * width:  # too wide: trim the width
        crop_w, crop_h = round(h * width / height), h
    else:
        crop_w, crop_h = w, round(w * height / width)
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h))
    return image.resize((width, height), Image.Resampling.BICUBIC)


# ----- encoded latent shards -----------------------------------------------------------
SHARD_INDEX = "index.json"


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
        self.index = json.loads(index_path.read_text())
        self.shards = self.index["shards"]
        if not self.shards or sum(s["count"] for s in self.shards) == 0:
            raise ValueError(f"{folder} holds no encoded samples")
        self.locations = [(s, row) for s, shard in enumerate(self.shards) for row in range(shard["count"])]
        self.buckets = [self.shards[s]["bucket"] for s, _ in self.locations]
        self.null_text = None  # (txt_size, txt_dim): the encoded empty prompt, for text models
        if "null_text" in self.index:
            self.null_text = load_file(str(folder / self.index["null_text"]))["text"].float()
        self._handles: dict[int, object] = {}  # opened lazily, per worker process

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
def epoch_batches(
    buckets: Sequence[str], global_batch: int, seed: int, epoch: int, flip: bool
) -> list[list[SampleRef]]:
    """All global batches of one epoch: shuffled within buckets, incomplete batches dropped."""
    rng = random.Random(f"{seed}:{epoch}")
    by_bucket: dict[str, list[int]] = {}
    for index, bucket in enumerate(buckets):
        by_bucket.setdefault(bucket, []).append(index)
    batches = []
    for bucket in sorted(by_bucket):
        indices = by_bucket[bucket]
        rng.shuffle(indices)
        for start in range(0, len(indices) - global_batch + 1, global_batch):
            chunk = indices[start : start + global_batch]
            batches.append([SampleRef(i, flip and rng.random() < 0.5, slot) for slot, i in enumerate(chunk)])
    rng.shuffle(batches)
    return batches


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


def check_batches_exist(num_batches: int, dataset_size: int, global_batch: int, buckets: bool) -> None:
    if num_batches == 0:
        where = " in any aspect-ratio bucket" if buckets else ""
        raise ValueError(
            f"the dataset has {dataset_size} usable samples, fewer than one global micro-batch of "
            f"{global_batch}{where}; lower train.batch_size or add data"
        )


def collate(items: list[dict]) -> dict:
    """Stack the readable samples; `corrupt` counts the ones that failed to decode.

    If none is readable, the placeholders are kept with valid=False, so that this
    process still runs the forward and backward its peers wait for, at weight 0.
    """
    kept = [item for item in items if not item.get("corrupt", False)]
    batch: dict = {"corrupt": len(items) - len(kept), "valid": bool(kept)}
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
