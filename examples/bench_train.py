"""Measure training throughput (samples/s) of a preset with the torch trainer, on synthetic shards.

    python examples/bench_train.py --preset bench-small --batch 8 --warmup 2 --steps 3

Writes a small synthetic latent dataset (random images through a pooling stand-in
VAE, random-word text features) with encode_dataset, then runs the real training
loop (`starflow_torch.training.train`, single process) and reports the samples/s of
the steps after the warm-up, read from the run's JSONL log.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from starflow_core.config import VAE_DOWNSAMPLE
from starflow_core.presets import preset
from starflow_torch import StarFlow
from starflow_torch.training import load_run_config, train
from starflow_torch.training.encode import encode_dataset


class PoolingVAE:
    """Stand-in for the SD-VAE: 8x average pooling to 4 channels (the shapes are what matter)."""

    def encode(self, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
        pooled = F.avg_pool2d(images, VAE_DOWNSAMPLE)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


class RandomTextEncoder:
    def __init__(self, width: int):
        self.width = width

    def encode(self, prompts: list[str], max_length: int) -> torch.Tensor:
        return torch.randn(len(prompts), max_length, self.width)


def synthetic_shards(root: Path, count: int, pixels: int, txt_size: int, txt_dim: int) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (pixels, pixels, 3), dtype=np.uint8)).save(images / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"image {i}"}))
    (images / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    encode_dataset(
        images, root / "shards", PoolingVAE(), RandomTextEncoder(txt_dim),
        image_size=pixels, txt_size=txt_size, dtype=torch.float32,
    )  # fmt: skip
    return root / "shards"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench-small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = preset(args.preset)
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = synthetic_shards(
            root, args.batch * total, config.img_size * VAE_DOWNSAMPLE, config.txt_size, config.txt_dim
        )
        settings = [
            f"model.preset={args.preset}",
            f"train.data={shards}",
            f"train.out_dir={root / 'run'}",
            f"train.steps={total}",
            f"train.batch_size={args.batch}",
            "train.num_workers=0",
            "train.log_every=1",
            f"train.save_every={total + 1}",
            f"train.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        ]
        train(load_run_config(None, settings), stop_at_step=total)
        log = [json.loads(line) for line in (root / "run" / "log.jsonl").read_text().splitlines()]
    rates = [record["samples_per_s"] for record in log[args.warmup :]]
    parameters = StarFlow(config).num_parameters()
    print(
        f"{args.preset} ({parameters / 1e6:.1f}M parameters), batch {args.batch}, {args.threads} threads, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}: "
        f"{statistics.median(rates):.2f} samples/s (median of {len(rates)} steps after {args.warmup} warm-up; "
        f"per step: {', '.join(f'{r:.2f}' for r in rates)})"
    )


if __name__ == "__main__":
    main()
