"""Compare training runs of the two twins: loss curves, seed-to-seed noise, and the trained models.

    python examples/digits_to_folder.py runs/cmp/digits_png
    for seed in 0 1; do
      python -m starflow_torch.train --config examples/digits_run.yaml \
          --data runs/cmp/digits_png/train --out-dir runs/cmp/torch_s$seed --set train.seed=$seed
      python -m starflow_mlx.train --config examples/digits_run.yaml \
          --data runs/cmp/digits_png/train --out-dir runs/cmp/mlx_s$seed --set train.seed=$seed
    done
    python examples/compare_training.py runs/cmp/torch_s0 runs/cmp/torch_s1 runs/cmp/mlx_s0 runs/cmp/mlx_s1 \
        --out docs/digits_mlx_vs_torch

"Within noise" is measured, not eyeballed: the RMS difference between two runs' loss
curves (each smoothed over `--window` logged steps, from the end of warmup) is computed
for every pair; pairs of one twin with different seeds give the noise level, pairs
across twins give the twin gap. The EMA weights of each run are then measured like the
demo model (examples/evaluate_digits.py): held-out bits/dim (exact likelihood) and the
class accuracy of generated digits, all with the MLX twin so only training differs.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from starflow_core.digits import (
    classify,
    fit_classifier,
    held_out_bits_per_dim,
    load_digits_split,
    sample_classes,
)
from starflow_core.training.files import LATEST_NAME, TORCH_STATE_NAME, save_png


def read_run(folder: Path) -> dict:
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    latest = folder / "checkpoints" / (folder / "checkpoints" / LATEST_NAME).read_text().strip()
    twin = "torch" if (latest / TORCH_STATE_NAME).is_file() else "mlx"
    run = json.loads((latest / "run.json").read_text())
    return {
        "name": folder.name,
        "twin": twin,
        "seed": run["train"]["seed"],
        "warmup_steps": run["train"]["warmup_steps"],
        "steps": np.array([r["step"] for r in records]),
        "loss": np.array([r["loss"] for r in records]),
        "checkpoint": latest,
    }


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def curve_gap(a: dict, b: dict, window: int) -> float:
    """RMS difference of the smoothed loss curves after warmup (same logged steps required)."""
    if not np.array_equal(a["steps"], b["steps"]):
        raise ValueError(f"{a['name']} and {b['name']} logged different steps; use the same run file")
    keep = a["steps"] > a["warmup_steps"]
    return float(
        np.sqrt(np.mean((smoothed(a["loss"][keep], window) - smoothed(b["loss"][keep], window)) ** 2))
    )


def measure_model(run: dict, split, classifier, per_class: int) -> dict:
    """Held-out bits/dim and class accuracy of a run's EMA weights, sampled by the MLX pipeline."""
    from starflow_mlx.pipeline import StarFlowPipeline

    pipe = StarFlowPipeline.from_pretrained(run["checkpoint"] / "ema")  # a flow folder; prompts "0".."9"
    bpd = held_out_bits_per_dim(pipe, split.test_images, split.test_labels, seed=0)
    accuracy = {}
    for guidance in (0.0, 1.0):
        digits, labels = sample_classes(pipe, per_class, guidance)
        accuracy[str(guidance)] = float(np.mean(classify(classifier, digits) == labels))
    return {"held_out_bits_per_dim": bpd, "accuracy_by_guidance": accuracy}


def plot(runs: list[dict], window: int, summary: dict, path: Path, recipe: str = "digits") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    colours = {"torch": "tab:orange", "mlx": "tab:blue"}
    seeds = sorted({run["seed"] for run in runs})
    for run in runs:
        style = ["-", "--", ":", "-."][seeds.index(run["seed"]) % 4]
        keep = run["steps"] > run["warmup_steps"]
        steps = run["steps"][keep][window - 1 :]
        label = f"{run['twin']} seed {run['seed']}"
        axis.plot(steps, smoothed(run["loss"][keep], window), style, color=colours[run["twin"]], label=label)
    axis.set_xlabel("step")
    axis.set_ylabel(f"loss (nats/dim, mean of {window} logged steps)")
    axis.set_title(
        f"{recipe} recipe: twin gap {summary['twin_gap_rms']:.4f} vs seed noise {summary['seed_noise_rms']:.4f} (RMS)"
    )
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    png = path.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    save_png(image, png, {"summary": json.dumps(summary)})


def curve_summary(runs: list[dict], window: int) -> dict:
    """Loss-curve gaps of every pair of runs: same twin (seed noise) and across twins."""
    same, across = [], []
    for a, b in itertools.combinations(runs, 2):
        (same if a["twin"] == b["twin"] else across).append(curve_gap(a, b, window))
    if not same or not across:
        raise SystemExit("give at least two seeds of one twin and one run of the other")
    return {
        "seed_noise_rms": float(np.mean(same)),
        "twin_gap_rms": float(np.mean(across)),
        "pairs_same_twin": same,
        "pairs_across_twins": across,
    }


def run_record(run: dict) -> dict:
    """A run's twin, seed and mean loss over its last 200 steps."""
    last = run["steps"] > run["steps"][-1] - 200
    return {
        "twin": run["twin"],
        "seed": run["seed"],
        "final_loss_last_200_steps": float(run["loss"][last].mean()),
    }


def write_summary(runs: list[dict], window: int, summary: dict, out: Path, recipe: str = "digits") -> None:
    """Print the gaps, write out.json and the loss-curve plot out.png."""
    print(
        f"loss-curve RMS gap: across twins {summary['twin_gap_rms']:.4f}, same twin {summary['seed_noise_rms']:.4f}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(runs, window, summary, out, recipe)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (out_dir of each training run)")
    parser.add_argument("--window", type=int, default=5, help="logged steps per smoothing window")
    parser.add_argument("--per-class", type=int, default=30, help="generated digits per class")
    parser.add_argument("--out", type=Path, default=Path("outputs/digits_mlx_vs_torch"))
    args = parser.parse_args()

    runs = [read_run(folder) for folder in args.runs]
    summary = {**curve_summary(runs, args.window), "runs": {}}
    import starflow_mlx

    starflow_mlx.use_system_blas()  # this script owns its process and samples with MLX only
    split = load_digits_split(seed=0)
    classifier = fit_classifier(split)
    for run in runs:
        summary["runs"][run["name"]] = {
            **run_record(run),
            **measure_model(run, split, classifier, args.per_class),
        }
        print(run["name"], json.dumps(summary["runs"][run["name"]]))
    write_summary(runs, args.window, summary, args.out)


if __name__ == "__main__":
    main()
