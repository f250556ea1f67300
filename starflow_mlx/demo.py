"""The embedded demo model: class-conditional STARFlow digits (scikit-learn's 8x8 digits).

    from starflow_mlx.demo import generate_digits
    generate_digits(["7", "seven", ""], seeds=[0, 1, 2, 3], guidance=1.0, output="digits.png")

Prompts select a digit by number or name; an empty prompt samples unconditionally (the
null label). Sampling: noise ~ N(0, I) -> flow inverse (with guidance) -> one score-based
denoising step at sigma = noise_std -> clip to [-1, 1]. Weights: assets/demo/ (trained
by examples/train_digits.py).
"""

from __future__ import annotations

from . import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux, before mlx loads)

# isort: split
import json
from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx
import numpy as np

from starflow_core.digits import DIGIT_NAMES, classify
from starflow_core.generation.images import png_metadata
from starflow_core.generation.inputs import make_noise, prompts_to_labels
from starflow_core.sources.pipeline_folder import MODEL_INDEX
from starflow_core.sources.releases import DEMO_FOLDER  # noqa: E402
from starflow_core.version import package_version

from .model import StarFlow

UPSCALE = 8  # 8x8 digits are shown as 64x64 pixels (nearest neighbour)


def load_demo(folder: str | Path = DEMO_FOLDER) -> tuple[StarFlow, dict]:
    """The demo flow (float32) and its model_index.json."""
    folder = Path(folder)
    if not (folder / MODEL_INDEX).is_file():
        raise FileNotFoundError(f"no demo model at {folder}; train one with examples/train_digits.py")
    return StarFlow.from_pretrained(folder / "transformer", dtype=mx.float32), json.loads(
        (folder / MODEL_INDEX).read_text()
    )


def sample_digits(
    model: StarFlow, labels: Sequence[int], noise: np.ndarray, guidance: float, denoise: bool = True
) -> np.ndarray:
    """labels (B,) with -1 for unconditional, noise (B, 1, 8, 8) -> digits (B, 8, 8) in [-1, 1]."""
    y = mx.array(np.asarray(labels), dtype=mx.int32)
    x = model.sample(mx.array(noise.transpose(0, 2, 3, 1)), y, guidance=guidance)  # (B, 8, 8, 1)
    if denoise:
        x = model.denoise(x, y)
    return np.clip(np.array(x[..., 0]), -1.0, 1.0)


def digit_grid(digits: np.ndarray, rows: int, upscale: int = UPSCALE) -> np.ndarray:
    """(rows * cols, h, w) in [-1, 1] -> one uint8 image, each digit upscaled (nearest), white on black."""
    pixels = np.clip((digits + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    pixels = pixels.repeat(upscale, axis=1).repeat(upscale, axis=2)
    count, height, width = pixels.shape
    cols = count // rows
    return (
        pixels.reshape(rows, cols, height, width).transpose(0, 2, 1, 3).reshape(rows * height, cols * width)
    )


def generate_digits(
    prompts: Sequence[str],
    seeds: Sequence[int],
    guidance: float | None = None,
    output: str | Path = "digits.png",
    folder: str | Path = DEMO_FOLDER,
) -> Path:
    """Write a PNG grid: one row per prompt, one column per seed; returns its path."""
    from PIL import Image

    if not prompts or not seeds:
        raise ValueError("give at least one prompt (a digit, its name, or '' for any) and one seed")
    model, index = load_demo(folder)
    guidance = index["sampling"]["guidance"] if guidance is None else guidance
    labels = prompts_to_labels(list(prompts), model.config.num_classes, index.get("labels") or DIGIT_NAMES)
    row_labels = [label for label in labels for _ in seeds]
    noise = make_noise(
        [seed for _ in labels for seed in seeds], 1, model.config.img_size, model.config.img_size
    )
    digits = sample_digits(model, row_labels, noise, guidance)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "model": index.get("name", "starflow-digits-demo"),
        "prompts": json.dumps(list(prompts)),
        "seeds": json.dumps(list(seeds)),
        "guidance": guidance,
        "sampler": "sequential + score denoising",
        "version": package_version(),
    }
    Image.fromarray(digit_grid(digits, rows=len(prompts))).save(output, pnginfo=png_metadata(metadata))
    print(f"wrote {output} ({len(prompts)} rows x {len(seeds)} columns)")
    return output


# ----- measured quality -----------------------------------------------------------------
def held_out_bits_per_dim(model: StarFlow, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Mean exact bits/dim (model units) of held-out digits with the training noise added."""
    rng = np.random.default_rng(seed)
    noisy = images + model.config.noise_std * rng.standard_normal(images.shape).astype(np.float32)
    bpd = model.bits_per_dim(mx.array(noisy[..., None]), mx.array(labels, dtype=mx.int32))  # (N,)
    return float(np.mean(np.array(bpd)))


def class_accuracy(
    model: StarFlow, classifier, per_class: int, guidance: float, seed: int = 0
) -> tuple[float, np.ndarray, np.ndarray]:
    """Sample per_class digits of each class; (accuracy of the classifier, digits, labels)."""
    classes = model.config.num_classes
    labels = np.repeat(np.arange(classes), per_class)
    noise = make_noise(range(seed, seed + len(labels)), 1, model.config.img_size, model.config.img_size)
    digits = sample_digits(model, labels, noise, guidance)
    return float(np.mean(classify(classifier, digits) == labels)), digits, labels


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m starflow_mlx.demo", description="Generate demo digits.")
    parser.add_argument("prompts", nargs="*", help='digits ("7" or "seven"); "" for any; default: 0..9')
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--guidance", type=float, help="default: the model's (model_index.json)")
    parser.add_argument("--output", type=Path, default=Path("digits.png"))
    parser.add_argument("--model", type=Path, default=DEMO_FOLDER, help="demo pipeline folder")
    args = parser.parse_args(argv)
    prompts = args.prompts or [str(d) for d in range(10)]
    generate_digits(prompts, args.seeds, args.guidance, args.output, folder=args.model)


if __name__ == "__main__":
    main()
