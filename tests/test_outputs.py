"""Where generated images go and what they carry, without a model: output names, formats by
suffix, never overwriting, grids with gaps, metadata written and read back, the info command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from starflow_core.generation import info
from starflow_core.generation.images import GRID_BACKGROUND, GRID_GAP, make_grid
from starflow_core.generation.outputs import check_output_name, is_folder_output, write_new_file
from starflow_core.generation.record import (
    equivalent_command,
    flat_metadata,
    generate_flags,
    grid_parameters,
    read_parameters,
)
from starflow_core.generation.writer import ImageWriter


def parameters(prompt: str = "seven", seed: int = 3, **changes) -> dict:
    values = {
        "model": "starflow-digits-demo",
        "model_name": "starflow-digits-demo",
        "prompt": prompt,
        "seed": seed,
        "guidance": 1.5,
        "sampler": "jacobi",
        "jacobi_block_size": 4,
        "jacobi_tol": 1e-3,
        "jacobi_max_iter": 32,
        "height": 8,
        "width": 8,
        "denoise": "score",
        "decoder": None,
        "dtype": "float32",
        "text_dtype": "float32",
        "quantize": 4,
        "text_quantize": None,
        "group_size": 64,
        "steps": 12,
        "framework": "mlx",
        "version": "0.1.0",
    }
    return {**values, **changes}


def pixels(seed: int = 0, side: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


# ----- names and formats ----------------------------------------------------------------
def test_suffix_names_a_file_and_no_suffix_a_folder(tmp_path):
    assert is_folder_output(tmp_path / "out") and is_folder_output(f"{tmp_path}/out.v2/")
    assert not is_folder_output(tmp_path / "cat.jpg")
    (tmp_path / "made.png").mkdir()  # an existing folder stays a folder whatever its name
    assert is_folder_output(tmp_path / "made.png")
    for good in ("cat.png", "cat.JPG", "cat.jpeg", "cat.webp", "out"):
        check_output_name(tmp_path / good)
    with pytest.raises(ValueError, match=r"'\.tiff' is not an image format.*\.png, \.jpg"):
        check_output_name(tmp_path / "cat.tiff")


@pytest.mark.parametrize(
    ("name", "fmt"), [("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.jpeg", "JPEG"), ("a.webp", "WEBP")]
)
def test_the_suffix_picks_the_format_and_the_metadata_survives(name, fmt, tmp_path):
    writer = ImageWriter(tmp_path / name, total=1)
    path = writer.write_image(0, pixels(), parameters())
    assert path == tmp_path / name and writer.written == [path]
    with Image.open(path) as image:
        assert image.format == fmt and image.size == (64, 64)  # 8x8 enlarged for viewing
    assert read_parameters(path) == parameters()  # in PNG text, or the EXIF description
    if fmt == "PNG":  # lossless: the pixels are the enlarged input exactly
        expected = np.repeat(np.repeat(pixels(), 8, axis=0), 8, axis=1)
        np.testing.assert_array_equal(np.asarray(Image.open(path)), expected)


def test_several_images_and_folders_are_named_by_index_and_seed(tmp_path):
    to_file = ImageWriter(tmp_path / "cat.webp", total=2)
    assert to_file.write_image(1, pixels(), parameters(seed=9)) == tmp_path / "cat_0001_seed9.webp"
    to_folder = ImageWriter(tmp_path / "out", total=2)
    to_folder.check()
    assert to_folder.write_image(0, pixels(), parameters(seed=4)) == tmp_path / "out" / "0000_seed4.png"


# ----- never overwriting ----------------------------------------------------------------
def test_existing_files_are_kept_and_new_ones_numbered(tmp_path):
    target = tmp_path / "cat.png"
    target.write_bytes(b"precious")
    (tmp_path / "cat_1.png").write_bytes(b"also precious")
    written = [write_new_file(target, lambda tmp, n=n: tmp.write_text(f"new {n}")) for n in range(2)]
    assert written == [tmp_path / "cat_2.png", tmp_path / "cat_3.png"]
    assert target.read_bytes() == b"precious" and (tmp_path / "cat_1.png").read_bytes() == b"also precious"
    assert write_new_file(target, lambda tmp: tmp.write_text("replaced"), overwrite=True) == target
    assert target.read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png", "cat_1.png", "cat_2.png", "cat_3.png"]


def test_a_failed_write_leaves_nothing(tmp_path):
    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_new_file(tmp_path / "cat.png", fail)
    assert list(tmp_path.iterdir()) == []


def test_sidecar_names_move_with_their_image(tmp_path):
    (tmp_path / "cat.json").write_text("{}")  # someone's sidecar: its image name is taken too
    writer = ImageWriter(tmp_path / "cat.png", total=1, sidecar=True)
    path = writer.write_image(0, pixels(), parameters())
    assert path == tmp_path / "cat_1.png" and writer.written == [path, tmp_path / "cat_1.json"]
    assert json.loads((tmp_path / "cat_1.json").read_text()) == parameters()
    assert (tmp_path / "cat.json").read_text() == "{}"


# ----- grids ----------------------------------------------------------------------------
def test_grid_cells_are_apart_and_rows_labelled(tmp_path):
    cells = [np.full((8, 8, 3), 255, np.uint8)] * 4
    grid = make_grid(cells, cols=2)
    assert GRID_GAP >= 2 and grid.shape == (2 * 8 + 3 * GRID_GAP, 2 * 8 + 3 * GRID_GAP, 3)
    # across the middle of the first row, and down the middle of the first column: two separate
    # runs of cell pixels with background between them (the cells never touch)
    middle = GRID_GAP + 4
    for line in (grid[middle], grid[:, middle]):
        in_cell = (line == 255).all(axis=-1)
        assert np.count_nonzero(np.diff(in_cell.astype(int)) == 1) + in_cell[0] == 2
        assert (line[~in_cell] == GRID_BACKGROUND).all()
    labelled = make_grid(cells, cols=2, labels=["one", "two"])
    strip = labelled.shape[1] - grid.shape[1]
    assert labelled.shape[0] == grid.shape[0] and strip > 0
    assert (labelled[:, :strip] < 128).any()  # dark label text on the white strip
    np.testing.assert_array_equal(labelled[:, strip:], grid)
    with pytest.raises(ValueError, match="3 row labels for a grid of 2 rows"):
        make_grid(cells, cols=2, labels=["a", "b", "c"])


def test_grid_parameters_give_back_every_prompt_with_every_seed(tmp_path):
    records = [parameters(prompt=p, seed=s) for p in ("one", "two") for s in (5, 6)]
    writer = ImageWriter(tmp_path / "grid.png", total=4)
    for record in records:
        writer.add_to_grid(pixels(), record)
    path = writer.write_grid(columns=2)
    stored = read_parameters(path)
    assert stored["prompts"] == ["one", "one", "two", "two"] and stored["seeds"] == [5, 6, 5, 6]
    flags = generate_flags(stored)
    assert flags["prompt"] == ["one", "two"] and flags["seed"] == [5, 6] and flags["grid"]
    assert flags["n_images"] == 2  # every prompt with both seeds, as the command line combines them
    # rank 0 of 2 under torchrun with 2 prompts x 3 seeds: jobs 0, 2, 4 are not every prompt x every seed
    full = [parameters(prompt=p, seed=s) for p in ("one", "two") for s in (5, 6, 7)]
    share = grid_parameters(full[::2], None)
    with pytest.raises(ValueError, match="share of a larger run"):
        generate_flags(share)


# ----- metadata and the info command ----------------------------------------------------------
def test_readable_entries_and_the_command_that_remakes_the_image():
    meta = flat_metadata(parameters())
    assert meta["sampler"] == "jacobi(block_size=4, tol=0.001, max_iter=32)" and meta["cfg"] == "1.5"
    assert meta["quantization"] == "flow 4-bit (group size 64)" and meta["decoder"] == "none"
    assert json.loads(meta["parameters"]) == parameters()
    command = equivalent_command(parameters(prompt="-a dash"))
    assert "--prompt '-a dash' --model starflow-digits-demo --seed 3 --guidance 1.5 --jacobi" in command
    assert "--quantize 4" in command and "--dtype float32" in command


def test_info_prints_parameters_and_refuses_images_without_them(tmp_path, capsys):
    path = ImageWriter(tmp_path / "a.png", total=1).write_image(0, pixels(), parameters())
    assert info.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "seed" in out and "starflow-digits-demo" in out and "to make it again: python -m" in out
    assert info.main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == parameters()
    Image.fromarray(pixels()).save(tmp_path / "plain.png")
    (tmp_path / "broken.json").write_text("{not json")
    for bad, message in [
        ("plain.png", "holds no STARFlow generation parameters"),
        ("missing.png", "no such file"),
        ("broken.json", "not valid JSON"),
    ]:
        assert info.main([str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
