"""Encode an image folder once into safetensors shards for latent models, with MLX.

The twin of starflow_torch/training/encode.py, writing the same shard format (index
and layout: starflow_core.training.image_folders.shard_index): `latents` (N, C, h, w) in the
torch layout, so shards encoded by either twin train in either twin.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np

from starflow_core.io import atomic_path, atomic_write_json
from starflow_core.training.image_folders import (
    NULL_TEXT_FILE,
    SHARD_INDEX,
    describe_shards,
    indices_by_bucket,
    shard_index,
)

from ..data import ImageFolderDataset

describe = describe_shards


def _write_shard(path: Path, arrays: dict[str, mx.array]) -> None:
    with atomic_path(path) as tmp:
        target = tmp.with_suffix(".safetensors")  # mx.save_safetensors insists on the suffix
        mx.save_safetensors(str(target), arrays)
        target.replace(tmp)


def encode_dataset(
    images: str | Path,
    out_dir: str | Path,
    vae,
    text_encoder=None,
    *,
    conditioning: str = "text",
    image_size: int = 256,
    txt_size: int = 128,
    multiple: int = 8,
    buckets: bool = False,
    batch_size: int = 16,
    shard_size: int = 1024,
    dtype: mx.Dtype = mx.float16,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Encode `images` with `vae` (and captions with `text_encoder`) into shards in `out_dir`.

    vae: `.encode(images (B, H, W, 3) in [-1, 1], sample=False)` -> scaled latents (NHWC);
    text_encoder: `.encode(prompts, max_length)` -> (B, max_length, d). Corrupt images
    are skipped and counted in the index. Returns the index.
    """
    if conditioning == "text" and text_encoder is None:
        raise ValueError("text conditioning needs a text encoder (--text-encoder)")
    dataset = ImageFolderDataset(images, conditioning, image_size, multiple, buckets)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_bucket = indices_by_bucket(dataset)
    shards, corrupt = [], 0
    for bucket in by_bucket:
        pending: dict[str, list[mx.array]] = {}
        for start in range(0, len(by_bucket[bucket]), batch_size):
            chunk = by_bucket[bucket][start : start + batch_size]
            pixels = [dataset.read_image(i, flip=False) for i in chunk]
            kept = [(i, p) for i, p in zip(chunk, pixels, strict=True) if p is not None]
            corrupt += len(chunk) - len(kept)
            if progress is not None:
                progress(len(chunk))
            if not kept:
                continue
            latents = vae.encode(mx.array(np.stack([p for _, p in kept])), sample=False)
            encoded = {"latents": latents.astype(mx.float32).transpose(0, 3, 1, 2).astype(dtype)}
            targets = [dataset.targets[i] for i, _ in kept]
            if conditioning == "text":
                features = text_encoder.encode(targets, txt_size).astype(mx.float32)
                encoded["text"] = features.astype(dtype)
                encoded["mask"] = (mx.abs(features).sum(-1) > 0).astype(mx.uint8)
            elif conditioning == "label":
                encoded["label"] = mx.array(targets, dtype=mx.int64)
            mx.eval(encoded)
            for key, value in encoded.items():
                pending.setdefault(key, []).append(value)
            while pending and sum(len(v) for v in pending["latents"]) >= shard_size:
                shards.append(_flush(out_dir, len(shards), bucket, pending, shard_size))
        if pending:
            shards.append(_flush(out_dir, len(shards), bucket, pending, None))
    index = shard_index(dataset, shards, image_size, txt_size, corrupt)
    if conditioning == "text":
        null = text_encoder.encode([""], txt_size).astype(mx.float32)[0]
        _write_shard(out_dir / NULL_TEXT_FILE, {"text": null.astype(dtype)})
        index["null_text"] = NULL_TEXT_FILE
        index["txt_dim"] = int(null.shape[-1])
    atomic_write_json(out_dir / SHARD_INDEX, index)
    return index


def _flush(out_dir: Path, number: int, bucket: str, pending: dict, limit: int | None) -> dict:
    """Write up to `limit` pending samples (all if None) as one shard; keep the rest pending."""
    merged = {key: mx.concatenate(values) for key, values in pending.items()}
    count = len(merged["latents"]) if limit is None else limit
    name = f"shard_{number:05d}.safetensors"
    _write_shard(out_dir / name, {key: value[:count] for key, value in merged.items()})
    pending.clear()
    if count < len(merged["latents"]):
        pending.update({key: [value[count:]] for key, value in merged.items()})
    return {"file": name, "count": count, "bucket": bucket, "shape": list(merged["latents"].shape[1:])}
