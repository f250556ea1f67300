"""Video training data: folders of clips (GIF, WebP, MP4, frame folders) with labels or captions,
the frames taken from each clip (the official sample_clip), the seeded epoch order, and both
twins' loaders giving the same clips batch for batch."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from starflow_core.digits_video import moving_digits, to_uint8_frames, write_clip_folder
from starflow_core.training.config import TrainConfig
from starflow_core.training.video_folders import VideoFolder, clip_frame_indices, video_epoch_batches
from starflow_core.video.files import read_video, write_video
from starflow_mlx import video_data as mlx_video
from starflow_torch import video_data as torch_video

pytest.importorskip("av")


def clips(count: int = 12, frames: int = 12, seed: int = 0):
    """Moving random 8x8 'digits' of three classes (no scikit-learn needed)."""
    rng = np.random.default_rng(seed)
    digits = rng.uniform(-1, 1, (6, 8, 8)).astype(np.float32)
    return moving_digits(digits, np.arange(6) % 3, count, seed, frames=frames)


def clip_folder(tmp_path, count: int = 12):
    """Class subfolders holding clips in every format: GIF, WebP, MP4 and frame folders, 16 fps."""
    moving = clips(count)
    folder = tmp_path / "clips"
    for number, suffix in enumerate((".gif", ".webp", ".mp4", "")):
        part = replace(
            moving, **{k: getattr(moving, k)[number::4] for k in ("clips", "labels", "corners", "velocities")}
        )
        for path in write_clip_folder(folder, part, fps=16, suffix=suffix):
            path.rename(path.with_name(f"{number}{path.name}"))  # unique names across formats
    return folder


def train_config(**changes) -> TrainConfig:
    values = {"data": "unused", "batch_size": 4, "seed": 3, "flip": True, "num_workers": 0, **changes}
    return TrainConfig(**values)


def test_frames_are_taken_as_the_official_sample_clip_takes_them():
    # 30 fps read at 16: step 7 / 16 * 30 / 7 = 1.875 frames, rounded half to even (8.5 -> 8)
    assert clip_frame_indices(30, 8, 30.0, 16, draw=0) == [0, 2, 4, 6, 8, 9, 11, 13]
    # 16 possible starts (floor(30 - 1.875 * 7 - 1) = 15): draw 17 starts at 1
    assert clip_frame_indices(30, 8, 30.0, 16, draw=17) == [1, 3, 5, 7, 8, 10, 12, 14]
    assert clip_frame_indices(20, 8, 16.0, None, draw=12) == list(range(12, 20))  # step 1
    assert clip_frame_indices(20, 8, 16.0, 24, draw=13) == list(range(0, 8))  # up-sampling: step 1
    assert clip_frame_indices(5, 8, 16.0, 8, draw=3) == [0, 0, 1, 1, 2, 2, 3, 4]  # too short: spread


def test_both_twins_give_the_same_clips_batch_for_batch(tmp_path):
    folder = clip_folder(tmp_path)
    train = train_config()
    settings = dict(conditioning="label", image_size=16, multiple=2, num_frames=5, fps=8, channels=1)
    mlx_data = mlx_video.VideoFolderDataset(folder, **settings)
    torch_data = torch_video.VideoFolderDataset(folder, **settings)
    assert sorted({p.suffix for p in mlx_data.files}) == ["", ".gif", ".mp4", ".webp"]
    mlx_stream = mlx_video.batch_stream(mlx_data, train, epoch=0, start=1)
    torch_stream = torch_video.batch_stream(torch_data, train, epoch=0, start=1)
    for _ in range(3):  # the last two batches of epoch 0, then the first of epoch 1
        (epoch, number, got), (_, _, want) = next(mlx_stream), next(torch_stream)
        assert got["video"].shape == (4, 5, 16, 16, 1) and want["video"].shape == (4, 5, 1, 16, 16)
        # exact: both twins run the same numpy decoding on the same frames
        np.testing.assert_array_equal(got["video"], want["video"].permute(0, 1, 3, 4, 2).numpy())
        for key in ("label", "fps", "slot", "index"):
            np.testing.assert_array_equal(got[key], want[key].numpy())
        assert (got["fps"] == 8).all() and got["corrupt"] == 0
    assert (epoch, number) == (1, 1)


def test_clips_are_the_frames_of_the_file_at_the_chosen_rate(tmp_path):
    """A sample is the clip's own frames (16 fps read at 8: every other one), flipped whole."""
    folder = clip_folder(tmp_path)
    data = VideoFolder(folder, "label", 16, 2, num_frames=5, fps=8, channels=1)
    index = next(i for i, p in enumerate(data.files) if p.suffix == ".webp")  # lossless
    moving = clips()
    number = 1 + 4 * int(data.files[index].stem[1:])  # WebP: clips 1, 5, 9, named "1" + 0, 1, 2
    expected = to_uint8_frames(moving.clips[number]).astype(np.float32) / 127.5 - 1.0
    for draw in (0, 1):  # 12 frames, step 2: starts 0..2
        taken = clip_frame_indices(12, 5, 16.0, 8, draw)
        assert taken == list(range(draw, draw + 9, 2))
        video, fps = data.read_clip(index, flip=False, draw=draw)
        np.testing.assert_array_equal(video[..., 0], expected[taken])
        flipped, _ = data.read_clip(index, flip=True, draw=draw)
        np.testing.assert_array_equal(flipped, video[:, :, ::-1])
    assert fps == 8


def test_the_epoch_order_is_seeded_and_resumable():
    buckets = ["1:1"] * 10
    first = video_epoch_batches(buckets, 2, seed=1, epoch=0, flip=True)
    assert first == video_epoch_batches(buckets, 2, seed=1, epoch=0, flip=True)
    assert first != video_epoch_batches(buckets, 2, seed=1, epoch=1, flip=True)
    assert first != video_epoch_batches(buckets, 2, seed=2, epoch=0, flip=True)
    assert len({ref.draw for batch in first for ref in batch}) == 10


def test_captions_name_clip_files_and_frame_folders(tmp_path):
    folder = tmp_path / "captioned"
    moving = clips(count=4)
    pixels = to_uint8_frames(moving.clips)
    write_video(folder / "a.gif", pixels[0], 8)
    write_video(folder / "frames" / "b", pixels[1], 8)
    lines = [{"file_name": "a.gif", "text": "a one"}, {"file_name": "frames/b", "text": "a two"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    train = train_config(batch_size=2, flip=False)
    data = torch_video.VideoFolderDataset(folder, "text", 16, 2, num_frames=8)
    _, _, batch = next(torch_video.batch_stream(data, train, 0, 0))
    assert sorted(batch["text"]) == ["a one", "a two"] and batch["video"].shape == (2, 8, 3, 16, 16)
    assert (batch["fps"] == 8).all()  # the clips' own rate
    mlx_data = mlx_video.VideoFolderDataset(folder, "text", 16, 2, num_frames=8)
    _, _, got = next(mlx_video.batch_stream(mlx_data, train, 0, 0))
    assert [mlx_data.text_of(int(i)) for i in got["index"]] == batch["text"]
    (folder / "metadata.jsonl").write_text('{"file_name": "metadata.jsonl", "text": "x"}\n')
    with pytest.raises(ValueError, match="line 1 names metadata.jsonl, which is not a file"):
        VideoFolder(folder, "text", 16, 2, num_frames=8)


def test_unreadable_clips_are_dropped_and_counted(tmp_path):
    folder = clip_folder(tmp_path, count=8)
    broken = sorted(folder.rglob("*.gif"))[0]
    broken.write_bytes(b"GIF89a cut")
    data = torch_video.VideoFolderDataset(folder, "label", 16, 2, num_frames=4, channels=1)
    batches = [next(torch_video.batch_stream(data, train_config(batch_size=8), 0, 0))[2]]
    assert batches[0]["corrupt"] == 1 and batches[0]["video"].shape[0] == 7
    assert str(broken) in data.why_unreadable(data.files.index(broken))
    mlx_data = mlx_video.VideoFolderDataset(folder, "label", 16, 2, num_frames=4, channels=1)
    _, _, got = next(mlx_video.batch_stream(mlx_data, train_config(batch_size=8), 0, 0))
    assert got["corrupt"] == 1 and got["video"].shape[0] == 7


def test_folders_without_clips_are_refused(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no clips"):
        VideoFolder(tmp_path / "empty", "label", 16, 2, num_frames=4)
    with pytest.raises(ValueError, match="num_frames must be a whole number >= 1"):
        VideoFolder(tmp_path / "empty", "label", 16, 2, num_frames=0)
    assert torch.utils.data.Dataset in torch_video.VideoFolderDataset.__mro__


def test_the_moving_digits_folder_reads_as_ten_classes_of_clips(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    import runpy

    out = tmp_path / "moving"
    argv = [
        "moving_digits_to_folder.py",
        str(out),
        "--train-clips",
        "40",
        "--test-clips",
        "10",
        "--frames",
        "9",
    ]
    monkeypatch.setattr("sys.argv", argv)
    script = str(Path(__file__).resolve().parents[1] / "examples" / "moving_digits_to_folder.py")
    with pytest.raises(SystemExit) as done:
        runpy.run_path(script, run_name="__main__")
    assert done.value.code == 0
    data = VideoFolder(out / "train", "label", 16, 2, num_frames=9, channels=1)
    assert len(data) == 40 and data.class_names[:2] == ["0_zero", "1_one"] and len(data.class_names) <= 10
    assert data.files[0].suffix == ".gif" and len(list((out / "test").rglob("*.gif"))) == 10
    preview = read_video(out / "preview.gif").frames  # one clip per class present, side by side
    assert preview.shape[0] == 9 and preview.shape[1] == 64 + 2 * 4
    video, fps = data.read_clip(0, flip=False, draw=0)
    assert video.shape == (9, 16, 16, 1) and fps == 8
    with pytest.raises(SystemExit) as again:  # never into an existing folder
        runpy.run_path(script, run_name="__main__")
    assert again.value.code == 2 and "already exists" in capsys.readouterr().err


def test_buckets_come_from_the_clip_headers(tmp_path):
    wide = np.zeros((3, 18, 32, 3), np.uint8)  # 32:18, nearest bucket 16:9
    for name in ("a.gif", "b.webp", "c.mp4", "d"):
        write_video(tmp_path / "wide" / name, wide, 8)
    data = VideoFolder(tmp_path / "wide", "none", 16, 2, num_frames=2, buckets=True)
    assert data.buckets == ["16:9"] * 4
    video, _ = data.read_clip(2, flip=False, draw=0)
    assert video.shape == (2, *data.image_size_of(2), 3) and data.image_size_of(2) == (12, 22)
