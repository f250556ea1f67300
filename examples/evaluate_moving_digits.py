"""Measure a moving-digits video model: frames read as the requested digit, smooth motion,
image-to-video keeping the given digit.

    python examples/evaluate_moving_digits.py                  # the shipped demo -> outputs/moving_digits_eval.*
    python examples/evaluate_moving_digits.py --model runs/moving_digits_demo/checkpoints/step_00000600/ema

Through the MLX model API (StarFlow.sample, then StarFlow.denoise_video: the learned
self-denoiser as the official process_denoising applies it): text-to-video with the digit as
the label (guidance against the null label), and image-to-video from the first frame of a
held-out clip (a real digit the model never saw; noise_std noise added as the official
image-to-video does) under its label, and under the null label without guidance (the frame
alone says which digit). A frame classifier trained on cut frames of real moving clips
(starflow_core.digits_video.fit_frame_classifier) reads every frame; the digit's ink centre
gives the motion (a step is smooth when it moves <= 3 px). The GIF shows one text-to-video
clip per digit at the default guidance (the pipeline's), then image-to-video clips (given frame
first) under the label and under the null label.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from starflow_core.digits import load_digits_split
from starflow_core.digits_video import (
    classify_frames,
    fit_frame_classifier,
    moving_digits,
    smooth_fraction,
    to_uint8_frames,
)

DEFAULT_GUIDANCE = 1.0


def default_guidance(folder: Path) -> float:
    """The pipeline's default guidance (model_index.json), else DEFAULT_GUIDANCE."""
    index = folder / "model_index.json"
    if index.is_file():
        return float(json.loads(index.read_text()).get("sampling", {}).get("guidance", DEFAULT_GUIDANCE))
    return DEFAULT_GUIDANCE


def load_model(folder: Path):
    import starflow_mlx

    starflow_mlx.use_system_blas()  # this script owns its process: MLX gets OpenBLAS on Linux
    from starflow_mlx.model import StarFlow

    folder = folder / "transformer" if (folder / "transformer").is_dir() else folder
    return StarFlow.from_pretrained(folder)


def denoised_frames(model, x, y):
    """(N, T, 16, 16) frames in [-1, 1] from raw samples (N, T, 16, 16, 1)."""
    import mlx.core as mx

    return np.clip(np.array(model.denoise_video(x, y).astype(mx.float32))[..., 0], -1, 1)


def text_to_video(model, classifier, per_class: int, frames: int, guidance: float, seed: int):
    import mlx.core as mx

    labels = np.repeat(np.arange(10), per_class)
    noise = mx.random.normal((len(labels), frames, 16, 16, 1), key=mx.random.key(seed))
    y = mx.array(labels.astype(np.int32))
    x = model.sample(noise, y, mx.full(y.shape, -1, mx.int32), guidance=guidance)
    clips = denoised_frames(model, x, y)
    read = classify_frames(classifier, clips)
    return clips, {
        "guidance": guidance,
        "clips": len(labels),
        "frames_read_as_requested": float(np.mean(read == labels[:, None])),
        "clips_all_frames_requested": float(np.mean((read == labels[:, None]).all(axis=1))),
        "smooth_steps": smooth_fraction(clips, 3.0),
    }


def image_to_video(
    model, classifier, split, count: int, frames: int, guidance: float, labelled: bool, seed: int
):
    import mlx.core as mx

    given = moving_digits(split.test_images, split.test_labels, count, seed + 1, frames)
    rng = np.random.default_rng(seed)
    sigma = model.config.noise_std
    first = given.clips[:, 0] + sigma * rng.standard_normal(given.clips[:, 0].shape).astype(np.float32)
    first = mx.array(first[..., None])
    y = mx.array(given.labels.astype(np.int32)) if labelled else mx.full((count,), -1, mx.int32)
    noise = mx.random.normal((count, frames - 1, 16, 16, 1), key=mx.random.key(seed + 2))
    x = model.sample(noise, y, mx.full((count,), -1, mx.int32), guidance=guidance, first_frame=first)
    clips = denoised_frames(model, mx.concatenate([first[:, None], x], axis=1), y)
    read = classify_frames(classifier, clips[:, 1:])
    return clips, {
        "label_given": labelled,
        "guidance": guidance,
        "clips": count,
        "generated_frames_keep_the_digit": float(np.mean(read == given.labels[:, None])),
        "smooth_steps_from_the_given_frame": smooth_fraction(clips, 3.0),
        "first_step_px_mean": float(np.mean(np.linalg.norm(np.diff(centres(clips[:, :2]), axis=1), axis=-1))),
    }


def centres(clips):
    from starflow_core.digits_video import digit_centres

    return digit_centres(clips)


def animation(rows: list[np.ndarray]) -> np.ndarray:
    """Clips (N, T, 16, 16) per row -> (T, rows*18-2, N*18-2) uint8 frames, 2 px gaps, x3 later."""
    frames, gap = rows[0].shape[1], 2
    width = max(len(r) for r in rows)
    canvas = np.zeros((frames, len(rows) * 18 - gap, width * 18 - gap), np.uint8)
    for r, clips in enumerate(rows):
        pixels = to_uint8_frames(clips)
        for c, clip in enumerate(pixels):
            canvas[:, r * 18 : r * 18 + 16, c * 18 : c * 18 + 16] = clip
    return canvas.repeat(3, axis=1).repeat(3, axis=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="pipeline or checkpoint folder (a run's checkpoints/latest/ema)",
    )
    parser.add_argument("--per-class", type=int, default=20, help="text-to-video clips per digit")
    parser.add_argument("--i2v", type=int, default=100, help="image-to-video clips")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/moving_digits_eval"))
    args = parser.parse_args()
    from tqdm import tqdm

    from starflow_core.video.files import write_video

    model = load_model(args.model)
    guidance_default = default_guidance(args.model)
    split = load_digits_split()
    classifier = fit_frame_classifier(split)
    real = moving_digits(split.test_images, split.test_labels, 200, args.seed + 3, args.frames)
    results = {
        "model": str(args.model),
        "default_guidance": guidance_default,
        "real_held_out_clips": {
            "frames_read_as_label": float(
                np.mean(classify_frames(classifier, real.clips) == real.labels[:, None])
            ),
            "smooth_steps": smooth_fraction(real.clips, 3.0),
        },
        "text_to_video": [],
        "image_to_video": [],
    }
    shown = {}
    for guidance in tqdm(sorted(set(args.guidance) | {guidance_default}), "text-to-video"):
        clips, measures = text_to_video(model, classifier, args.per_class, args.frames, guidance, args.seed)
        results["text_to_video"].append(measures)
        shown[guidance] = clips[:: args.per_class]
        print(json.dumps(measures))
    for labelled, guidance in tqdm([(True, guidance_default), (False, 0.0)], "image-to-video"):
        clips, measures = image_to_video(
            model, classifier, split, args.i2v, args.frames, guidance, labelled, args.seed
        )
        results["image_to_video"].append(measures)
        shown[("i2v", labelled)] = clips[:10]
        print(json.dumps(measures))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [shown[guidance_default], shown[("i2v", True)], shown[("i2v", False)]]
    write_video(Path(f"{args.out}.gif"), animation(rows), 4.0, overwrite=True)
    print(f"wrote {args.out}.json and {args.out}.gif")


if __name__ == "__main__":
    main()
