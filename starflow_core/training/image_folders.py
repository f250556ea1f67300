"""Training data without a framework: image folders, aspect-ratio buckets and the epoch order.

Image folders follow the Hugging Face imagefolder convention: captions in
`metadata.jsonl` (one JSON object per line with `file_name` and `text`), or one
subfolder per class for label models, or just images (unconditional). Images are
centre-cropped to their aspect ratio bucket, resized (bicubic), optionally flipped.

Randomness lives in the epoch order, a pure function of (seed, epoch): it decides the
order, the flips and which slot of the global batch each sample fills, so a run can be
resumed at any batch and any number of processes sees the same global batches. Both
twins' loaders (torch DataLoader, mlx-data stream) read from it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from starflow_core.command_line import one_line
from starflow_core.training.config import conditioning_of
from starflow_core.validation import refuse_special_file

SHARD_INDEX = "index.json"  # the index of a folder of encoded latent shards
SHARD_INDEX_FORMAT = 1
NULL_TEXT_FILE = "null_text.safetensors"
CONDITIONINGS = ("text", "label", "none")
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
class ImageFolder:
    """Images with captions (metadata.jsonl), class labels (subfolders) or nothing (unconditional)."""

    def __init__(
        self,
        folder: str | Path,
        conditioning: str,
        image_size: int,
        multiple: int,
        buckets: bool = False,
        channels: int = 3,
    ):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no image folder at {folder}")
        if channels not in (1, 3):
            raise ValueError(f"image folders give 1 (grey) or 3 (RGB) channels, not {channels}")
        self.folder = folder
        self.conditioning = conditioning
        self.image_size = image_size
        self.multiple = multiple
        self.channels = channels
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
        for path in self.files:  # a FIFO or device would block a reader, or never end
            refuse_special_file(path, "the image")
        self.buckets = [self._bucket_of(path) if buckets else "1:1" for path in self.files]

    @staticmethod
    def _read_metadata(
        folder: Path, is_sample: Callable[[Path], bool] = Path.is_file
    ) -> tuple[list[Path], list[str]]:
        metadata = folder / "metadata.jsonl"
        if not metadata.is_file():
            raise FileNotFoundError(
                f"{folder} has no metadata.jsonl; a text model needs one line per image: "
                '{"file_name": "a.png", "text": "a caption"}'
            )
        files, texts = [], []
        for number, raw in enumerate(metadata.read_bytes().splitlines(), start=1):
            where = f"{metadata}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{where} is not UTF-8 text ({err.reason} at byte {err.start})") from None
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where} is not valid JSON: {err}") from err
            if not isinstance(entry, dict) or "file_name" not in entry:
                raise ValueError(f"{where} has no 'file_name'")
            name = entry["file_name"]
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"{where}: 'file_name' must be a file name string, got {name!r}")
            if not isinstance(entry.get("text"), str):
                raise ValueError(f"{where} ({name}) has no 'text' caption string")
            path = folder / inside_folder(name, where)
            if not is_sample(path):
                if path.exists():
                    raise ValueError(f"{where} names {name}, which is not a file this folder can train on")
                raise FileNotFoundError(f"{where} names {name}, which does not exist")
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

    def image_size_of(self, index: int) -> tuple[int, int]:
        """(height, width) of sample `index` after cropping to its bucket."""
        return aspect_ratio_to_size(self.image_size, self.buckets[index], self.multiple)

    def read_pixels(self, index: int, flip: bool) -> np.ndarray | None:
        """(H, W, channels) in [-1, 1] (float32), or None if the file cannot be decoded."""
        height, width = self.image_size_of(index)
        try:
            image = self.decode(index)
        except UnreadableImageError:
            return None
        image = center_crop_resize(image, height, width)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, dtype=np.float32).reshape(height, width, self.channels)
        return pixels / 127.5 - 1.0

    def decode(self, index: int) -> Image.Image:
        """Sample `index` as an 8-bit grey or RGB image; UnreadableImageError says why not."""
        try:
            with Image.open(self.files[index]) as image:
                return to_8bit(image, self.channels)
        except UnreadableImageError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            name = str(self.files[index])
            reason = one_line(str(err)).replace(f" {name!r}", "").replace(name, "this file")[:120]
            raise UnreadableImageError(f"cannot be decoded ({reason})") from None

    def why_unreadable(self, index: int) -> str:
        """'<file>: <reason>' for a sample read_pixels refused (for warnings and errors)."""
        try:
            self.decode(index)
        except UnreadableImageError as err:
            return f"{self.files[index]} {err}"
        return f"{self.files[index]}"

    def fingerprint(self) -> dict:
        """What identifies this data set: its files and their conditions (a resume checks it)."""
        digest = hashlib.sha256()
        for path, target in zip(self.files, self.targets, strict=True):
            digest.update(f"{path.relative_to(self.folder)}\t{target}\n".encode())
        return {
            "folder": str(self.folder.resolve()),
            "count": len(self.files),
            "digest": digest.hexdigest(),
        }

    def target_of(self, index: int) -> dict:
        """The condition of sample `index`: {"text": caption}, {"label": class} or {}."""
        if self.conditioning == "text":
            return {"text": self.targets[index]}
        if self.conditioning == "label":
            return {"label": self.targets[index]}
        return {}


class UnreadableImageError(ValueError):
    """An image file that cannot be turned into training pixels."""


HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_8bit(image: Image.Image, channels: int) -> Image.Image:
    """An image of any mode as 8-bit grey (channels=1) or RGB (channels=3).

    Pillow's plain convert() saturates 16-bit greys (I;16: all white) and drops alpha onto
    whatever colour the transparent pixels hold. Here 16-bit values are scaled to 8 bits
    (65535 -> 255) and transparent pixels are composited onto white; 32-bit integer and
    float images, whose range is unknown, are refused.
    """
    target = "L" if channels == 1 else "RGB"
    if image.mode in HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)  # 0..65535
        image = Image.fromarray(np.round(values / 257.0).astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):
        raise UnreadableImageError(
            f"is a 32-bit {'integer' if image.mode == 'I' else 'float'} image with no fixed range; "
            "save it as 8- or 16-bit"
        )
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert(target)


def inside_folder(name: str, where: str) -> str:
    """`name` (a metadata file_name) if it stays inside the data set folder; absolute paths and
    paths through '..' are refused, so a metadata file cannot make training read other files."""
    normal = os.path.normpath(name)
    if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
        raise ValueError(
            f"{where}: file_name {name!r} leaves the data set folder; use paths relative to it, inside it"
        )
    return normal


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


def check_class_count(folder: ImageFolder, num_classes: int) -> None:
    """Class subfolders map to labels 0..K-1 in sorted name order; K must fit the model."""
    if folder.conditioning == "label" and len(folder.class_names) > num_classes:
        raise ValueError(
            f"{folder.folder} has {len(folder.class_names)} class subfolders "
            f"({', '.join(folder.class_names[:12])}{', ...' if len(folder.class_names) > 12 else ''}) "
            f"but the model has num_classes={num_classes}; set model.num_classes or remove folders"
        )


def training_data_kind(config, train) -> str:
    """ "latents" (encoded shards) or "images" (an image folder) for a run, after checking that
    the data fits the model (FlowConfig, TrainConfig); raises a ValueError naming the fix."""
    folder = Path(train.data)
    use_shards = train.data_format == "latents" or (
        train.data_format == "auto" and (folder / SHARD_INDEX).is_file()
    )
    if train.buckets and not config.rope:
        raise ValueError("train.buckets needs a RoPE model (rope=True); a learned pos_embed has one size")
    if use_shards:
        if train.noise_type == "uniform":
            raise ValueError("train.noise_type=uniform dequantises 8-bit pixels; latents use gaussian")
        return "latents"
    if config.in_channels not in (1, 3):
        raise ValueError(
            f"{folder} is an image folder but the model takes {config.in_channels}-channel latents; "
            "encode it first: python -m starflow_mlx.encode_dataset (or starflow_torch.encode_dataset)"
        )
    if conditioning_of(config) == "text" and train.text_encoder is None:
        raise ValueError("a captioned image folder for a text model needs train.text_encoder (a T5 folder)")
    return "images"


def shard_fingerprint(folder: Path, index: dict) -> dict:
    """What identifies a folder of encoded shards: its index (a resume checks it)."""
    digest = hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()
    return {"folder": str(Path(folder).resolve()), "count": index.get("count"), "digest": digest}


def check_latent_channels(index: dict, folder: Path, in_channels: int) -> None:
    if index["in_channels"] != in_channels:
        raise ValueError(
            f"{folder} holds {index['in_channels']}-channel latents, the model expects "
            f"in_channels={in_channels}"
        )


# ----- the epoch order ------------------------------------------------------------------
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


def check_batches_exist(num_batches: int, dataset_size: int, global_batch: int, buckets: bool) -> None:
    if num_batches == 0:
        where = " in any aspect-ratio bucket" if buckets else ""
        raise ValueError(
            f"the dataset has {dataset_size} usable samples, fewer than one global micro-batch of "
            f"{global_batch}{where}; lower train.batch_size or add data"
        )


# ----- encoded latent shards -------------------------------------------------------------
def shard_index(
    folder: ImageFolder, shards: list[dict], image_size: int, txt_size: int, corrupt: int
) -> dict:
    """index.json of an encoded folder (written last: a folder without it is unfinished).

    Shards hold `latents` (N, C, h, w) (VAE latents times the scaling factor, one bucket per
    shard) and for text models `text` (N, txt_size, txt_dim) with `mask` (N, txt_size), for
    label models `label` (N,); NULL_TEXT_FILE holds the encoded empty prompt.
    """
    if not shards:
        raise ValueError(
            f"no image of {folder.folder} could be decoded ({corrupt} corrupt); nothing was encoded"
        )
    return {
        "format": SHARD_INDEX_FORMAT,
        "conditioning": folder.conditioning,
        "in_channels": shards[0]["shape"][0],
        "image_size": image_size,
        "txt_size": txt_size if folder.conditioning == "text" else 0,
        "class_names": folder.class_names,
        "corrupt_images": corrupt,
        "count": sum(s["count"] for s in shards),
        "shards": shards,
    }


def indices_by_bucket(folder: ImageFolder) -> dict[str, list[int]]:
    by_bucket: dict[str, list[int]] = {}
    for index, bucket in enumerate(folder.buckets):
        by_bucket.setdefault(bucket, []).append(index)
    return {bucket: by_bucket[bucket] for bucket in sorted(by_bucket)}


def describe_shards(index: dict) -> str:
    return (
        json.dumps({k: v for k, v in index.items() if k != "shards"}) + f" in {len(index['shards'])} shards"
    )


def check_encode_sizes(**sizes: int) -> None:
    """Encoding sizes and counts (image_size, txt_size, multiple, batch_size, shard_size) must be
    >= 1: 0 would loop forever or divide by zero, a negative size would write empty latents."""
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def encode_argument_parser(module: str, description: str) -> argparse.ArgumentParser:
    """The encoders' shared command line (each twin may add its own options)."""
    from starflow_core.command_line import command_parser, positive_int

    parser = command_parser(module, description)
    parser.add_argument("--images", required=True, help="image folder (metadata.jsonl or class subfolders)")
    parser.add_argument(
        "-o",
        "--output",
        "--out",
        dest="out",
        metavar="FOLDER",
        required=True,
        help="output folder for the shards and index.json",
    )
    parser.add_argument("--vae", required=True, help="AutoencoderKL folder (diffusers layout)")
    parser.add_argument("--text-encoder", help="T5 folder with tokenizer files (text conditioning)")
    parser.add_argument(
        "--conditioning", choices=CONDITIONINGS, default="text", help="what the model is conditioned on"
    )
    parser.add_argument("--image-size", type=positive_int, default=256, help="pixels (the 1:1 side)")
    parser.add_argument("--txt-size", type=positive_int, default=128, help="text tokens (padded / truncated)")
    parser.add_argument(
        "--multiple", type=positive_int, default=8, help="bucket sides are multiples of this (VAE x patch)"
    )
    parser.add_argument("--buckets", action="store_true", help="aspect-ratio buckets instead of 1:1 crops")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images encoded together")
    parser.add_argument("--shard-size", type=positive_int, default=1024, help="samples per shard file")
    parser.add_argument(
        "--dtype", choices=("float16", "bfloat16", "float32"), default="float16", help="stored latents"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    return parser


def encode_command(module: str, args: argparse.Namespace, encode) -> int:
    """Both encoders' command: `encode(out)` writes the shards of args.images into the folder
    `out`, a staging folder swapped onto args.out when complete (an existing one is replaced
    only then, and only with --overwrite); errors exit 2 with one line, Ctrl-C 130."""
    from starflow_core.command_line import command_name, run_command
    from starflow_core.staging import check_output_apart, staged_folder

    def body() -> int:
        out = Path(args.out)
        if (out.exists() or out.is_symlink()) and not args.overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
        check_output_apart(out, [args.images, args.vae, args.text_encoder])
        with staged_folder(out, overwrite=args.overwrite) as staging:
            index = encode(staging)
        print(f"wrote {out}: {describe_shards(index)}")
        return 0

    return run_command(command_name(module), body)
