"""Write the scikit-learn digits as an image folder (one subfolder per class, 8x8 grey PNGs).

    python examples/digits_to_folder.py runs/digits_png            # train/ and test/ splits

The stratified split of starflow_core.digits (test/ is the held-out set that
examples/evaluate_digits.py measures). Grey levels 0..16 become pixels round(level * 255 / 16);
read back in [-1, 1] they are within 0.004 of the exact values (noise augmentation adds 0.08).
Folder names 0_zero .. 9_nine keep the labels in digit order. Train the demo model's recipe on
it with either twin:

    python -m starflow_mlx.train --config examples/digits_run.yaml --data runs/digits_png/train
    python -m starflow_torch.train --config examples/digits_run.yaml --data runs/digits_png/train
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from starflow_core.digits import DIGIT_NAMES, load_digits_split, to_levels


def write_split(images: np.ndarray, labels: np.ndarray, folder: Path) -> None:
    pixels = np.round(to_levels(images) * (255 / 16)).astype(np.uint8)
    for number, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        target = folder / f"{label}_{DIGIT_NAMES[label]}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(target / f"{number:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (train/ and test/ inside)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    args = parser.parse_args()
    split = load_digits_split(seed=args.seed)
    write_split(split.train_images, split.train_labels, args.out / "train")
    write_split(split.test_images, split.test_labels, args.out / "test")
    print(f"wrote {len(split.train_labels)} training and {len(split.test_labels)} test digits to {args.out}")


if __name__ == "__main__":
    main()
