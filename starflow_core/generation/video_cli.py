"""The generate command's video path (video models: STARFlow-V releases, video pipeline folders):
text-to-video, image-to-video with --image, the output format from the suffix (.mp4, .gif,
.webp, a folder of PNG frames), every parameter in each file, stepwise videos, no overwriting.
Used by starflow_core.generation.cli once the model is known to make videos."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.extras import MissingExtraError, require
from starflow_core.generation.edit_cli import EDIT_FLAGS
from starflow_core.generation.images import to_uint8
from starflow_core.generation.outputs import check_output_writable
from starflow_core.generation.validation import check_image_count
from starflow_core.sources import PipelineParts
from starflow_core.video.files import video_format, write_video
from starflow_core.video.writer import VideoWriter

DEFAULT_IMAGE_OUTPUT = Path("starflow.png")  # the command's default --output, for images


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("video models (text- and image-to-video)")
    group.add_argument(
        "--num-frames",
        type=int,
        help="frames of each video, 4k + 1 through the Wan VAE (default: the model's training length, "
        "81 for the 7B); longer videos are sampled through a sliding window",
    )
    group.add_argument(
        "--fps", type=int, help="frames per second written and told to the model (default: its own)"
    )


def video_request_flags(args: argparse.Namespace) -> list[str]:
    """The video-only flags given, by name."""
    return [
        flag for flag, value in (("--num-frames", args.num_frames), ("--fps", args.fps)) if value is not None
    ]


def default_video_output(args: argparse.Namespace) -> None:
    """A video run without -o writes starflow.mp4 (starflow.gif without PyAV)."""
    if args.output == DEFAULT_IMAGE_OUTPUT:
        try:
            require("av", "writing MP4 video")
            args.output = Path("starflow.mp4")
        except MissingExtraError:
            args.output = Path("starflow.gif")


def check_video_flags(args: argparse.Namespace) -> None:
    """Image-only flags refused for a video model, before anything loads."""
    given = [name for name in EDIT_FLAGS if getattr(args, name, None) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise ValueError(f"{flag} edits images; a video model takes --image alone (the first frame)")
    if args.grid:
        raise ValueError("--grid is for images; a video model writes one video per prompt and seed")
    if args.num_frames is not None and args.num_frames < 1:
        raise ValueError(f"--num-frames must be >= 1, got {args.num_frames}")
    if args.fps is not None and args.fps < 1:
        raise ValueError(f"--fps must be >= 1, got {args.fps}")
    if (args.height is None) != (args.width is None):
        raise ValueError("for a video give both --height and --width, or --aspect-ratio")
    if args.image is not None and not Path(args.image).is_file():
        raise ValueError(f"--image {args.image} does not exist")


def video_writer(args: argparse.Namespace) -> VideoWriter:
    writer = VideoWriter(args.output, total=0, overwrite=args.overwrite, sidecar=args.metadata)
    writer.check()
    if args.stepwise_output_dir is not None:
        check_output_writable(args.stepwise_output_dir)
    return writer


def generate_videos(
    args: argparse.Namespace,
    pipe: Any,
    parts: PipelineParts,
    prompts: list[str],
    seeds: list[int],
    mine: list[int],
) -> int:
    """Sample and write the videos of this rank (`mine`: indices into every prompt x seed)."""
    writer = video_writer(args)
    check_image_count(len(prompts), len(seeds), args.max_images)
    jobs = [(p, s) for p in prompts for s in seeds]
    writer.total = len(jobs)
    start = time.perf_counter()
    request = dict(
        num_frames=args.num_frames,
        fps=args.fps,
        aspect_ratio=args.aspect_ratio,
        height=args.height,
        width=args.width,
        guidance=args.cfg,
        jacobi=args.jacobi,
        block_size=args.jacobi_block_size,
        tol=args.jacobi_tol,
        max_iter=args.jacobi_max_iter,
        denoise=not args.no_denoise,
        progress=not args.quiet,
    )
    shape = pipe.video_request(args.num_frames, args.fps, args.height, args.width, args.aspect_ratio)
    distinct = list(dict.fromkeys(jobs[i][0] for i in mine))
    pipe.encode_prompts(pipe.video_prompts([*distinct, ""], shape))  # T5 once, freed before the flow
    written = 0
    try:
        for first in range(0, len(mine), args.batch_size):
            indices = mine[first : first + args.batch_size]
            batch_seeds = [jobs[i][1] for i in indices]
            callback = stepwise_video_writer(args.stepwise_output_dir, pipe, indices, batch_seeds, shape.fps)
            result = pipe.generate_video(
                [jobs[i][0] for i in indices],
                seeds=batch_seeds,
                image=args.image,
                callback=callback,
                **request,
            )
            for row, index in enumerate(indices):
                path = writer.write_video(index, result.uint8()[row], result.fps, result.parameters(row))
                print(f"wrote {path}")
                if writer.sidecar:
                    print(f"wrote {writer.written[-1]}")
                written += 1
    except KeyboardInterrupt:
        done = f"{written} complete video(s) were written before it" if written else "no video was written"
        raise KeyboardInterrupt(done) from None
    elapsed = time.perf_counter() - start
    print(f"{len(mine)} video(s) of {shape.num_frames} frames in {elapsed:.1f} s")
    return 0


def stepwise_video_writer(folder: Path | None, pipe: Any, indices: list[int], seeds: list[int], fps: int):
    """--stepwise-output-dir: after each flow block, its state decoded (no denoising) and written as
    `<index>_seed<S>_step<k>_block<b>.gif` (step k counts the blocks sampled so far)."""
    if folder is None:
        return None
    steps = iter(range(1, 10_000))

    def write(block_index: int, latents: np.ndarray) -> None:
        step = next(steps)
        frames = pipe.decode_video(pipe.video_noise_array(latents), False)
        pixels = to_uint8(frames)
        for video, index, seed in zip(pixels, indices, seeds, strict=True):
            path = Path(folder) / f"{index:04d}_seed{seed}_step{step}_block{block_index}.gif"
            write_video(path, video, fps, {})
        print(f"wrote {len(indices)} video(s) after flow block {block_index} into {folder}")

    return write


def is_video_output(output: Path) -> bool:
    """An output only a video can be (.mp4, .gif)."""
    return video_format(output) in ("MP4", "GIF")
