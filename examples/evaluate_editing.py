"""Measure inpainting, image-to-image and scoring on the digits demo model (docs/editing.md).

    python examples/evaluate_editing.py                  # -> docs/editing_eval.{json,png}, docs/editing_img2img.png
    python examples/evaluate_editing.py --twin torch --completions 1 --out outputs/editing_torch

Inpainting: the bottom half of every held-out digit (the 20% test split) is hidden and
regenerated, under the true label and unconditioned (""), `--completions` seeds each; the
SVC trained on the real training digits judges the completed digits, against the baseline of
pasting the bottom half of a plain sample (same condition and seed). Image-to-image: each
digit is moved toward another digit ((label + 1 + i % 9) mod 10) at strengths 0..1. Scoring:
exact bits/dim of real held-out digits, generated digits and pixel-shuffled real digits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from starflow_core import digits_editing as measures
from starflow_core.digits import fit_classifier, load_digits_split, sample_classes
from starflow_core.generation.editing import DEFAULT_ROUNDS
from starflow_core.generation.images import enlarge_for_viewing, make_grid, save_png, to_uint8
from starflow_core.sources.releases import DEMO_NAME

GRID_DIGITS = 10  # one held-out digit per class in the picture
GRID_COMPLETIONS = 4
STRENGTHS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def load_pipeline(model: str, twin: str):
    if twin == "mlx":
        import starflow_mlx

        starflow_mlx.use_system_blas()  # this script owns its process: MLX gets OpenBLAS on Linux
        from starflow_mlx.pipeline import StarFlowPipeline
    else:
        from starflow_torch.pipeline import StarFlowPipeline
    return StarFlowPipeline.from_pretrained(model)


def inpainting(pipe, classifier, split, completions: int, rounds_sweep: list[int]) -> tuple[dict, dict]:
    images, labels = split.test_images, split.test_labels
    count = len(images)
    results, completed = {"held_out_digits": count, "completions_per_digit": completions}, {}
    for name, condition in (("true_label", labels), ("unconditioned", None)):
        entry, unchanged = {"by_rounds": {}}, True
        for rounds in sorted(set(rounds_sweep) | {DEFAULT_ROUNDS}):
            scores = []
            for k in range(completions):
                seeds = list(range(k * count, (k + 1) * count))
                done = measures.inpaint_bottom_halves(pipe, images, condition, seeds, rounds)
                unchanged &= bool(np.array_equal(done[:, :4], images[:, :4]))
                scores.append(measures.accuracy(classifier, done, labels))
                if rounds == DEFAULT_ROUNDS:
                    completed.setdefault(name, []).append(done)
            entry["by_rounds"][str(rounds)] = float(np.mean(scores))
            print(f"inpainting {name}, {rounds} rounds: accuracy {np.mean(scores):.3f}", flush=True)
        baseline = [
            measures.accuracy(
                classifier,
                measures.fill_with_samples(pipe, images, condition, list(range(k * count, (k + 1) * count))),
                labels,
            )
            for k in range(completions)
        ]
        entry["top_half_unchanged_bit_for_bit"] = unchanged  # every completion, every rounds setting
        entry["accuracy"] = entry["by_rounds"][str(DEFAULT_ROUNDS)]
        entry["baseline_plain_samples"] = float(np.mean(baseline))
        print(f"inpainting {name}: baseline (plain samples pasted) {np.mean(baseline):.3f}", flush=True)
        results[name] = entry
    return results, completed


def inpainting_grid(split, completed: dict) -> np.ndarray:
    """Rows: one held-out digit per class. Columns: original, masked (hidden half grey),
    4 completions under the true label, 4 unconditioned."""
    picks = [int(np.flatnonzero(split.test_labels == digit)[0]) for digit in range(GRID_DIGITS)]
    masked = np.where(measures.bottom_half_mask() > 0, 0.0, split.test_images)
    cells = []
    for index in picks:
        row = [split.test_images[index], masked[index]]
        for name in ("true_label", "unconditioned"):
            row += [done[index] for done in completed[name][:GRID_COMPLETIONS]]
        cells += row
    cells = np.pad(np.clip(np.stack(cells), -1, 1), ((0, 0), (1, 1), (1, 1)), constant_values=-1.0)
    columns = 2 + 2 * min(GRID_COMPLETIONS, len(completed["true_label"]))
    return make_grid([enlarge_for_viewing(p) for p in to_uint8(cells[..., None])], cols=columns)


def image_to_image(pipe, classifier, split, seed: int) -> dict:
    images, labels = split.test_images, split.test_labels
    targets = (labels + 1 + np.arange(len(labels)) % 9) % 10  # always another digit
    results = {"targets": "(label + 1 + i % 9) mod 10", "strengths": list(STRENGTHS)}
    for name, source_is_label in (("inverted_under_target", False), ("inverted_under_true_label", True)):
        rows = measures.image_to_image_sweep(
            pipe, classifier, images, labels, targets, STRENGTHS, seed, source_is_label
        )
        results[name] = rows
        for row in rows:
            print(
                f"img2img ({name}) S={row['strength']:.1f}: distance {row['distance_to_input']:.3f}, "
                f"source {row['classified_as_source']:.3f}, target {row['classified_as_target']:.3f}",
                flush=True,
            )
    return results


def plot_image_to_image(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, style in (("inverted_under_target", "-o"), ("inverted_under_true_label", "--s")):
        rows = results[name]
        strengths = [row["strength"] for row in rows]
        label = (
            "inverse under the target digit"
            if name == "inverted_under_target"
            else "inverse under the true digit"
        )
        left.plot(strengths, [row["distance_to_input"] for row in rows], style, label=label)
        right.plot(
            strengths, [row["classified_as_source"] for row in rows], style, label=f"source digit ({label})"
        )
        right.plot(
            strengths,
            [row["classified_as_target"] for row in rows],
            style,
            alpha=0.5,
            label=f"target digit ({label})",
        )
    left.set(xlabel="strength S", ylabel="mean distance to the input (pixels in [-1, 1])", title="distance")
    right.set(
        xlabel="strength S", ylabel="share of held-out digits", title="classified as", ylim=(-0.02, 1.02)
    )
    left.legend(fontsize=7)
    right.legend(fontsize=6)
    figure.suptitle("image-to-image toward another digit, starflow-digits-demo (360 held-out digits)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def scoring(pipe, split, seed: int) -> dict:
    real, labels = split.test_images, split.test_labels
    per_class = int(np.ceil(len(real) / 10))
    generated, generated_labels = sample_classes(pipe, per_class, first_seed=10_000 + seed)
    shuffled = measures.shuffle_pixels(real, seed)
    sets = {
        "real_held_out": (real, labels),
        "generated": (generated, generated_labels),
        "shuffled_pixels": (shuffled, labels),
    }
    results = {}
    for condition in ("true_label", "unconditioned"):
        bits = {
            name: measures.bits_per_dim(pipe, images, set_labels if condition == "true_label" else None)
            for name, (images, set_labels) in sets.items()
        }
        results[condition] = {
            name: {"mean": float(b.mean()), "median": float(np.median(b)), "std": float(b.std())}
            for name, b in bits.items()
        }
        results[condition]["share_shuffled_above_real"] = measures.share_above(
            bits["shuffled_pixels"], bits["real_held_out"]
        )
        results[condition]["share_shuffled_above_generated"] = measures.share_above(
            bits["shuffled_pixels"], bits["generated"]
        )
        summary = ", ".join(f"{name} {b.mean():.3f}" for name, b in bits.items())
        print(f"bits/dim ({condition}): {summary}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEMO_NAME, help="a digits pipeline; default: the demo")
    parser.add_argument("--twin", choices=("mlx", "torch"), default="mlx")
    parser.add_argument("--completions", type=int, default=4, help="inpainting seeds per held-out digit")
    parser.add_argument(
        "--rounds", type=int, nargs="+", default=[1, 2, 4, 8], help="inpainting rounds to compare"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("docs/editing_eval"), help="writes OUT.json, OUT.png"
    )
    args = parser.parse_args()

    start = time.perf_counter()
    pipe = load_pipeline(args.model, args.twin)
    split = load_digits_split(seed=0)  # the split the model was trained on
    classifier = fit_classifier(split)
    results = {"model": pipe.parts.name, "twin": args.twin, "guidance": pipe.parts.sampling.guidance}
    results["inpainting"], completed = inpainting(pipe, classifier, split, args.completions, args.rounds)
    results["image_to_image"] = image_to_image(pipe, classifier, split, args.seed)
    results["scoring_bits_per_dim"] = scoring(pipe, split, args.seed)
    results["seconds"] = round(time.perf_counter() - start, 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    save_png(args.out.with_suffix(".png"), inpainting_grid(split, completed), {"model": results["model"]})
    plot_path = args.out.with_name(args.out.name.replace("_eval", "") + "_img2img.png")
    plot_image_to_image(results["image_to_image"], plot_path)
    print(f"wrote {args.out.with_suffix('.json')}, {args.out.with_suffix('.png')} and {plot_path}")


if __name__ == "__main__":
    main()
