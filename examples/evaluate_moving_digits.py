"""Measure a moving-digits video model: frames read as the requested digit, smooth motion,
image-to-video keeping the given digit.

    python examples/evaluate_moving_digits.py                  # the shipped demo -> outputs/moving_digits_eval.*
    python examples/evaluate_moving_digits.py --model runs/moving_digits_demo --framework torch

Through the video pipeline of either twin, as `generate` samples (starflow_core.moving_digits_measures):
text-to-video with the digit as the prompt at the pipeline's default guidance (and a sweep),
and image-to-video from the first frame of a held-out clip (a real digit the model never saw,
given as a picture) under its label, and under the null label without guidance (the frame
alone says which digit). A frame classifier trained on cut frames of real moving clips reads
every frame; the digit's ink centre gives the motion (a step is smooth when it moves <= 3 px).
The GIF shows one text-to-video clip per digit at the default guidance, then image-to-video
clips (given frame first) under the label and under the null label.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from starflow_core.digits import load_digits_split
from starflow_core.digits_video import classify_frames, fit_frame_classifier, moving_digits, smooth_fraction
from starflow_core.moving_digits_measures import TARGETS, animation, image_to_video, text_to_video
from starflow_core.sources.releases import VIDEO_DEMO_NAME


def load_pipeline(model: str, framework: str):
    if framework == "mlx":
        import starflow_mlx

        starflow_mlx.use_system_blas()  # this script owns its process: MLX gets OpenBLAS on Linux
        from starflow_mlx.video_pipeline import StarFlowVideoPipeline
    else:
        from starflow_torch.video_pipeline import StarFlowVideoPipeline
    return StarFlowVideoPipeline.from_pretrained(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=VIDEO_DEMO_NAME, help="pipeline folder, run folder or checkpoint")
    parser.add_argument("--framework", choices=("mlx", "torch"), default="mlx", help="the twin that samples")
    parser.add_argument("--per-class", type=int, default=20, help="text-to-video clips per digit")
    parser.add_argument("--i2v", type=int, default=100, help="image-to-video clips")
    parser.add_argument("--guidance", type=float, nargs="*", default=[0.0, 2.0], help="also sweep these")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (checkpoints name no length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/moving_digits_eval"))
    args = parser.parse_args()
    from tqdm import tqdm

    from starflow_core.video.files import write_video

    pipe = load_pipeline(args.model, args.framework)
    split = load_digits_split()
    classifier = fit_frame_classifier(split)
    real = moving_digits(split.test_images, split.test_labels, 200, args.seed + 3)
    results = {
        "model": str(args.model),
        "framework": args.framework,
        "machine": f"{platform.system()} {platform.machine()}",
        "targets": TARGETS,
        "default_guidance": pipe.parts.sampling.guidance,
        "real_held_out_clips": {
            "frames_read_as_label": float(
                np.mean(classify_frames(classifier, real.clips) == real.labels[:, None])
            ),
            "smooth_steps": smooth_fraction(real.clips, 3.0),
        },
        "text_to_video": [],
        "image_to_video": [],
    }
    start = time.perf_counter()
    shown = {}
    for guidance in tqdm([None, *args.guidance], "text-to-video"):
        clips, measures = text_to_video(pipe, classifier, args.per_class, args.seed, guidance, args.frames)
        measures["default"] = guidance is None
        results["text_to_video"].append(measures)
        shown.setdefault("t2v", clips[:: args.per_class])
        print(json.dumps(measures))
    for labelled in tqdm([True, False], "image-to-video"):
        clips, measures = image_to_video(pipe, classifier, split, args.i2v, labelled, args.seed, args.frames)
        results["image_to_video"].append(measures)
        shown[("i2v", labelled)] = clips[:10]
        print(json.dumps(measures))
    results["seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [shown["t2v"], shown[("i2v", True)], shown[("i2v", False)]]
    write_video(Path(f"{args.out}.gif"), animation(rows), 4.0, overwrite=True)
    print(f"wrote {args.out}.json and {args.out}.gif")


if __name__ == "__main__":
    main()
