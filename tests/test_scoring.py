"""Scoring: the exact log-likelihood of images, in both twins and from the command lines.

Tolerances: a score is the flow's log_prob of the same array (float32 arithmetic, summed in
float64 afterwards): equal to 1e-6 relative. The twins run the same maths on different kernels:
1e-5 relative (test_inversion's twin tolerance). The command lines print what the library
computes, to the printed digits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import starflow_mlx.pipeline as mlx_pipeline
import starflow_torch.pipeline as torch_pipeline
from starflow_core.generation import score_cli
from starflow_core.generation.precision import Precision
from tests.helpers.tiny_pipeline import make_label_pipeline, make_tiny_pipeline, make_unconditional_pipeline
from tests.helpers.waiting import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = {"text": ["a photo of a cat", ""], "labels": ["bird", ""], "unconditional": ["", ""]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    return {
        "text": make_tiny_pipeline(root),
        "labels": make_label_pipeline(root),
        "unconditional": make_unconditional_pipeline(root),
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two 16x16 RGB PNG files and their pixels in [-1, 1]."""
    folder = tmp_path_factory.mktemp("score_images")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    paths = []
    for index, image in enumerate(pixels):
        paths.append(folder / f"image{index}.png")
        Image.fromarray(image).save(paths[-1])
    return paths, pixels.astype(np.float32) / 127.5 - 1


@pytest.mark.parametrize("kind", ["text", "labels", "unconditional"])
def test_scores_are_the_flows_log_prob_in_both_twins(folders, images, kind):
    _, pixels = images
    scores = []
    for module in (mlx_pipeline, torch_pipeline):
        pipe = module.StarFlowPipeline.from_pretrained(folders[kind])
        bits = pipe.score(pixels, PROMPTS[kind])
        latents = pipe.encode(pipe.from_numpy(pixels))
        y, _ = pipe.conditions(PROMPTS[kind], guided=False)
        direct = np.asarray(pipe.flow.bits_per_dim(latents, y).tolist())
        np.testing.assert_allclose(bits, direct, rtol=1e-6)
        scores.append(bits)
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5)
    if kind != "unconditional":  # the condition enters: the same image scores differently under ""
        pipe = mlx_pipeline.StarFlowPipeline.from_pretrained(folders[kind])
        assert abs(pipe.score(pixels[:1], PROMPTS[kind][0])[0] - pipe.score(pixels[:1], "")[0]) > 1e-4


def run_score(argv, loads: list, capsys) -> tuple[int, str, str]:
    """The shared command line in this process, loading as starflow_mlx.score does (whose import
    would switch BLAS under this process's torch)."""

    def precision(args):
        return Precision(mlx_pipeline.auto_dtype(args.dtype), args.quantize, args.quantize_text)

    def load(parts, args):
        loads.append(parts.name)
        chosen = precision(args)
        return mlx_pipeline.StarFlowPipeline.from_pretrained(
            parts, dtype=chosen.dtype, quantize=chosen.quantize, strict=args.strict
        )

    parser = score_cli.build_parser("starflow_mlx.score", "test")
    code = score_cli.main([str(a) for a in argv], parser, load, precision)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_score_command_table_and_json(folders, images, capsys):
    paths, pixels = images
    pipe = mlx_pipeline.StarFlowPipeline.from_pretrained(folders["text"])
    expected = pipe.score(pixels, "a photo of a cat")
    code, out, _ = run_score([*paths, "--model", folders["text"], "--prompt", "a photo of a cat"], [], capsys)
    assert code == 0
    lines = out.splitlines()
    assert "VAE latent" in lines[0] and "training noise N(0, 0.3^2)" in lines[0]  # what is measured
    assert "(float32)" in lines[0]  # the precision scored in
    for line, bits in zip(lines[2:], expected, strict=True):
        assert float(line.split()[-3]) == pytest.approx(bits, abs=1e-4)  # printed to 4 decimals
    code, out, _ = run_score(
        [*paths, "--model", folders["text"], "--prompt", "a photo of a cat", "--json"], [], capsys
    )
    report = json.loads(out)
    assert [row["image"] for row in report["images"]] == [str(p) for p in paths]
    np.testing.assert_allclose([row["bits_per_dim"] for row in report["images"]], expected, rtol=1e-12)
    assert all(row["dims"] == 8 * 8 * 4 for row in report["images"])  # the latent's values
    assert report["dtype"] == "float32" and report["quantization"] == "none"


def test_score_command_says_when_the_weights_are_quantized(folders, images, capsys):
    """8-bit weights are another model: the header names them, and the numbers move a little."""
    paths, pixels = images
    argv = [*paths, "--model", folders["labels"], "--label", "bird"]
    code, out, _ = run_score(argv + ["--json"], [], capsys)
    exact = [row["bits_per_dim"] for row in json.loads(out)["images"]]
    code, out, _ = run_score(argv + ["--json", "--quantize", "8"], [], capsys)
    report = json.loads(out)
    assert code == 0 and report["quantization"] == "flow 8-bit (group size 64)"
    quantized = [row["bits_per_dim"] for row in report["images"]]
    assert quantized != exact  # the quantized weights were the ones scored
    # 8-bit groups of 64 move a tiny random flow's bits/dim by far less than 0.05 (measured ~1e-3)
    np.testing.assert_allclose(quantized, exact, atol=0.05)
    code, out, _ = run_score(argv + ["--quantize", "8"], [], capsys)
    assert "(float32, flow 8-bit (group size 64))" in out.splitlines()[0]


@pytest.mark.parametrize(
    "kind, extra, message",
    [
        ("labels", ["--label", "zebra"], "not a class"),
        ("text", ["--label", "cat"], "text-conditioned; use --prompt"),
        ("unconditional", ["--prompt", "a cat"], "unconditional; drop --prompt"),
        ("text", ["--prompt", "a", "--prompt", "b", "--prompt", "c"], "3 conditions for 2 images"),
        ("text", ["{broken}"], "not a readable image"),
        ("text", ["--batch-size", "0"], "--batch-size must be >= 1"),
        ("text", ["{missing}"], "does not exist"),
    ],
)
def test_score_command_refuses_bad_input(folders, images, tmp_path, capsys, kind, extra, message):
    (tmp_path / "broken.png").write_text("no image")
    loads = []
    files = [*images[0]]
    if extra == ["{broken}"]:  # an unreadable file among the images
        files, extra = [tmp_path / "broken.png", *files], []
    if extra == ["{missing}"]:
        files, extra = [*files, tmp_path / "missing.png"], []
    argv = [*files, "--model", folders[kind], *extra]
    code, out, err = run_score(argv, loads, capsys)
    assert code == 2 and out == "" and loads == []
    assert err.count("\n") == 1 and message in err, err


def test_score_modules_run_as_commands_and_agree(folders, images, tmp_path):
    """`python -m starflow_{mlx,torch}.score`, as a user runs them (own processes, own BLAS)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    reports = []
    for module in ("starflow_mlx.score", "starflow_torch.score"):
        argv = [sys.executable, "-m", module, *map(str, images[0]), "--model", str(folders["labels"])]
        argv += ["--label", "bird", "--json"]
        done = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
        )
        assert done.returncode == 0, done.stderr
        reports.append(json.loads(done.stdout))
    bits = [[row["bits_per_dim"] for row in report["images"]] for report in reports]
    np.testing.assert_allclose(bits[0], bits[1], rtol=1e-5)


def test_score_command_checks_images_and_disk_before_any_download(images, tmp_path, monkeypatch, capsys):
    """Scoring with a release (the 3B): an unreadable image, and then a disk too small for the
    first run's downloads, are refused before anything is downloaded or loaded."""
    import huggingface_hub

    from starflow_core.generation import resource_check

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("STARFLOW_MLX_CACHE", str(tmp_path / "converted"))

    def no_download(*args, **kwargs):
        raise AssertionError("nothing may be downloaded before the images and the disk are checked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    (tmp_path / "broken.png").write_text("no image")
    argv = [*images[0], "--model", "starflow-3b-t2i-256", "--prompt", "a cat"]
    loads = []
    code, out, err = run_score([tmp_path / "broken.png", *argv], loads, capsys)
    assert code == 2 and "not a readable image" in err and loads == [], err
    monkeypatch.setattr(resource_check, "free_disk", lambda folder: (10**9, tmp_path))  # 1 GB free
    code, out, err = run_score(argv, loads, capsys)
    assert code == 2 and "only 1.0 GB is free" in err and loads == [], err
