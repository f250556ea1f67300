"""The tool's outputs as its inputs: generated (enlarged) images scored and edited exactly, the
default model as the README says, a training run generating and continuing in its folder."""

from __future__ import annotations

import importlib
import json
import warnings

import numpy as np
import pytest
from helpers.training import TARFLOW_TINY, make_class_folder, overrides
from PIL import Image

import starflow_mlx.pipeline as mlx_pipeline
from starflow_core.generation import cli as generate_cli
from starflow_core.generation import score_cli
from starflow_core.generation.edit_inputs import prepare_images, prepare_masks, undo_enlargement
from starflow_core.generation.images import enlarge_for_viewing
from starflow_core.generation.inputs import prompts_to_labels
from starflow_core.generation.result import GeneratedImages
from starflow_core.sources import resolve
from starflow_core.sources.releases import DEMO_NAME
from starflow_core.training.schedule import ema_decay_at
from tests.test_cli import run


@pytest.fixture(scope="module")
def demo():
    return mlx_pipeline.StarFlowPipeline.from_pretrained(DEMO_NAME)


@pytest.fixture(scope="module")
def seven(demo, tmp_path_factory):
    """A digit saved as generate saves it (enlarged 8x for viewing, metadata inside)."""
    result = GeneratedImages(demo.generate("seven", seeds=0, progress=False))
    path = result.save(tmp_path_factory.mktemp("seven") / "seven.png")[0]
    return path, result.generation.uint8()[0, ..., :1]  # its own 8x8 grey pixels


# ----- generated images read back exactly ---------------------------------------------------------
def test_an_enlarged_output_is_read_at_its_own_pixels(seven, tmp_path):
    path, own = seven
    assert Image.open(path).size == (64, 64)
    with pytest.warns(UserWarning, match="enlarged 8x for viewing"):
        read = prepare_images(path, 1, 1, None, 2)[0]
    np.testing.assert_array_equal(read, own.astype(np.float32) / 127.5 - 1.0)  # exact, not resampled
    # without metadata, the integer blocks alone say so
    Image.open(path).convert("L").save(tmp_path / "stripped.png")
    with pytest.warns(UserWarning, match="enlarged 8x"):
        np.testing.assert_array_equal(prepare_images(tmp_path / "stripped.png", 1, 1, None, 2)[0], read)
    # a 64x64 picture that is not made of blocks is left as it is
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 1), dtype=np.uint8)
    assert undo_enlargement(noise, None)[1] == 1
    # blocks of 2 in a 16x16 image are what the viewing rule makes of 8x8 (64 / 8 = 8, not 2): kept
    assert undo_enlargement(enlarge_for_viewing(noise[:8, :8])[:16, :16], None)[1] == 1


def test_score_of_a_generated_file_equals_its_own_pixels(demo, seven):
    path, own = seven
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_file = demo.score(path, "seven")
    direct = demo.score(own, "seven")
    np.testing.assert_array_equal(from_file, direct)  # the same 64 numbers, so the same bits/dim
    assert direct[0] < demo.score(own, "")[0]  # the true label explains the digit better than none


def test_inpainting_a_generated_file_keeps_its_region_and_a_drawn_mask_stays_clean(demo, seven, tmp_path):
    path, own = seven
    mask = np.zeros((64, 64), np.uint8)
    mask[32:] = 255  # drawn on the 64x64 view: the bottom half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = demo.generate(
            "seven", seeds=1, image=path, mask_image=tmp_path / "mask.png", height=8, width=8, progress=False
        )
    assert not [w for w in caught if "grey levels" in str(w.message)]
    kept = result.uint8()[0, :4, :, 0]
    np.testing.assert_array_equal(kept, own[:4, :, 0])  # the top half unchanged, bit for bit
    with pytest.warns(UserWarning, match="exactly"):
        np.testing.assert_array_equal(prepare_masks(tmp_path / "mask.png", 1, 8, 8)[0, 4:], 1.0)


def test_score_refuses_the_sizes_generate_refuses(tmp_path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)).save(
        tmp_path / "big.png"
    )
    refused = run("starflow_mlx.score", "big.png", tmp=tmp_path)
    assert refused.returncode == 2 and "more than 4x the size this model was trained at" in refused.stderr
    assert "--no-size-limit" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    big = [np.zeros((40, 40, 1), np.float32)]
    score_cli.check_sizes(["big.png"], big, 8, False, unlimited=True)  # --no-size-limit lets it through
    with pytest.raises(ValueError, match="only scores 8x8"):
        score_cli.check_sizes(["big.png"], [np.zeros((16, 16, 1))], 8, True, unlimited=True)  # pos. embedding


def test_edit_inputs_are_remade_from_another_folder(seven, tmp_path):
    path, _ = seven
    (tmp_path / "edit").mkdir()
    Image.open(path).save(tmp_path / "edit" / "digit.png", pnginfo=None)
    # the README's inpainting example
    made = run(
        "starflow_mlx.generate", "seven", "--image", "edit/digit.png", "--height", 8, "--width", 8,
        "--mask-box", "0,4,8,8", "-q", "-o", "edit/filled.png", tmp=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[1] == "wrote edit/filled.png"  # one image, as the README says
    assert Image.open(tmp_path / "edit" / "filled.png").size == (64, 64)  # not a grid of eight
    (tmp_path / "elsewhere").mkdir()
    again = run(
        "starflow_mlx.generate", "--config-from-metadata", "../edit/filled.png", "-q", "-o", "again.png",
        tmp=tmp_path / "elsewhere",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "elsewhere" / "again.png")),
        np.asarray(Image.open(tmp_path / "edit" / "filled.png")),
    )


# ----- the default model ------------------------------------------------------------------------
def test_without_model_the_demo_follows_the_readme(tmp_path):
    made = run("starflow_mlx.generate", "seven", "--n-images", 2, "-q", "-o", "out/", tmp=tmp_path)
    assert made.returncode == 0, made.stderr
    line = next(line for line in made.stdout.splitlines() if line.startswith("seed(s) drawn at random"))
    first = int(line.split(": ")[1].split()[0])  # drawn, not seeds 0-7 forced; one file each, no grid
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [f"0000_seed{first}.png", f"0001_seed{first + 1}.png"]
    assert f"(--seed {first} --n-images 2 repeats them)" in line
    parser = generate_cli.build_parser("starflow_mlx.generate", "")
    assert generate_cli.is_main_job(parser.parse_args([]))
    assert generate_cli.is_main_job(parser.parse_args(["-o", "x.png", "-q"]))
    for given in (["seven"], ["--seed", "3"], ["--n-images", "2"], ["--image", "x.png"]):
        assert not generate_cli.is_main_job(parser.parse_args(given))
    assert f"default: {DEMO_NAME}" in " ".join(parser.format_help().split())  # a name that loads
    with pytest.raises(ValueError, match=r"--model starflow-3b-t2i-256"):
        prompts_to_labels(["a cat"], 10, [str(i) for i in range(10)])


# ----- a training run into generation, and continued in its folder --------------------------------
def test_a_training_run_generates_and_resumes_in_its_folder(tmp_path):
    data = make_class_folder(tmp_path / "images")
    sets = [*overrides(TARFLOW_TINY, data=str(data), steps=2, ema_decay=0.998), "train.out_dir=run"]
    trained = run("starflow_mlx.train", *[a for s in sets for a in ("--set", s)], tmp=tmp_path)
    assert trained.returncode == 0, trained.stderr
    last = trained.stdout.strip().splitlines()[-1]
    assert last == "sample from it: python -m starflow_mlx.generate --model run PROMPT --seed 0"
    made = run(
        "starflow_mlx.generate", "class_1", "-m", "run", "--seed", 0, "-q", "-o", "x.png", tmp=tmp_path
    )
    assert made.returncode == 0, made.stderr
    assert "weights: run checkpoint step_00000002 (step 2), EMA weights (decay 0.998)" in made.stdout
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002"
    for name in ("run", "run/checkpoints", "run/checkpoints/latest", "run/checkpoints/step_00000002"):
        parts = resolve(tmp_path / name)
        assert parts.transformer == checkpoint / "ema" and parts.labels == ("class_0", "class_1")
        assert parts.source == str(checkpoint.resolve())  # images name the checkpoint, not `latest`

    resumed = run("starflow_mlx.train", "--resume", "run", "--steps", 3, tmp=tmp_path)  # its stored config
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    (tmp_path / "run.json").write_text(json.dumps({"model": TARFLOW_TINY, "train": {**json.loads(
        (tmp_path / "run" / "checkpoints" / "step_00000003" / "run.json").read_text())["train"],
        "out_dir": "elsewhere", "steps": 4}}))  # fmt: skip
    with_config = run("starflow_mlx.train", "--config", "run.json", "--resume", "run", tmp=tmp_path)
    assert with_config.returncode == 0, with_config.stderr
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert not (tmp_path / "elsewhere").exists()  # the run is not split across two folders


def test_ema_decay_warms_up():
    # decay_t = min(decay, (1 + t) / (10 + t)), t = optimizer steps before the update
    assert [ema_decay_at(0.998, t) for t in (0, 1, 8)] == [0.1, 2 / 11, 0.5]
    assert ema_decay_at(0.998, 10_000) == 0.998  # the configured decay once (1 + t) / (10 + t) passes it
    assert ema_decay_at(0.998, 0, warmup=False) == 0.998


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_both_trainers_average_with_the_warm_up(twin, tmp_path):
    """Two steps from known weights: ema_1 = 0.1 init + 0.9 w_1, ema_2 = 2/11 ema_1 + 9/11 w_2
    (without the warm-up ema_2 would be 99.6% the random initialisation)."""
    from safetensors.numpy import load_file

    from starflow_core.config import FlowConfig
    from starflow_mlx.model import StarFlow

    initial = StarFlow(FlowConfig.from_dict(TARFLOW_TINY))
    initial.save_pretrained(tmp_path / "init")
    trainer = importlib.import_module(f"starflow_{twin}.training")
    data = make_class_folder(tmp_path / "images")
    sets = overrides(TARFLOW_TINY, data=str(data), steps=2, ema_decay=0.998, save_every=1, keep_checkpoints=2)
    sets += [f"train.out_dir={tmp_path / 'run'}", f"train.init_weights={tmp_path / 'init'}"]
    trainer.train(trainer.load_run_config(None, sets))
    init = load_file(str(tmp_path / "init" / "model.safetensors"))
    step = {n: tmp_path / "run" / "checkpoints" / f"step_0000000{n}" for n in (1, 2)}
    weights = {n: load_file(str(step[n] / "model.safetensors")) for n in (1, 2)}
    ema = {n: load_file(str(step[n] / "ema" / "model.safetensors")) for n in (1, 2)}
    moved = 0.0
    for name, start in init.items():
        # fp32 updates: the average's rounding is a few ulps of values of order one
        np.testing.assert_allclose(ema[1][name], 0.1 * start + 0.9 * weights[1][name], atol=2e-6)
        np.testing.assert_allclose(ema[2][name], 2 / 11 * ema[1][name] + 9 / 11 * weights[2][name], atol=2e-6)
        moved = max(moved, float(np.abs(weights[2][name] - start).max()))
    assert moved > 1e-3  # the weights did move (lr 1e-3): the check above can see a wrong decay
