"""Rebuild the digit feature extractor shipped in starflow_core/assets/digit_features/weights.npz.

    python examples/train_digit_features.py                      # -> starflow_core/assets/digit_features/weights.npz
    python examples/train_digit_features.py -o /tmp/features.npz

A small perceptron trained by scikit-learn on the real training digits of the demo's split
(the 80% the demo model was trained on); see starflow_core.evaluation.digit_features. Prints
its accuracy on the held-out 20%.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from starflow_core.digits import load_digits_split
from starflow_core.evaluation.digit_features import ASSET, train
from starflow_core.generation.images import to_uint8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ASSET)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    split = load_digits_split(seed=0)  # the split of examples/digits_to_folder.py
    features = train(to_uint8(split.train_images[..., None]), split.train_labels, args.seed)
    _, logits = features(to_uint8(split.test_images[..., None]))
    accuracy = float(np.mean(logits.argmax(1) == split.test_labels))
    features.save(args.output)
    print(f"held-out accuracy {accuracy:.4f}; wrote {args.output}")


if __name__ == "__main__":
    main()
