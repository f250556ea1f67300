"""Tiny datasets, stand-in encoders and run configs for the training tests."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# a pixel TARFlow with 2 classes on 8x8 RGB images (16 tokens of 12 features)
TARFLOW_TINY = dict(
    family="tarflow",
    in_channels=3,
    img_size=8,
    patch_size=2,
    channels=32,
    head_dim=16,
    num_blocks=2,
    layers_per_block=1,
    num_classes=2,
)
# a text-conditioned latent STARFlow on 4x4x4 latents (the stand-in VAE halves 8x8 images)
STARFLOW_TINY = dict(
    in_channels=4,
    img_size=4,
    patch_size=1,
    channels=32,
    head_dim=32,
    num_blocks=2,
    layers_per_block=[1, 1],
    rope=True,
    sos=True,
    txt_size=4,
    txt_dim=8,
    cond_top_only=True,
    use_softplus=True,
    use_final_norm=True,
    soft_clip=4.0,
    seq_order="L2R",
    noise_std=0.3,
)
WORDS = ["red", "green", "blue", "cat", "dog", "boat", "sun", "moon", "tree", "sky"]


def random_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def make_class_folder(
    root: Path, classes: int = 2, per_class: int = 4, size: tuple[int, int] = (10, 12)
) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            random_image(rng, *size).save(folder / f"{i}.png")
    return root


def make_caption_folder(root: Path, count: int = 8, sizes: tuple[tuple[int, int], ...] = ((8, 8),)) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        random_image(rng, *sizes[i % len(sizes)]).save(root / f"{i}.png")
        caption = " ".join(rng.choice(WORDS, size=1 + i % 3))
        lines.append(json.dumps({"file_name": f"{i}.png", "text": caption}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


class StandInVAE:
    """Deterministic 2x-downsampling 'VAE' with the AutoencoderKL.encode interface."""

    def encode(self, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
        pooled = F.avg_pool2d(images, 2)  # (B, 3, H/2, W/2)
        return 0.5 * torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


class StandInTextEncoder:
    """One fixed random vector per word, zero rows for padding (the TextEncoder interface)."""

    def __init__(self, width: int = 8):
        self.width = width

    def encode(self, prompts: list[str], max_length: int) -> torch.Tensor:
        out = torch.zeros(len(prompts), max_length, self.width)
        for row, prompt in enumerate(prompts):
            for k, word in enumerate(prompt.split()[:max_length]):
                generator = torch.Generator().manual_seed(zlib.crc32(word.encode()))
                out[row, k] = torch.randn(self.width, generator=generator)
        return out


def encode_caption_shards(root: Path, count: int = 8, sizes=((8, 8),), buckets: bool = False) -> Path:
    from starflow_torch.training.encode import encode_dataset

    images = make_caption_folder(root / "images", count, sizes)
    encode_dataset(
        images,
        root / "shards",
        StandInVAE(),
        StandInTextEncoder(STARFLOW_TINY["txt_dim"]),
        image_size=8,
        txt_size=STARFLOW_TINY["txt_size"],
        multiple=2,
        buckets=buckets,
        batch_size=4,
        shard_size=5,
        dtype=torch.float32,
    )
    return root / "shards"


def overrides(model: dict, **train) -> list[str]:
    """`section.key=value` strings for load_run_config (JSON values parse as YAML)."""
    items = [f"model.{k}={json.dumps(v)}" for k, v in model.items()]
    defaults = dict(batch_size=4, num_workers=0, warmup_steps=1, lr=1e-3, log_every=1, save_every=1000)
    defaults.update(train)
    items += [f"train.{k}={json.dumps(v)}" for k, v in defaults.items()]
    return items


def read_log(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
