"""Bad and odd input to editing and scoring: a clear message or a documented, announced fix.

Library: ValueError naming the problem; fixable mismatches (mask size, grey mask levels, an
image mode other than the model's) are fixed with one warning each. Command lines: exit 2,
one line on stderr, nothing written, no weights loaded.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from starflow_core.generation import cli as generate_cli
from starflow_core.generation.edit_inputs import (
    box_mask,
    check_strength,
    latent_mask,
    load_image,
    parse_mask_box,
    prepare_images,
    prepare_masks,
)
from starflow_core.generation.precision import Precision
from tests.helpers.tiny_pipeline import make_label_pipeline, make_tarflow_pipeline, make_tiny_pipeline


# ----- library ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf"), "much"])
def test_strength_outside_zero_one_is_refused(value):
    with pytest.raises(ValueError, match=r"strength must be"):
        check_strength(value)
    assert check_strength(0) == 0.0 and check_strength("1") == 1.0


def test_images_from_files_arrays_and_pil(tmp_path):
    pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    loaded = load_image(tmp_path / "rgb.png", 3)
    np.testing.assert_array_equal(loaded, pixels / np.float32(127.5) - 1)  # uint8 -> [-1, 1]
    np.testing.assert_array_equal(load_image(pixels, 3), loaded)
    np.testing.assert_array_equal(load_image(loaded, 3), loaded)  # float arrays in [-1, 1] as they are
    Image.fromarray(np.dstack([pixels, np.full((8, 8), 255, np.uint8)])).save(tmp_path / "rgba.png")
    with pytest.warns(UserWarning, match="RGBA; converted to RGB"):
        np.testing.assert_array_equal(load_image(tmp_path / "rgba.png", 3), loaded)
    with pytest.warns(UserWarning, match="RGB; converted to L"):
        assert load_image(tmp_path / "rgb.png", 1).shape == (8, 8, 1)


@pytest.mark.parametrize(
    "source, message",
    [
        (np.zeros((8, 8, 4), np.uint8), r"shape \(8, 8, 4\); this model takes \(H, W, 3\)"),
        (np.zeros((2, 8, 8, 3, 1), np.float32), "shape"),
        (np.full((8, 8, 3), 2.0, np.float32), r"float images must be in \[-1, 1\]"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
        (np.zeros((8, 8, 3), np.int64), "must be uint8"),
    ],
)
def test_bad_image_arrays(source, message):
    with pytest.raises(ValueError, match=message):
        load_image(source, 3)


def test_unreadable_and_missing_image_files(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "text.png", 3)
    with pytest.raises(ValueError, match="does not exist"):
        load_image(tmp_path / "missing.png", 3)


def test_image_sizes_are_snapped_or_resized_with_a_note():
    image = np.zeros((10, 13, 3), np.float32)
    with pytest.warns(UserWarning, match="resized to 8x16"):
        assert prepare_images(image, 2, 3, None, 8).shape == (2, 8, 16, 3)  # one image for two jobs
    with pytest.warns(UserWarning, match="resized to 16x16"):
        assert prepare_images(image, 1, 3, (16, 16), 8).shape == (1, 16, 16, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prepare_images(np.zeros((16, 8, 3)), 1, 3, None, 8).shape == (1, 16, 8, 3)
    with pytest.raises(ValueError, match="got 2 images for 3"):
        prepare_images([image, image], 3, 3, None, 8)


def test_masks_are_resized_and_thresholded_once():
    big_grey = np.kron(np.array([[0.0, 0.3], [0.7, 1.0]]), np.ones((8, 8)))  # 16x16, four grey levels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = prepare_masks([big_grey, big_grey], 2, 8, 8)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages  # one note each, not one per image
    assert "resized to the image size 8x8" in messages[0] and "thresholded at 0.5" in messages[1]
    expected = np.kron(np.array([[0.0, 0.0], [1.0, 1.0]]), np.ones((4, 4)))
    np.testing.assert_array_equal(masks, np.stack([expected, expected]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a binary mask of the right size: silent
        np.testing.assert_array_equal(prepare_masks(expected > 0, 1, 8, 8)[0], expected)
        np.testing.assert_array_equal(prepare_masks((expected * 255).astype(np.uint8), 1, 8, 8)[0], expected)
    with pytest.raises(ValueError, match="a mask is"):
        prepare_masks(np.zeros((2, 2, 8, 8)), 1, 8, 8)


def test_mask_boxes_and_latent_masks():
    assert parse_mask_box("0,4,8,8") == (0, 4, 8, 8)
    for text in ("0,4,8", "a,b,c,d", "0;4;8;8"):
        with pytest.raises(ValueError, match="four integers"):
            parse_mask_box(text)
    for box in ((0, 4, 9, 8), (4, 0, 4, 8), (-1, 0, 2, 2)):
        with pytest.raises(ValueError, match="must satisfy"):
            box_mask(box, 8, 8)
    mask = box_mask((1, 0, 3, 2), 4, 4)
    assert mask.sum() == 4 and mask[0:2, 1:3].all()
    # a latent pixel is regenerated when any of its pixels is: the 2x2 cells touched by the box
    np.testing.assert_array_equal(latent_mask(mask[None], 2)[0, ..., 0], [[1, 1], [0, 0]])


# ----- the generate command line ------------------------------------------------------------
@pytest.fixture(scope="module")
def label_folder(tmp_path_factory):
    return make_label_pipeline(tmp_path_factory.mktemp("edit_cli"))


def run_generate(argv, loads: list) -> int:
    """The shared command line in this process, with an MLX library loader (no BLAS switch)."""
    from starflow_mlx.pipeline import StarFlowPipeline, auto_dtype

    def precision(args):
        return Precision(auto_dtype(args.dtype), args.quantize, args.quantize_text)

    def load(parts, args):
        loads.append(parts.name)
        chosen = precision(args)
        return StarFlowPipeline.from_pretrained(parts, dtype=chosen.dtype, quantize=chosen.quantize)

    parser = generate_cli.build_parser("starflow_mlx.generate", "test")
    backend = generate_cli.Backend(
        load=load,
        peak_memory=lambda: None,
        precision=precision,
        memory=lambda args: (10**12, "test machine"),  # ample: these runs test the edit flags only
        quantization=True,
    )
    return generate_cli.main([str(a) for a in argv], parser, backend)


@pytest.fixture()
def files(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "image.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[8:] = 200  # the bottom half, grey, twice the size of the image
    Image.fromarray(mask).save(tmp_path / "mask.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    return tmp_path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mask", "{dir}/mask.png"], "--mask edits an image: give --image"),
        (["--mask-box", "0,4,8,8"], "--mask-box edits an image"),
        (["--strength", "0.5"], "--strength edits an image"),
        (["--image", "{dir}/image.png", "--strength", "1.5"], r"strength must be in \[0, 1\]"),
        (["--image", "{dir}/image.png", "--strength", "-0.2"], r"strength must be in \[0, 1\]"),
        (["--image", "{dir}/broken.png"], "not a readable image"),
        (["--image", "{dir}/missing.png"], "does not exist"),
        (["--image", "{dir}/image.png", "--mask-box", "0,4,9,8"], "must satisfy"),
        (["--image", "{dir}/image.png", "--mask", "{dir}/broken.png"], "not a readable image"),
        (["--image", "{dir}/image.png", "--aspect-ratio", "2:1"], "--aspect-ratio does not apply"),
        (["--image", "{dir}/image.png", "--inpaint-rounds", "0"], "--inpaint-rounds must be >= 1"),
    ],
)
def test_generate_refuses_bad_edits(label_folder, files, capsys, extra, message):
    output = files / "out"
    argv = ["cat", "--model", label_folder, "--seed", 0, "--output", output / "x.png", "--quiet"]
    loads = []
    code = run_generate(argv + [e.format(dir=files) for e in extra], loads)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("starflow-mlx-generate: error:"), err
    assert re.search(message, err), err
    assert loads == []  # refused before any weights load
    assert not output.exists()  # nothing written, not even the output folder


def test_generate_inpaints_a_file(label_folder, files):
    output = files / "out"
    argv = ["cat", "--model", label_folder, "--seed", 0, 1, "--quiet", "--output", output / "cat.png"]
    argv += ["--image", files / "image.png", "--mask", files / "mask.png", "--inpaint-rounds", 2]
    with warnings.catch_warnings(record=True) as caught:
        assert run_generate(argv, []) == 0
    notes = "\n".join(str(w.message) for w in caught)
    assert notes.count("resized to the image size 8x8") == 1 and notes.count("thresholded at 0.5") == 1, notes
    source = np.asarray(Image.open(files / "image.png"))
    for seed, name in ((0, "cat_0000_seed0.png"), (1, "cat_0001_seed1.png")):
        written = Image.open(output / name)
        assert written.text["image"] == str(files / "image.png") and written.text["seed"] == str(seed)
        assert written.text["mask"] == str(files / "mask.png") and written.text["strength"] == "1"
        factor = written.size[0] // 8  # saved enlarged for viewing (nearest neighbour)
        pixels = np.asarray(written.convert("RGB"))[::factor, ::factor]
        np.testing.assert_array_equal(pixels[:4], source[:4])  # the known half, bit for bit in uint8
        assert np.abs(pixels[4:].astype(int) - source[4:]).mean() > 5


@pytest.mark.parametrize("precision", [["--dtype", "bfloat16"], ["--quantize", "8"]])
def test_generate_edits_in_half_precision_and_quantized(label_folder, files, precision):
    """The edit runs through the same loader options as generation (--dtype, --quantize): the
    guided inverse and the rounds work in bfloat16 and on 8-bit weights, the known half stays
    the input's bit for bit (it is pasted from the input, whatever the flow's precision), and
    the PNG records the precision."""
    output = files / "out"
    argv = ["cat", "--model", label_folder, "--seed", 3, "--quiet", "--output", output / "q.png"]
    argv += ["--image", files / "image.png", "--mask-box", "0,4,8,8", "--inpaint-rounds", 2, *precision]
    assert run_generate(argv, []) == 0
    written = Image.open(output / "q.png")
    source = np.asarray(Image.open(files / "image.png"))
    factor = written.size[0] // 8
    pixels = np.asarray(written.convert("RGB"))[::factor, ::factor]
    np.testing.assert_array_equal(pixels[:4], source[:4])
    assert np.abs(pixels[4:].astype(int) - source[4:]).mean() > 5  # the box was regenerated
    expected = "bfloat16" if "bfloat16" in precision else "float32"
    assert written.text["dtype"] == expected
    assert ("8-bit" in written.text["quantization"]) == ("--quantize" in precision)


def test_generate_plans_an_edit_at_its_image_size(label_folder, files, capsys):
    """The size limit and the memory estimate see the edit's size (the image's), before loading:
    an image beyond 4x the training size is refused naming --no-size-limit, and the memory
    estimate of an edit grows with its image (8x8 vs 32x32 on the 8px model)."""
    large = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(large).save(files / "large.png")  # 5x the 8px model's side
    Image.fromarray(large[:32, :32]).save(files / "four.png")  # 4x: within the size limit
    output = files / "out"
    argv = ["cat", "--model", label_folder, "--seed", 0, "--quiet", "--output", output / "big.png"]
    loads = []
    assert run_generate(argv + ["--image", files / "large.png"], loads) == 2
    err = capsys.readouterr().err
    assert "40x40 is more than 4x" in err and "--no-size-limit" in err and loads == []
    needs = []
    for name in ("image.png", "four.png"):  # a limit far too small: the refusal states the estimate
        assert run_generate(argv + ["--image", files / name, "--memory-limit", "1e-9"], loads) == 2
        err = capsys.readouterr().err
        number, unit = re.search(r"needs about ([0-9.]+) (KB|MB|GB)", err).groups()
        needs.append(float(number) * {"KB": 1e3, "MB": 1e6, "GB": 1e9}[unit])
    assert loads == [] and needs[1] > needs[0], needs


def test_generate_encodes_the_source_prompt_before_the_flow_loads(tmp_path, files, monkeypatch):
    """An edit with --source-prompt loads T5 once, for the prompts and the source prompt
    together, before the flow (main's memory rule: T5 and the flow are never resident together)."""
    from starflow_mlx.pipeline import StarFlowPipeline

    folder = make_tiny_pipeline(tmp_path)
    events = []
    original_encoder, original_flow = StarFlowPipeline.load_text_encoder, StarFlowPipeline.flow.fget

    def load_text_encoder(pipe):
        events.append("t5")
        return original_encoder(pipe)

    def flow(pipe):
        if pipe._flow is None:
            events.append("flow")
        return original_flow(pipe)

    monkeypatch.setattr(StarFlowPipeline, "load_text_encoder", load_text_encoder)
    monkeypatch.setattr(StarFlowPipeline, "flow", property(flow))
    argv = ["a dog", "--model", folder, "--seed", 0, "--quiet", "--output", files / "out" / "dog.png"]
    argv += ["--image", files / "image.png", "--strength", 0.5, "--source-prompt", "a cat", "--cfg", 2]
    assert run_generate(argv, []) == 0
    assert events == ["t5", "flow"], events


def test_generate_edits_a_learned_position_model_only_at_its_size(tmp_path, files, capsys):
    """TARFlow's learned position embedding fixes the size: a 16x16 image for the 8x8 model is
    refused before loading, naming the fix; with --height/--width 8 it is resized and edited."""
    folder = make_tarflow_pipeline(tmp_path)
    image = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(image).save(files / "sixteen.png")
    argv = ["0", "--model", folder, "--seed", 0, "--quiet", "--output", files / "out" / "t.png"]
    argv += ["--image", files / "sixteen.png", "--strength", 0.5]
    loads = []
    assert run_generate(argv, loads) == 2
    err = capsys.readouterr().err
    assert "learned position embedding and only edits 8x8 images" in err and "--height 8" in err, err
    assert loads == [] and not (files / "out").exists()
    with pytest.warns(UserWarning, match="resized to 8x8"):  # announced
        assert run_generate(argv + ["--height", 8, "--width", 8], loads) == 0


def test_generate_image_to_image_with_a_box_and_a_size(label_folder, files):
    output = files / "out"
    argv = ["dog", "--model", label_folder, "--seed", 2, "--quiet", "--output", output / "dog.png"]
    argv += ["--image", files / "image.png", "--mask-box", "0,0,8,4", "--height", 8, "--width", 8]
    assert run_generate(argv, []) == 0
    assert Image.open(output / "dog.png").text["mask"] == "box 0,0,8,4"
    Path(output / "dog.png").unlink()
    argv = ["dog", "--model", label_folder, "--seed", 2, "--quiet", "--output", output / "dog.png"]
    assert run_generate(argv + ["--image", files / "image.png", "--strength", 0.3], []) == 0
    assert Image.open(output / "dog.png").text["strength"] == "0.3"
