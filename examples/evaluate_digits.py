"""Measure the demo model: held-out bits/dim, class accuracy of generated digits, diversity.

    python examples/evaluate_digits.py                         # writes outputs/digits_eval.{json,png}
    python examples/evaluate_digits.py --per-class 10 --guidance 0 1

An SVC trained on the real training digits judges whether each generated digit is the
requested class; diversity is the mean within-class pairwise distance of generated
digits relative to that of the real held-out digits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from starflow_core.digits import (
    classify,
    discrete_bits_per_dim,
    fit_classifier,
    load_digits_split,
    mean_pairwise_distance,
)
from starflow_mlx.demo import DEMO_FOLDER, class_accuracy, digit_grid, held_out_bits_per_dim, load_demo


def evaluate(folder: Path, per_class: int, guidances: list[float], seed: int) -> tuple[dict, np.ndarray]:
    model, index = load_demo(folder)
    split = load_digits_split(seed=0)  # the training split (examples/train_digits.py, seed 0)
    classifier = fit_classifier(split)
    real_accuracy = float(np.mean(classify(classifier, split.test_images) == split.test_labels))
    real_diversity = mean_pairwise_distance(split.test_images, split.test_labels)
    bpd = held_out_bits_per_dim(model, split.test_images, split.test_labels, seed)
    results = {
        "model": index.get("name"),
        "default_guidance": index["sampling"]["guidance"],
        "held_out_bits_per_dim": bpd,
        "held_out_bits_per_dim_16_levels": discrete_bits_per_dim(bpd),
        "classifier_accuracy_on_real_held_out": real_accuracy,
        "samples_per_class": per_class,
        "by_guidance": {},
    }
    grid = None
    for guidance in guidances:
        accuracy, digits, labels = class_accuracy(model, classifier, per_class, guidance, seed)
        diversity = mean_pairwise_distance(digits, labels) / real_diversity
        results["by_guidance"][str(guidance)] = {"accuracy": accuracy, "diversity_vs_real": diversity}
        print(f"guidance {guidance:g}: accuracy {accuracy:.3f}, diversity {diversity:.2f} of real")
        if guidance == results["default_guidance"] or grid is None:
            columns = min(per_class, 10)
            grid = digit_grid(digits.reshape(10, per_class, 8, 8)[:, :columns].reshape(-1, 8, 8), rows=10)
    print(f"held-out bits/dim {bpd:.3f} (16-level equivalent {discrete_bits_per_dim(bpd):.3f})")
    print(f"classifier accuracy on real held-out digits {real_accuracy:.3f}")
    return results, grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=DEMO_FOLDER)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--guidance", type=float, nargs="+", help="default: 0 and the model's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/digits_eval"), help="writes OUT.json, OUT.png"
    )
    args = parser.parse_args()

    guidances = args.guidance
    if guidances is None:
        default = json.loads((args.folder / "model_index.json").read_text())["sampling"]["guidance"]
        guidances = sorted({0.0, float(default)})
    results, grid = evaluate(args.folder, args.per_class, guidances, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    Image.fromarray(grid).save(args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
