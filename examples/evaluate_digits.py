"""Measure a digits model: held-out bits/dim, class accuracy of generated digits, diversity.

    python examples/evaluate_digits.py                         # the shipped demo -> outputs/digits_eval.{json,png}
    python examples/evaluate_digits.py --per-class 10 --guidance 0 1 --twin torch
    python examples/evaluate_digits.py --model runs/digits/checkpoints/step_00002000/ema

The model is sampled through the regular pipeline (StarFlowPipeline of either twin: flow
inverse with guidance, score denoising), as `python -m starflow_mlx.generate` does. An SVC
trained on the real training digits judges whether each generated digit is the requested
class; diversity is the mean within-class pairwise distance of generated digits relative to
that of the real held-out digits. The PNG shows one row per class at the model's default
guidance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from starflow_core.digits import (
    classify,
    discrete_bits_per_dim,
    fit_classifier,
    held_out_bits_per_dim,
    load_digits_split,
    mean_pairwise_distance,
    sample_classes,
)
from starflow_core.generation.images import enlarge_for_viewing, make_grid, save_png, to_uint8
from starflow_core.sources.releases import DEMO_NAME

GRID_COLUMNS = 10


def load_pipeline(model: str, twin: str):
    """Either twin's StarFlowPipeline (float32, the default of both)."""
    if twin == "mlx":
        import starflow_mlx

        starflow_mlx.use_system_blas()  # this script owns its process: MLX gets OpenBLAS on Linux
        from starflow_mlx.pipeline import StarFlowPipeline
    else:
        from starflow_torch.pipeline import StarFlowPipeline
    return StarFlowPipeline.from_pretrained(model)


def evaluate(pipe, per_class: int, guidances: list[float], seed: int) -> tuple[dict, np.ndarray]:
    split = load_digits_split(seed=0)  # the split the model was trained on (examples/digits_to_folder.py)
    classifier = fit_classifier(split)
    real_accuracy = float(np.mean(classify(classifier, split.test_images) == split.test_labels))
    real_diversity = mean_pairwise_distance(split.test_images, split.test_labels)
    bpd = held_out_bits_per_dim(pipe, split.test_images, split.test_labels, seed)
    default_guidance = pipe.parts.sampling.guidance
    results = {
        "model": pipe.parts.name,
        "default_guidance": default_guidance,
        "held_out_bits_per_dim": bpd,
        "held_out_bits_per_dim_16_levels": discrete_bits_per_dim(bpd),
        "classifier_accuracy_on_real_held_out": real_accuracy,
        "samples_per_class": per_class,
        "first_seed": seed,
        "by_guidance": {},
    }
    grid = None
    for guidance in guidances:
        digits, labels = sample_classes(pipe, per_class, guidance, seed)
        accuracy = float(np.mean(classify(classifier, digits) == labels))
        diversity = mean_pairwise_distance(digits, labels) / real_diversity
        results["by_guidance"][str(guidance)] = {"accuracy": accuracy, "diversity_vs_real": diversity}
        print(f"guidance {guidance:g}: accuracy {accuracy:.3f}, diversity {diversity:.2f} of real")
        if guidance == default_guidance or grid is None:
            columns = min(per_class, GRID_COLUMNS)
            cells = digits.reshape(-1, per_class, 8, 8)[:, :columns].reshape(-1, 8, 8)  # class-major
            cells = np.pad(cells, ((0, 0), (1, 1), (1, 1)), constant_values=-1.0)  # black gap between digits
            pixels = to_uint8(cells[..., None])  # (classes * columns, 10, 10, 3)
            grid = make_grid([enlarge_for_viewing(p) for p in pixels], cols=columns)
    print(f"held-out bits/dim {bpd:.3f} (16-level equivalent {discrete_bits_per_dim(bpd):.3f})")
    print(f"classifier accuracy on real held-out digits {real_accuracy:.3f}")
    return results, grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEMO_NAME, help="pipeline or flow folder; default: the demo")
    parser.add_argument("--twin", choices=("mlx", "torch"), default="mlx")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--guidance", type=float, nargs="+", help="default: 0 and the model's default")
    parser.add_argument("--seed", type=int, default=0, help="first noise seed; also the held-out noise")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/digits_eval"), help="writes OUT.json, OUT.png"
    )
    args = parser.parse_args()

    pipe = load_pipeline(args.model, args.twin)
    guidances = args.guidance or sorted({0.0, pipe.parts.sampling.guidance})
    results, grid = evaluate(pipe, args.per_class, guidances, args.seed)
    results["twin"] = args.twin
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    metadata = {"model": results["model"], "cfg": f"{results['default_guidance']:g}", "first_seed": args.seed}
    save_png(args.out.with_suffix(".png"), grid, metadata)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
