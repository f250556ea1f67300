"""Generation as a user meets it, with real (tiny and demo) models: the result object, seeds
drawn and reported, the per-block callback in both twins, model names that load, pipeline
folders for StarFlow.from_pretrained, and the command line's metadata round trip
(--config-from-metadata makes the same pixels), no-overwrite, --stepwise-output-dir and its
refusals (exit 2, one line)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import starflow_mlx.pipeline as mlx_pipeline
import starflow_torch.pipeline as torch_pipeline
from starflow_core.generation.record import read_parameters
from starflow_core.generation.result import GeneratedImages
from starflow_core.sources.releases import DEMO_FOLDER, DEMO_NAME
from tests.helpers.tiny_components import make_tiny_vae_folder
from tests.helpers.tiny_pipeline import make_label_pipeline, make_tiny_pipeline
from tests.test_cli import pixels, run

TWINS = {"mlx": mlx_pipeline, "torch": torch_pipeline}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ux_pipelines")
    return {"text": make_tiny_pipeline(root), "labels": make_label_pipeline(root)}


@pytest.fixture(scope="module")
def demo():
    """The demo model loaded by the name its images carry, in both twins."""
    return {name: module.StarFlowPipeline.from_pretrained(DEMO_NAME) for name, module in TWINS.items()}


# ----- the Python API ---------------------------------------------------------------------------
@pytest.mark.parametrize("twin", sorted(TWINS))
def test_call_without_seeds_reports_them_and_remakes_the_image(twin, demo):
    pipe = demo[twin]
    result = pipe("seven")
    assert isinstance(result, GeneratedImages) and len(result) == 1 and len(result.seeds) == 1
    stored = json.loads(result[0].info["parameters"])
    assert stored["seed"] == result.seeds[0] and stored["model"] == DEMO_NAME and stored["framework"] == twin
    again = pipe("seven", seeds=result.seeds)  # the reported seed makes the same image
    np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(result[0]))
    two = pipe(["one", "two"])  # one random seed per prompt
    assert len(two.seeds) == 2 and two.prompts == ["one", "two"]


def test_the_result_is_a_sequence_that_saves_as_the_command_line_does(demo, tmp_path):
    result = demo["mlx"]("three", seeds=[5, 6])
    assert len(result) == 2 and list(result) == result.images and result[-1] is result.images[1]
    assert [image.size for image in result[0:2]] == [(8, 8), (8, 8)]
    assert [p["seed"] for p in result.parameters] == [5, 6]
    written = result.save(tmp_path / "api")
    assert [p.name for p in written] == ["0000_seed5.png", "0001_seed6.png"]
    assert result.save(tmp_path / "api")[0].name == "0000_seed5_1.png"  # kept, not overwritten
    grid = result.save(tmp_path / "grid.jpg", grid=True, metadata=True)
    assert [p.name for p in grid] == ["grid.jpg", "grid.json"]
    # the command line (a subprocess on the system BLAS, which may round differently) writes
    # the same file: equal parameters, pixels within one level
    cli = run(
        "starflow_mlx.generate", "three", "--model", DEMO_NAME, "--seed", 5, 6, "--quiet",
        "--output", tmp_path / "cli", tmp=tmp_path,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    for name in ("0000_seed5.png", "0001_seed6.png"):
        ours, theirs = read_parameters(tmp_path / "api" / name), read_parameters(tmp_path / "cli" / name)
        assert ours == theirs
        assert np.abs(pixels(tmp_path / "api" / name) - pixels(tmp_path / "cli" / name)).max() <= 1


@pytest.mark.parametrize("twin", sorted(TWINS))
@pytest.mark.parametrize("kind", ["text", "labels"])
def test_callback_sees_each_block_once(twin, kind, folders):
    pipe = TWINS[twin].StarFlowPipeline.from_pretrained(folders[kind])
    calls = []
    result = pipe.generate("a cat" if kind == "text" else "1", seeds=[0, 1], denoise=False,
                           callback=lambda index, latents: calls.append((index, latents.copy())))  # fmt: skip
    blocks = [i for i, n in enumerate(pipe.config.layers_per_block) if n > 0]
    assert [index for index, _ in calls] == blocks[::-1]  # sampled from the last block down
    assert all(latents.shape == result.latents.shape for _, latents in calls)  # numpy NHWC, both twins
    # the last state is the sample itself (no denoising asked): exactly, the same fp32 array
    np.testing.assert_array_equal(calls[-1][1], result.latents)
    assert np.abs(calls[0][1] - result.latents).max() > 1e-3  # earlier states differ


def test_flow_loads_from_a_pipeline_folder_in_both_twins():
    for module in ("starflow_mlx", "starflow_torch"):
        flow = __import__(module).StarFlow
        whole, part = flow.from_pretrained(DEMO_FOLDER), flow.from_pretrained(DEMO_FOLDER / "transformer")
        assert whole.config == part.config
        first = "blocks.3.proj_in.weight"
        ours = dict(whole.named_parameters()) if module == "starflow_torch" else dict(_flat(whole))
        theirs = dict(part.named_parameters()) if module == "starflow_torch" else dict(_flat(part))
        assert np.array_equal(np.asarray(ours[first].tolist()), np.asarray(theirs[first].tolist()))


def _flat(model):
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())


# ----- the command line ---------------------------------------------------------------------------
def test_config_from_metadata_makes_the_same_pixels(folders, tmp_path):
    made = run(
        "starflow_mlx.generate", "a photo of a cat", "--model", folders["text"], "--seed", 3, "--jacobi",
        "--cfg", 2.5, "--jacobi-block-size", 2, "--quiet", "--output", tmp_path / "cat.png", tmp=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    again = run(
        "starflow_mlx.generate", "--config-from-metadata", tmp_path / "cat.png", "--quiet", "--metadata",
        "--output", tmp_path / "again.png", tmp=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(pixels(tmp_path / "again.png"), pixels(tmp_path / "cat.png"))
    assert read_parameters(tmp_path / "again.json") == read_parameters(tmp_path / "cat.png")
    # a flag given replaces the stored one: another seed, another image
    other = run(
        "starflow_mlx.generate", "--config-from-metadata", tmp_path / "again.json", "--seed", 4, "--quiet",
        "--output", tmp_path / "other.png", tmp=tmp_path,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    assert read_parameters(tmp_path / "other.png")["seed"] == 4
    assert np.abs(pixels(tmp_path / "other.png") - pixels(tmp_path / "cat.png")).max() > 10


def test_every_setting_off_its_default_is_remade_from_metadata(folders, tmp_path):
    """Each generation setting given a value other than its default (the tiny pipeline's: guidance
    1.5, sequential, block 4, tol 1e-4, 16 iterations, 16x16, denoised, float32, no quantization)
    comes back from the image: the same parameters and the same pixels. Two images: --no-denoise
    leaves no place for a --decoder, and an image-to-image edit needs a source image."""
    make_tiny_vae_folder(tmp_path / "decoder", seed=5)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)).save(
        tmp_path / "source.png"
    )
    model = ["--model", folders["text"], "--quiet"]
    cases = {
        "sampling.png": [
            "a photo of a dog", "--seed", 11, "--cfg", 3.5, "--jacobi", "--jacobi-block-size", 2,
            "--jacobi-tol", 0.01, "--jacobi-max-iter", 3, "--aspect-ratio", "2:1", "--no-denoise",
            "--dtype", "bfloat16", "--quantize", 8,
        ],
        "edit.png": [
            "a photo of a dog", "--seed", 12, "--decoder", tmp_path / "decoder", "--quantize-text", 8,
            "--image", "source.png", "--strength", 0.6, "--source-prompt", "a cat",
        ],
    }  # fmt: skip
    for name, args in cases.items():
        made = run("starflow_mlx.generate", *args, *model, "--output", name, tmp=tmp_path)
        assert made.returncode == 0, made.stderr
        again = run(
            "starflow_mlx.generate", "--config-from-metadata", name, "--quiet", "--output", "again_" + name,
            tmp=tmp_path,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert read_parameters(tmp_path / ("again_" + name)) == read_parameters(tmp_path / name)
        np.testing.assert_array_equal(pixels(tmp_path / ("again_" + name)), pixels(tmp_path / name))
    stored = read_parameters(tmp_path / "sampling.png")  # every setting above took effect
    assert (stored["guidance"], stored["sampler"], stored["denoise"], stored["dtype"]) == (
        3.5,
        "jacobi",
        "none",
        "bfloat16",
    )
    assert (stored["jacobi_block_size"], stored["jacobi_tol"], stored["jacobi_max_iter"]) == (2, 0.01, 3)
    assert stored["width"] > stored["height"] and stored["quantize"] == 8
    stored = read_parameters(tmp_path / "edit.png")
    assert (stored["denoise"], stored["text_quantize"], stored["strength"]) == ("decoder", 8, "0.6")
    assert stored["decoder"] == str(tmp_path / "decoder") and stored["source_prompt"] == "a cat"


def test_an_edit_is_remade_from_its_metadata(tmp_path):
    """Inpainting's flags (--image, --mask-box, --strength, rounds) are recorded and restored."""
    made = run(
        "starflow_mlx.generate", "seven", "--seed", 5, "--quiet", "--output", "seven.png", tmp=tmp_path
    )
    assert made.returncode == 0, made.stderr
    edited = run(
        "starflow_mlx.generate", "one", "--image", "seven.png", "--height", 8, "--width", 8, "--mask-box", "0,4,8,8",
        "--seed", 1, "--inpaint-rounds", 2, "--quiet", "--output", "edited.png", tmp=tmp_path,
    )  # fmt: skip
    assert edited.returncode == 0, edited.stderr
    again = run(
        "starflow_mlx.generate", "--config-from-metadata", "edited.png", "--quiet", "--output", "again.png",
        tmp=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    recorded = read_parameters(tmp_path / "again.png")
    assert (recorded["mask"], recorded["inpaint_rounds"]) == ("box 0,4,8,8", "2")
    np.testing.assert_array_equal(pixels(tmp_path / "again.png"), pixels(tmp_path / "edited.png"))
    assert np.abs(pixels(tmp_path / "edited.png") - pixels(tmp_path / "seven.png")).max() > 10  # an edit


def test_demo_grid_remade_from_its_metadata_and_kept(tmp_path):
    first = run("starflow_mlx.generate", "--quiet", "--seed", 2, "--n-images", 2, tmp=tmp_path)  # 10 x 2
    assert first.returncode == 0, first.stderr
    assert read_parameters(tmp_path / "starflow.png")["model"] == DEMO_NAME
    again = run("starflow_mlx.generate", "--quiet", "--config-from-metadata", "starflow.png", tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "wrote starflow_1.png" in again.stdout  # the first grid is kept
    np.testing.assert_array_equal(pixels(tmp_path / "starflow_1.png"), pixels(tmp_path / "starflow.png"))
    replaced = run(
        "starflow_mlx.generate", "--quiet", "--seed", 3, "--n-images", 2, "--overwrite", tmp=tmp_path
    )
    assert replaced.returncode == 0 and "wrote starflow.png" in replaced.stdout
    assert read_parameters(tmp_path / "starflow.png")["seeds"][0] == 3


def test_random_seeds_are_printed_and_recorded(folders, tmp_path):
    result = run(
        "starflow_mlx.generate", "a cat", "--model", folders["text"], "--n-images", 2, "--quiet",
        "--output", tmp_path / "out", tmp=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("seed(s) drawn at random: "))
    seeds = [int(word) for word in line.split(": ")[1].split(" (")[0].split()]
    assert len(seeds) == 2
    stored = sorted(read_parameters(path)["seed"] for path in (tmp_path / "out").glob("*.png"))
    assert stored == seeds
    for path in (tmp_path / "out").glob("*.png"):
        assert f"wrote {path}" in result.stdout


def test_stepwise_output_shows_each_block_and_ends_at_the_sample(folders, tmp_path):
    common = ["1", "--model", folders["labels"], "--seed", 7, "--quiet", "--no-denoise"]
    result = run(
        "starflow_mlx.generate", *common, "--stepwise-output-dir", tmp_path / "steps",
        "--output", tmp_path / "final.png", tmp=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    steps = sorted((tmp_path / "steps").iterdir())
    assert [p.name for p in steps] == ["0000_seed7_step1_block1.png", "0000_seed7_step2_block0.png"]
    # the last step is the flow's sample, decoded as the final image is (no denoising asked)
    np.testing.assert_array_equal(pixels(steps[-1]), pixels(tmp_path / "final.png"))
    assert np.abs(pixels(steps[0]) - pixels(steps[-1])).max() > 0


def test_torch_twin_loads_the_demo_by_name_and_remakes_an_mlx_image(tmp_path):
    made = run("starflow_mlx.generate", "seven", "--model", DEMO_NAME, "--seed", 1, "--quiet", tmp=tmp_path)
    assert made.returncode == 0, made.stderr
    again = run(
        "starflow_torch.generate", "--config-from-metadata", "starflow.png", "--output", "torch.png",
        "--quiet", tmp=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert read_parameters(tmp_path / "torch.png")["framework"] == "torch"
    # the twins differ by float rounding only; one level of 255 where a value sits on a boundary
    assert np.abs(pixels(tmp_path / "torch.png") - pixels(tmp_path / "starflow.png")).max() <= 1


@pytest.mark.parametrize(
    "case",
    [
        "unknown-suffix",
        "no-parameters",
        "missing-metadata",
        "mlx-only-setting",
        "stepwise-into-a-file",
        "random-seeds-under-torchrun",
    ],
)
def test_user_errors_exit_2_with_one_line(case, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    stored = {"model": DEMO_NAME, "model_name": DEMO_NAME, "prompt": "one", "seed": 1, "guidance": 1.0}
    stored |= {"sampler": "sequential", "height": 8, "width": 8, "dtype": "float32", "quantize": 4}
    (tmp_path / "quantized.json").write_text(json.dumps(stored))
    (tmp_path / "a-file").write_text("")
    module, args, message = {
        "unknown-suffix": ("starflow_mlx.generate", ["one", "--output", "x.tiff"], "'.tiff' is not an image"),
        "no-parameters": (
            "starflow_mlx.generate",
            ["--config-from-metadata", "plain.png"],
            "holds no STARFlow generation parameters",
        ),
        "missing-metadata": ("starflow_mlx.generate", ["--config-from-metadata", "gone.png"], "no such file"),
        "mlx-only-setting": (
            "starflow_torch.generate",
            ["--config-from-metadata", "quantized.json", "--output", "t.png"],
            "made with --quantize 4",
        ),
        "stepwise-into-a-file": (
            "starflow_mlx.generate",
            ["one", "--model", DEMO_NAME, "--stepwise-output-dir", "a-file/steps"],
            "cannot write",
        ),
        "random-seeds-under-torchrun": (
            "starflow_torch.generate",
            ["one", "--model", DEMO_NAME, "--output", "t.png"],
            "give --seed under torchrun",
        ),
    }[case]
    ranked = (
        {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"} if case == "random-seeds-under-torchrun" else {}
    )
    result = run(module, *args, tmp=tmp_path, env=ranked)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "plain.png", "quantized.json"]
