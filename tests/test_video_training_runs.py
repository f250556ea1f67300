"""Video runs in both trainers on a tiny clip folder (moving digits as GIFs): the learned
self-denoiser trains beside the flow, a stopped run resumes exactly (the denoiser's optimizer
state included), and DDP / FSDP2 on 2 gloo processes match one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.training import overrides, read_log
from helpers.waiting import HANG_GUARD_S
from PIL import Image
from safetensors.numpy import load_file

from starflow_core.digits import load_digits_split
from starflow_core.digits_video import moving_digits, to_uint8_frames
from starflow_core.training.config import load_run_config
from starflow_core.video.files import write_video

REPO = Path(__file__).resolve().parents[1]
# a label model (labels through the text path) on 3 frames of 8x8 grey, the demo's video options
VIDEO_TINY = dict(
    in_channels=1,
    img_size=8,
    patch_size=2,
    channels=32,
    head_dim=16,
    num_blocks=2,
    layers_per_block=[1, 1],
    rope=True,
    sos=True,
    txt_size=1,
    txt_dim=11,
    num_classes=10,
    cond_top_only=True,
    use_softplus=True,
    use_final_norm=True,
    soft_clip=2.0,
    seq_order="L2R",
    noise_std=0.1,
    temporal_causal=2,
    shallow_block_local=True,
    learnable_self_denoiser=True,
    conditional_denoiser=True,
    denoiser_window=1,
)
DENOISER = "learnable_self_denoiser."


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """12 clips of 4 frames (16x16, read at 8x8), one subfolder per digit."""
    root = tmp_path_factory.mktemp("clips")
    split = load_digits_split()
    moving = moving_digits(split.train_images, split.train_labels, 12, seed=0, frames=4)
    for number, (clip, label) in enumerate(zip(to_uint8_frames(moving.clips), moving.labels, strict=True)):
        write_video(root / str(int(label)) / f"{number:02d}.gif", clip, 8.0)
    return root


def run_args(clips: Path, out: Path, **settings) -> list[str]:
    values = dict(data=str(clips), num_frames=3, steps=4, drop_image=0.5, drop_label=0.25, ema_decay=0.5)
    values.update(settings)
    return [*overrides(VIDEO_TINY, **values), f"train.out_dir={out}"]


def moved(folder: Path, prefix: str) -> bool:
    """Whether the denoiser's output projection (zero when fresh) was trained."""
    weights = load_file(str(folder / "model.safetensors"))
    return bool(np.abs(weights[prefix + "proj_out.weight"]).max() > 0)


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_video_runs_train_the_denoiser_and_resume_exactly(twin, clips, tmp_path):
    if twin == "mlx":
        from starflow_mlx.training import train
    else:
        from starflow_torch.training import train

        torch.set_num_threads(1)
    args = dict(grad_accum=2, sample_every=4, sample_count=2)  # a grid of video samples at the end
    straight = train(load_run_config(None, run_args(clips, tmp_path / "straight", **args)))
    first = train(load_run_config(None, run_args(clips, tmp_path / "split", **args)), stop_at_step=2)
    second = train(
        load_run_config(None, run_args(clips, tmp_path / "split", **args)), resume=tmp_path / "split"
    )
    assert first.losses + second.losses == straight.losses  # exact: same clips, noise, drops, arithmetic
    for name in ("model.safetensors", "ema/model.safetensors"):
        a, b = load_file(str(straight.checkpoint / name)), load_file(str(second.checkpoint / name))
        assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a), name
    log = read_log(tmp_path / "straight")
    assert all(r["denoiser_loss"] > 0 and r["denoiser_grad_norm"] > 0 for r in log)
    assert moved(straight.checkpoint, DENOISER)  # the denoiser's loss reached its weights
    grid = np.asarray(Image.open(tmp_path / "straight" / "samples" / "step_00000004.png"))
    assert grid.shape[:2] == (10 * 10 - 2, 3 * 10 - 2)  # a row of 3 frames per digit, 2 px gaps


def torchrun(args: list[str], nproc: int, timeout: float = HANG_GUARD_S) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    result = subprocess.run(
        [*command, "-m", "starflow_torch.train", *[a for item in args for a in ("--set", item)]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_ddp_and_fsdp_match_one_process_for_a_video_model(clips, tmp_path):
    from starflow_torch.training import train

    torch.set_num_threads(1)
    # two accumulation micro-steps: gradients are exchanged on the last one only
    train(load_run_config(None, run_args(clips, tmp_path / "one", steps=3, grad_accum=2)))
    reference = load_file(str(tmp_path / "one/checkpoints/step_00000003/model.safetensors"))
    reference_log = read_log(tmp_path / "one")
    for mode in ("ddp", "fsdp"):
        out = tmp_path / mode
        torchrun(run_args(clips, out, steps=3, grad_accum=2, parallel=mode), nproc=2)
        log = read_log(out)
        assert [r["step"] for r in log] == [1, 2, 3]
        # two half-batch means averaged vs one whole-batch mean: float32 rounding (as for images,
        # tests/test_train.py); the gradient norms before clipping show a summed gradient too
        for got, want in zip(log, reference_log, strict=True):
            for key in ("loss", "grad_norm", "denoiser_loss", "denoiser_grad_norm"):
                assert got[key] == pytest.approx(want[key], rel=1e-5), (mode, key)
        got = load_file(str(out / "checkpoints/step_00000003/model.safetensors"))
        assert sorted(got) == sorted(reference)
        for key in reference:  # Adam carries the rounding into the weights at ~1e-7
            assert np.allclose(got[key], reference[key], atol=2e-5, rtol=0), (mode, key)


def test_the_moving_digits_run_file_has_the_7b_video_options_and_trains(clips, tmp_path):
    """The demo's recipe (examples/moving_digits_run.yaml): the 7B's video options, a few MB of
    weights, and two steps of it in the MLX trainer on the tiny clip folder."""
    from starflow_mlx.model import StarFlow
    from starflow_mlx.training import train

    run_file = REPO / "examples" / "moving_digits_run.yaml"
    run = load_run_config(run_file)
    model = run.model
    assert (model.temporal_causal, model.shallow_block_local, model.learnable_self_denoiser) == (
        2,
        True,
        True,
    )
    assert model.conditional_denoiser and model.label_conditioned and model.txt_dim > 0  # labels as text
    assert model.img_size == 16 and run.train.num_frames >= 8 and run.train.drop_image > 0
    assert 1e6 < StarFlow(model).num_parameters() < 3e6  # a few MB in float16
    settings = ["train.num_frames=3", "train.steps=2", "train.batch_size=4", "train.warmup_steps=1"]
    settings += ["train.sample_every=2", "train.sample_count=2"]
    result = train(load_run_config(run_file, [f"train.data={clips}", f"train.out_dir={tmp_path}", *settings]))
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    grid = np.asarray(Image.open(tmp_path / "samples" / "step_00000002.png"))
    assert grid.shape[:2] == (10 * 18 - 2, 3 * 18 - 2)  # a row of 3 frames per digit, 2 px gaps
