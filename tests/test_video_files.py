"""Video files without a model: frames, fps and metadata to MP4, GIF, WebP and frame folders and
back, never overwriting, broken files refused by name, and `info` reading a video's parameters
as it reads an image's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from starflow_core.generation import info
from starflow_core.generation.record import equivalent_command, flat_metadata, read_parameters
from starflow_core.generation.writer import ImageWriter
from starflow_core.video.files import (
    FRAMES_JSON,
    check_video_output,
    read_video,
    read_video_metadata,
    write_video,
)
from starflow_core.video.writer import VideoWriter
from tests.test_outputs import parameters

pytest.importorskip("av")  # the `video` extra (in dev): MP4 through PyAV

FORMATS = ("clip.mp4", "clip.gif", "clip.webp", "clip")


def few_colours(frames: int = 10, height: int = 17, width: int = 15, seed: int = 0) -> np.ndarray:
    """Random frames drawn from 200 colours (a GIF palette holds them all), with frames 3-5 equal
    (both PIL writers merge identical consecutive frames) and odd sides."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (200, 3))
    video = palette[rng.integers(0, 200, (frames, height, width))].astype(np.uint8)
    video[4] = video[5] = video[3]
    return video


def smooth(frames: int = 9, height: int = 32, width: int = 48) -> np.ndarray:
    """A moving colour gradient: the kind of content H.264 keeps close."""
    rows, cols = np.mgrid[0:height, 0:width]
    video = [
        np.stack([(cols * 4 + t * 8) % 256, rows * 6, np.full_like(cols, 100 + 10 * t)], axis=-1)
        for t in range(frames)
    ]
    return np.stack(video).astype(np.uint8)


def video_parameters(**changes) -> dict:
    return parameters(**{"prompt": "a fox é", "num_frames": 10, "fps": 16, "aspect_ratio": "16:9", **changes})


@pytest.mark.parametrize("fps", [16, 7.5, 30])
@pytest.mark.parametrize("name", ["clip.gif", "clip.webp", "clip"])
def test_lossless_formats_give_the_frames_back_exactly(name, fps, tmp_path):
    frames = few_colours()
    path = write_video(tmp_path / name, frames, fps, {"note": "x"})
    video = read_video(path)
    # exact: GIF holds <= 256 colours per frame losslessly, WebP is written lossless, PNG is
    np.testing.assert_array_equal(video.frames, frames)
    assert video.fps == fps and video.metadata == {"note": "x", "fps": f"{fps:g}"}


@pytest.mark.parametrize("size", [(32, 48), (17, 15)])
def test_mp4_gives_the_frames_back_within_h264_loss(size, tmp_path):
    frames = smooth(height=size[0], width=size[1])
    video = read_video(write_video(tmp_path / "clip.mp4", frames, 16))
    assert video.frames.shape == frames.shape and video.fps == 16
    error = np.abs(video.frames.astype(int) - frames)
    # H.264 at CRF 12 (yuv420p for even sides, yuv444p for odd): measured mean 2.0 / 1.0 and
    # max 9 / 6 grey levels on this gradient; the bounds leave room for other x264 builds
    assert error.mean() < 3.0 and error.max() <= 24


@pytest.mark.parametrize("name", FORMATS)
def test_every_parameter_round_trips_and_info_reads_a_video_as_an_image(name, tmp_path, capsys):
    stored = video_parameters()
    path = write_video(tmp_path / name, few_colours(), 16, flat_metadata(stored))
    assert read_parameters(path) == stored  # JSON in, the same JSON out
    assert read_video_metadata(path)["num_frames"] == "10"  # readable entries too, as images have
    image = ImageWriter(tmp_path / "still.png", total=1).write_image(0, few_colours()[0], stored)
    assert info.main([str(image)]) == 0
    as_image = capsys.readouterr().out.splitlines()
    assert info.main([str(path)]) == 0
    as_video = capsys.readouterr().out.splitlines()
    assert as_video[0] == f"{path}:" and as_video[1:] == as_image[1:]
    assert "--num-frames 10 --fps 16 --aspect-ratio 16:9" in as_video[-1]
    assert info.main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == stored


def test_the_command_to_make_a_video_again_names_its_frames_and_rate():
    command = equivalent_command(video_parameters(fps=7.5, image="first.png"))
    assert "--image first.png" in command and "--num-frames 10 --fps 7.5" in command


@pytest.mark.parametrize("name", FORMATS)
def test_existing_videos_are_kept_and_new_ones_numbered(name, tmp_path):
    first = write_video(tmp_path / name, few_colours(seed=1), 16)
    second = write_video(tmp_path / name, few_colours(seed=2), 16)
    stem, dot, suffix = name.partition(".")
    assert first == tmp_path / name and second == tmp_path / f"{stem}_1{dot}{suffix}"
    assert not np.array_equal(read_video(first).frames, read_video(second).frames)
    replaced = write_video(tmp_path / name, few_colours(seed=3), 16, overwrite=True)
    assert replaced == first
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden == []  # no temporary file or staging folder left behind


def test_frames_go_into_an_empty_folder_but_never_over_another_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert write_video(tmp_path / "empty", few_colours(), 8) == tmp_path / "empty"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    assert write_video(mine, few_colours(), 8) == tmp_path / "mine_1"
    with pytest.raises(FileExistsError, match=f"not a frame folder written by starflow.*{FRAMES_JSON}"):
        write_video(mine, few_colours(), 8, overwrite=True)
    assert (mine / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize(
    ("name", "content"),
    [("bad.mp4", b"not a video"), ("bad.gif", b""), ("bad.webp", b"RIFF\x00\x00"), ("cut.gif", None)],
)
def test_a_broken_file_is_a_value_error_naming_it(name, content, tmp_path):
    path = tmp_path / name
    if content is None:  # a real GIF cut short
        whole = write_video(tmp_path / "whole.gif", few_colours(), 16).read_bytes()
        content = whole[: len(whole) // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}.*not a readable"):
        read_video(path)


def test_an_empty_or_uneven_frame_folder_is_refused_by_name(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="none holds no frames"):
        read_video(tmp_path / "none")
    folder = write_video(tmp_path / "clip", few_colours(), 16)
    (folder / "0003.png").unlink()
    with pytest.raises(ValueError, match="lists 10 frames but the folder holds 9"):
        read_video(folder)


def test_unknown_suffixes_and_bad_frames_are_refused_before_writing(tmp_path):
    for good in ("a.mp4", "a.GIF", "a.webp", "frames"):
        check_video_output(tmp_path / good)
    check_video_output(f"{tmp_path}/frames.v2/")  # a trailing slash names a folder, as for images
    with pytest.raises(ValueError, match=r"'\.png' is not a video format.*\.mp4, \.gif, \.webp"):
        check_video_output(tmp_path / "a.png")
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.gif", few_colours().astype(np.float32), 16)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "a.gif", few_colours(), 0)
    assert list(tmp_path.iterdir()) == []


# ----- the writer a generate command uses -----------------------------------------------------------
def test_the_writer_names_videos_by_index_and_seed_and_keeps_sidecars_with_them(tmp_path):
    (tmp_path / "fox.json").write_text("{}")  # someone's sidecar: its video name is taken too
    one = VideoWriter(tmp_path / "fox.gif", total=1, sidecar=True)
    one.check()
    small = few_colours(height=16, width=16)
    path = one.write_video(0, small, 8, video_parameters())
    assert path == tmp_path / "fox_1.gif" and one.written == [path, tmp_path / "fox_1.json"]
    assert json.loads((tmp_path / "fox_1.json").read_text()) == read_parameters(path) == video_parameters()
    video = read_video(path)  # 16x16 enlarged 4x for viewing, as small images are
    np.testing.assert_array_equal(video.frames, np.repeat(np.repeat(small, 4, axis=1), 4, axis=2))
    several = VideoWriter(tmp_path / "out", total=2, sidecar=True)
    names = [several.write_video(i, small, 8, video_parameters(seed=s)) for i, s in ((0, 5), (1, 6))]
    assert names == [tmp_path / "out_0000_seed5", tmp_path / "out_0001_seed6"]
    assert (tmp_path / "out_0001_seed6.json").is_file() and read_parameters(names[1])["seed"] == 6
    with pytest.raises(ValueError, match="not a video format"):
        VideoWriter(tmp_path / "fox.jpg", total=1).check()


def test_config_from_metadata_of_a_video_fills_the_video_flags(tmp_path):
    """The generate command makes videos too: a video's parameters become its video flags
    (tests/test_video_cli.py remakes the same frames from them end to end)."""
    from starflow_core.generation.cli import build_parser
    from starflow_core.generation.output_cli import fill_from_metadata

    path = write_video(tmp_path / "fox.gif", few_colours(), 16, flat_metadata(video_parameters()))
    args = build_parser("starflow_mlx.generate", "test").parse_args(["--config-from-metadata", str(path)])
    fill_from_metadata(args)
    assert (args.num_frames, args.fps, args.aspect_ratio, args.prompt) == (10, 16, "16:9", ["a fox é"])
    given = build_parser("starflow_mlx.generate", "test").parse_args(
        ["--config-from-metadata", str(path), "--num-frames", "21"]
    )
    fill_from_metadata(given)
    assert (given.num_frames, given.fps) == (21, 16)  # flags given replace the stored ones
