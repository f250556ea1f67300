"""Compare training runs of the moving-digits video recipe in the two twins: loss curves,
seed-to-seed noise, and the figures of the trained models.

    python -m starflow_mlx.train --config examples/moving_digits_run.yaml
    python -m starflow_torch.train --config examples/moving_digits_run.yaml --out-dir runs/moving_digits_demo_torch
    python -m starflow_torch.train --config examples/moving_digits_run.yaml \
        --out-dir runs/moving_digits_demo_torch_s1 --set train.seed=1
    python examples/compare_moving_digits_training.py runs/moving_digits_demo runs/moving_digits_demo_torch \
        runs/moving_digits_demo_torch_s1 --guidance 2.0 --out docs/moving_digits_mlx_vs_torch

As examples/compare_training.py does for the image recipe: the RMS difference between two runs'
loss curves (smoothed, after warm-up) for every pair, pairs of one twin with different seeds
giving the noise level and pairs across twins the twin gap; then each run's EMA weights are
measured like the demo (starflow_core.moving_digits_measures), all sampled by the MLX video
pipeline at one guidance, so only training differs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compare_training import curve_summary, read_run, run_record, write_summary

from starflow_core.digits import load_digits_split
from starflow_core.digits_video import fit_frame_classifier
from starflow_core.moving_digits_measures import image_to_video, text_to_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (out_dir of each training run)")
    parser.add_argument("--window", type=int, default=5, help="logged steps per smoothing window")
    parser.add_argument("--per-class", type=int, default=10, help="text-to-video clips per digit")
    parser.add_argument("--i2v", type=int, default=50, help="image-to-video clips")
    parser.add_argument("--guidance", type=float, default=2.0, help="guidance of every measure")
    parser.add_argument("--out", type=Path, default=Path("outputs/moving_digits_mlx_vs_torch"))
    args = parser.parse_args()

    runs = [read_run(folder) for folder in args.runs]
    summary = {**curve_summary(runs, args.window), "guidance": args.guidance, "runs": {}}
    import starflow_mlx

    starflow_mlx.use_system_blas()  # this script owns its process and samples with MLX only
    from starflow_mlx.video_pipeline import StarFlowVideoPipeline

    split = load_digits_split()
    classifier = fit_frame_classifier(split)
    for run in runs:
        pipe = StarFlowVideoPipeline.from_pretrained(run["checkpoint"] / "ema")
        _, t2v = text_to_video(pipe, classifier, args.per_class, seed=0, guidance=args.guidance, frames=8)
        _, i2v = image_to_video(
            pipe, classifier, split, args.i2v, labelled=True, seed=0, frames=8, guidance=args.guidance
        )
        summary["runs"][run["name"]] = {**run_record(run), "text_to_video": t2v, "image_to_video": i2v}
        print(run["name"], json.dumps(summary["runs"][run["name"]]))
    write_summary(runs, args.window, summary, args.out, recipe="moving-digits")


if __name__ == "__main__":
    main()
