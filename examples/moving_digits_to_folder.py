"""Write moving-digits clips as a video training folder (one subfolder per class, animated GIFs).

    python examples/moving_digits_to_folder.py runs/moving_digits      # train/, test/, preview.gif

Each clip is one of scikit-learn's 8x8 digits moving over a 16x16 dark canvas at a constant
velocity (up to --max-speed pixels a frame along each axis, 2 by default), bouncing off the edges
(starflow_core.digits_video). train/ draws its digits from the training split of
starflow_core.digits, test/ from the held-out split. Grey levels 0..16 become pixels
round(level * 255 / 16), as examples/digits_to_folder.py writes the still digits; GIF keeps
them exactly. Folder names 0_zero .. 9_nine keep the labels in digit order. Both twins read
the folder with their video data pipeline (starflow_mlx.video_data, starflow_torch.video_data).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from starflow_core.command_line import positive_int
from starflow_core.digits import load_digits_split
from starflow_core.digits_video import (
    DEFAULT_FRAMES,
    MAX_SPEED,
    moving_digits,
    preview_frames,
    write_clip_folder,
)
from starflow_core.video.files import VIDEO_FORMATS, write_video


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (train/ and test/ inside); must not exist")
    parser.add_argument("--train-clips", type=positive_int, default=5000, help="clips in train/")
    parser.add_argument("--test-clips", type=positive_int, default=1000, help="clips in test/")
    parser.add_argument("--frames", type=positive_int, default=DEFAULT_FRAMES, help="frames per clip (>= 2)")
    parser.add_argument(
        "--max-speed", type=positive_int, default=MAX_SPEED, help="pixels a frame along each axis, at most"
    )
    parser.add_argument("--fps", type=float, default=8.0, help="frames per second stored in each clip")
    parser.add_argument(
        "--format",
        choices=[*VIDEO_FORMATS, "frames"],
        default=".gif",
        help="clip files, or PNG frame folders",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the clips (and of the train/test split)")
    args = parser.parse_args()
    if args.out.exists():
        print(f"{parser.prog}: {args.out} already exists; choose a new folder", file=sys.stderr)
        return 2
    if args.frames < 2 or not 0 < args.fps <= 1000:
        print(f"{parser.prog}: need --frames >= 2 and 0 < --fps <= 1000", file=sys.stderr)
        return 2
    split = load_digits_split(seed=args.seed)
    suffix = "" if args.format == "frames" else args.format
    for name, digits, labels, count, seed in (
        ("train", split.train_images, split.train_labels, args.train_clips, args.seed),
        ("test", split.test_images, split.test_labels, args.test_clips, args.seed + 1),
    ):
        clips = moving_digits(digits, labels, count, seed, frames=args.frames, max_speed=args.max_speed)
        write_clip_folder(args.out / name, clips, fps=args.fps, suffix=suffix)
        if name == "train":
            preview = write_video(args.out / "preview.gif", preview_frames(clips), args.fps)
    print(
        f"wrote {args.train_clips} training and {args.test_clips} test clips of {args.frames} frames to {args.out}"
    )
    print(f"wrote {preview} (the first training clip of each digit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
