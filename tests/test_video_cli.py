"""The generate command's video path, end to end on a tiny text-to-video pipeline folder: output
by suffix, metadata and sidecars, info, --config-from-metadata making the same frames, never
overwriting, stepwise videos, the torch command's same flags, and clear refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from starflow_core.video.files import read_video
from tests.helpers.tiny_pipeline import make_tiny_pipeline
from tests.helpers.tiny_video import make_tiny_video_pipeline


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_cli")
    return {"video": make_tiny_video_pipeline(root), "image": make_tiny_pipeline(root)}


def run(module: str, *args, tmp: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp / "hf")}
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=tmp,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_text_to_video_writes_remakes_and_never_overwrites(folders, tmp_path):
    model = folders["video"]
    first = run(
        "starflow_mlx.generate", "a red fox", "--model", model, "--num-frames", "9", "--fps", "12",
        "--aspect-ratio", "16:9", "--seed", "5", "-o", "fox.gif", "--metadata", "--quiet",
        "--stepwise-output-dir", "steps", tmp=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    video = read_video(tmp_path / "fox.gif")
    assert video.frames.shape == (9, 96, 160, 3) and video.fps == pytest.approx(
        12, abs=0.5
    )  # 48x80 enlarged 2x for viewing
    parameters = json.loads(video.metadata["parameters"])
    sidecar = json.loads((tmp_path / "fox.json").read_text())
    assert parameters == sidecar
    assert {k: parameters[k] for k in ("prompt", "seed", "num_frames", "fps", "aspect_ratio", "denoise")} == {
        "prompt": "a red fox", "seed": 5, "num_frames": 9, "fps": 12, "aspect_ratio": "16:9", "denoise": "learned",
    }  # fmt: skip
    steps = sorted(path.name for path in (tmp_path / "steps").iterdir())
    assert steps == [f"0000_seed5_step{k}_block{b}.gif" for k, b in ((1, 2), (2, 1), (3, 0))]

    again = run(
        "starflow_mlx.generate", "--config-from-metadata", "fox.gif", "-o", "fox.gif", "--quiet", tmp=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert "wrote fox_1.gif" in again.stdout  # the first one is kept
    remade = read_video(tmp_path / "fox_1.gif")
    np.testing.assert_array_equal(remade.frames, video.frames)  # same settings, same frames
    info = run("starflow_mlx.info", "fox_1.gif", tmp=tmp_path)
    assert "--num-frames 9 --fps 12" in info.stdout and "--aspect-ratio 16:9" in info.stdout


def test_the_torch_command_takes_the_same_flags(folders, tmp_path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(
        tmp_path / "frame.png"
    )
    done = run(
        "starflow_torch.generate", "a red fox", "--model", folders["video"], "--num-frames", "5", "--fps", "8",
        "--seed", "1", "2", "-o", "fox.mp4", "--quiet", "--image", "frame.png", "--aspect-ratio", "1:1", tmp=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for seed in (1, 2):  # several videos: <stem>_<index>_seed<S>.mp4, H.264 through PyAV
        video = read_video(tmp_path / f"fox_000{seed - 1}_seed{seed}.mp4")
        assert video.frames.shape == (5, 64, 64, 3) and video.fps == 8
        parameters = json.loads(video.metadata["parameters"])
        assert (parameters["seed"], parameters["framework"], parameters["num_frames"]) == (seed, "torch", 5)
        assert (parameters["image"], parameters["aspect_ratio"]) == ("frame.png", "1:1")  # image-to-video


@pytest.mark.parametrize(
    "flags, message",
    [
        (["-o", "fox.png"], "'.png' is not a video format"),
        (["--num-frames", "8"], r"4k \+ 1"),
        (["--strength", "0.5", "--image", "x.png"], "--strength edits images"),
        (["--grid"], "--grid is for images"),
    ],
)
def test_bad_video_requests_fail_clearly(folders, tmp_path, flags, message):
    done = run(
        "starflow_mlx.generate", "a fox", "--model", folders["video"], "--seed", "0", *flags, tmp=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(__import__("re").findall(message, done.stderr)) == 1, done.stderr


def test_video_flags_on_an_image_model_are_refused(folders, tmp_path):
    done = run(
        "starflow_mlx.generate", "a cat", "--model", folders["image"], "--num-frames", "9", tmp=tmp_path
    )
    assert done.returncode == 2
    assert "makes images, not videos; drop --num-frames" in done.stderr
