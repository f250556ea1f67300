"""The command lines, run as a user runs them (subprocesses, offline, caches in tmp)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from starflow_core.generation.images import GRID_GAP, LABEL_WIDTH_MAX
from tests.helpers.tiny_pipeline import make_nan_pipeline, make_tiny_pipeline
from tests.helpers.waiting import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_pipeline")
    text = make_tiny_pipeline(root)
    return {"text": text, "nan": make_nan_pipeline(text, root)}


def run(module: str, *args, tmp: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp / "hf"),
        "STARFLOW_MLX_CACHE": str(tmp / "converted"),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=tmp,
        env=environment,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_generate_metadata_and_reproducibility(folders, tmp_path):
    common = ["a photo of a cat", "--model", folders["text"], "--seed", 3, 4, "--quiet", "--jacobi"]
    first = run("starflow_mlx.generate", *common, "--output", tmp_path / "a" / "cat.png", tmp=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "2 image(s) in" in first.stdout and "peak memory" in first.stdout
    path = tmp_path / "a" / "cat_0001_seed4.png"
    text = Image.open(path).text
    # "model" is what loads the model again (here the folder); "model_name" its model_index name
    assert text["model"] == str(folders["text"].resolve()) and text["model_name"] == "tiny-t2i"
    assert text["prompt"] == "a photo of a cat" and text["seed"] == "4"
    assert text["cfg"] == "1.5" and text["sampler"].startswith("jacobi(block_size=4")
    assert int(text["steps"]) > 0 and text["version"].startswith("starflow-mlx")
    # --dtype auto is float32 on this CPU; no quantization
    assert text["dtype"] == "float32" and text["text_dtype"] == "float32" and text["quantization"] == "none"

    again = run("starflow_mlx.generate", *common, "--output", tmp_path / "b", tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(pixels(tmp_path / "b" / "0001_seed4.png"), pixels(path))

    # the torch twin, same flags, as rank 1 of 2 under torchrun: only job 1 is its share
    ranked = run(
        "starflow_torch.sample",
        *common,
        "--output",
        tmp_path / "c",
        tmp=tmp_path,
        env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"},
    )
    assert ranked.returncode == 0, ranked.stderr
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["0001_seed4.png"]
    assert np.abs(pixels(tmp_path / "c" / "0001_seed4.png") - pixels(path)).max() <= 1


def test_grid_and_sizes(folders, tmp_path):
    result = run(
        "starflow_mlx.generate",
        "--prompt",
        "a cat",
        "--prompt",
        "a dog",
        "--model",
        folders["text"],
        "--seed",
        1,
        "--sequential",
        "--cfg",
        0,
        "--aspect-ratio",
        "16:9",
        "--grid",
        "--quiet",
        "--output",
        tmp_path / "grid.png",
        tmp=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    image = Image.open(tmp_path / "grid.png")
    # two 22x12 images (16:9 of 16x16, multiples of 2), enlarged 6x for viewing (shorter side >= 64),
    # one row per prompt and one column per seed, GRID_GAP pixels between and around the cells, and
    # a label strip on the left with each row's prompt
    gap = GRID_GAP
    strip = image.size[0] - (6 * 22 + 2 * gap)
    assert image.size[1] == 2 * 6 * 12 + 3 * gap and 0 < strip <= LABEL_WIDTH_MAX + 2 * gap + 4
    assert json.loads(image.text["prompt"]) == ["a cat", "a dog"]
    assert image.text["sampler"] == "sequential" and image.text["cfg"] == "0"


@pytest.mark.parametrize(
    "case",
    ["unknown-model", "bad-size", "empty-prompt-file", "unwritable-output", "nan-sample"],
)
def test_bad_input_exits_2_with_a_clear_message(case, folders, tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "a-file").write_text("")
    out = ["--output", tmp_path / "out"]
    args, expected = {
        "unknown-model": (["a cat", "--model", "no-such-model", *out], "unknown model 'no-such-model'"),
        "bad-size": (["a cat", "--model", folders["text"], "--height", 15, "--width", 16, *out], "height 15"),
        "empty-prompt-file": (
            ["--prompt-file", tmp_path / "empty.txt", "--model", folders["text"], *out],
            "empty",
        ),
        # checked before the model is even looked up (it does not exist either)
        "unwritable-output": (
            ["a cat", "--model", "nowhere", "--output", tmp_path / "a-file" / "x"],
            "cannot write",
        ),
        "nan-sample": (["a cat", "--model", folders["nan"], "--seed", 0, *out], "NaN"),
    }[case]
    result = run("starflow_mlx.generate", *args, tmp=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.png"))


def test_no_arguments_runs_the_embedded_demo_model(tmp_path):
    """`python -m starflow_mlx.generate` alone: a grid of digits, one row per digit, 8 seeds."""
    from PIL import Image

    result = run("starflow_mlx.generate", tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    grid = tmp_path / "starflow.png"
    assert f"wrote {grid.name}" in result.stdout
    image = Image.open(grid)
    # 8x8 digits enlarged to 64 px: 8 seeds x 10 digits, gaps between them, labels on the left
    assert image.size[1] == 10 * 64 + 11 * GRID_GAP and image.size[0] > 8 * 64 + 9 * GRID_GAP
    prompts = json.loads(image.text["prompt"])
    assert len(prompts) == 80 and prompts[:8] == ["zero"] * 8 and prompts[-1] == "nine"
    assert "peak memory" in result.stdout


def test_convert_checkpoint_and_refuse_overwrite(tmp_path):
    official = FIXTURES / "starflow_tiny"
    args = ["flow", official / "official.pth", "--config", official / "config.json", "-o", tmp_path / "flow"]
    first = run("starflow_convert", *args, tmp=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "model.safetensors" in first.stdout
    assert (tmp_path / "flow" / "config.json").is_file()
    second = run("starflow_convert", *args, tmp=tmp_path)
    assert second.returncode == 2 and "--overwrite" in second.stderr
    assert run("starflow_convert", *args, "--overwrite", "--dtype", "bfloat16", tmp=tmp_path).returncode == 0
    missing = run(
        "starflow_convert", "pipeline", "--model", "starflow-3b-t2i-256", "-o", tmp_path / "p", tmp=tmp_path
    )
    assert (
        missing.returncode == 2 and "hf download apple/starflow starflow_3B_t2i_256x256.pth" in missing.stderr
    )


def test_unexpected_tensors_warn_and_strict_refuses(folders, tmp_path):
    """A flow file carrying a tensor the model does not use: one warning line naming it and the
    image is made; --strict makes it an error (exit 2) before anything is written."""
    import shutil

    from safetensors.numpy import load_file, save_file

    pipeline = tmp_path / "pipeline"
    shutil.copytree(folders["text"], pipeline)
    weights = pipeline / "transformer" / "model.safetensors"
    tensors = load_file(weights)
    weights.unlink()  # the copy may share its data with the original (hard links)
    save_file({**tensors, "blocks.0.unused": np.zeros(3, np.float32)}, weights)
    common = ["a cat", "--model", pipeline, "--seed", 0, "--quiet", "--sequential"]
    loose = run("starflow_mlx.generate", *common, "--output", tmp_path / "a.png", tmp=tmp_path)
    assert loose.returncode == 0, loose.stderr
    warning = [line for line in loose.stderr.splitlines() if "does not use" in line]
    assert len(warning) == 1 and "warning:" in warning[0] and "blocks.0.unused" in warning[0]
    strict = run("starflow_mlx.generate", *common, "--strict", "--output", tmp_path / "b.png", tmp=tmp_path)
    assert strict.returncode == 2 and "unexpected (1): blocks.0.unused" in strict.stderr
    assert "Traceback" not in strict.stderr and not (tmp_path / "b.png").exists()


# The starflow_arch vectors' model as an official training YAML (flags of the official train.py)
ARCH_YAML = """\
arguments:
- channel_size: 4
- img_size: 8
- patch_size: 1
- channels: 64
- blocks: 3
- layers_per_block: 1 1 2
- head_dim: 32
- rope: 1
- adaln: 1
- sos: 1
- txt_size: 6
- cond_top_only: 1
- use_softplus: 1
- use_final_norm: 1
- soft_clip: 4
- seq_order: L2R
- use_swiglu: 1
- norm_type: rms_norm
- use_qk_norm: 1
- num_kv_heads: 1
- use_bias: 0
- grad_clip: 1
"""


def test_convert_variant_from_official_yaml(tmp_path):
    """Official variant .pth + its training YAML -> our folder that reproduces the official z."""
    import torch
    from safetensors.numpy import load_file

    from starflow_torch import StarFlow

    official = FIXTURES / "starflow_arch"
    (tmp_path / "arch.yaml").write_text(ARCH_YAML)
    args = ["flow", official / "official.pth", "--config", tmp_path / "arch.yaml", "--txt-dim", 32]
    result = run("starflow_mlx.convert", *args, "-o", tmp_path / "flow", tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    # adaln builds nothing in the official code: accepted with one line saying so
    assert result.stderr.splitlines() == [
        f"starflow-mlx-convert: warning: {tmp_path / 'arch.yaml'}: adaln=1 ignored: the official train.py never "
        "passes adaln to the model, which builds no adaLN"
    ]
    io = load_file(str(official / "io.safetensors"))
    z, _ = StarFlow.from_pretrained(tmp_path / "flow")(torch.from_numpy(io["x"]), torch.from_numpy(io["y"]))
    error = np.abs(z.detach().numpy() - io["z"]).max() / np.abs(io["z"]).max()
    assert error < 1e-4  # the official vectors' tolerance (SPEC section 7)

    (tmp_path / "gemma.yaml").write_text(ARCH_YAML + "- use_pretrained_lm: gemma3_4b\n")
    args[3] = tmp_path / "gemma.yaml"
    refused = run("starflow_mlx.convert", *args, "-o", tmp_path / "gemma", tmp=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert (
        "use_pretrained_lm='gemma3_4b' (a pretrained" in refused.stderr and not (tmp_path / "gemma").exists()
    )


def test_convert_a_flow_folder_into_a_named_label_pipeline(tmp_path):
    """How the shipped demo model is packaged: a flow folder (a training checkpoint's ema/) becomes a
    pipeline folder with a name, class names, default prompts and guidance, stored in float16."""
    from starflow_core.io import read_safetensors_header
    from starflow_core.sources.pipeline_folder import read_pipeline_folder

    flow = FIXTURES / "pipeline_v0_1_0" / "transformer"  # a label model with 3 classes, float32
    out = tmp_path / "pets"
    args = ["pipeline", "--model", flow, "-o", out, "--name", "pets", "--labels", "cat", "dog", "bird"]
    result = run(
        "starflow_mlx.convert", *args, "--default-prompts", "dog", "2", "--guidance", 2.5, "--dtype", "float16",
        tmp=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    parts = read_pipeline_folder(out)
    assert (parts.name, parts.labels, parts.default_prompts) == ("pets", ("cat", "dog", "bird"), ("dog", "2"))
    assert parts.sampling.guidance == 2.5 and not parts.sampling.jacobi  # the rest keep their defaults
    header = read_safetensors_header(out / "transformer" / "model.safetensors")
    assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"F16"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--labels", "cat", "dog"], "2 class names for a flow with num_classes=3"),
        (["--labels", "cat", "dog", "bird", "--default-prompts", "fish"], "'fish' is not a class"),
        (["--guidance", "-1"], "guidance (cfg) must be a finite number >= 0"),
    ],
)
def test_convert_pipeline_refuses_bad_descriptions(extra, message, tmp_path, capsys):
    from starflow_core import convert  # the framework-free command: no BLAS switch in this process

    out = tmp_path / "pets"
    flow = FIXTURES / "pipeline_v0_1_0" / "transformer"
    assert convert.main(["pipeline", "--model", str(flow), "-o", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
