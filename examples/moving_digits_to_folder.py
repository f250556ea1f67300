"""Write moving-digits clips as a clip folder (one subfolder per class, animated GIFs).

    python examples/moving_digits_to_folder.py runs/moving_digits --count 4000

Each clip is a scikit-learn training digit (8x8) moving at a constant integer velocity over
a dark 16x16 canvas and bouncing off its edges (starflow_core.digits_video.moving_digits;
the same seed gives the same clips). Grey levels 0..16 become pixels round(level * 255 / 16).
Folder names 0 .. 9 keep the labels in digit order. Train the video demo's recipe on it:

    python -m starflow_mlx.train --config examples/moving_digits_run.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from starflow_core.digits import load_digits_split
from starflow_core.digits_video import DEFAULT_FRAMES, moving_digits, to_uint8_frames
from starflow_core.video.files import write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (<out>/<digit>/<n>.gif)")
    parser.add_argument("--count", type=int, default=4000, help="number of clips")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames per clip")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate stored in the files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the digits, starts and velocities")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; choose a new folder")
    split = load_digits_split()
    moving = moving_digits(split.train_images, split.train_labels, args.count, args.seed, args.frames)
    pixels = to_uint8_frames(moving.clips)
    for number, (clip, label) in enumerate(tqdm(list(zip(pixels, moving.labels, strict=True)), "clips")):
        write_video(args.out / str(int(label)) / f"{number:05d}.gif", clip, args.fps)
    print(f"wrote {args.count} clips of {args.frames} frames to {args.out}")


if __name__ == "__main__":
    main()
