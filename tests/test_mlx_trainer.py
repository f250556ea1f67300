"""The MLX trainer (python -m starflow_mlx.train): the torch twin's run files, data order and
checkpoint layout; exact resume; weights that load in torch; clear errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import max_relative_error
from helpers.tiny_components import make_tiny_t5_folder, make_tiny_vae_folder
from helpers.training import (
    STARFLOW_TINY,
    TARFLOW_TINY,
    encode_caption_shards,
    make_caption_folder,
    make_class_folder,
    overrides,
    read_log,
)
from helpers.waiting import HANG_GUARD_S
from PIL import Image

from starflow_core.training.config import load_run_config
from starflow_mlx import StarFlow
from starflow_mlx.data import batch_stream
from starflow_mlx.training import train
from starflow_mlx.training.inputs import build_dataset
from starflow_torch import StarFlow as TorchStarFlow
from starflow_torch.data import ImageFolderDataset as TorchImageFolder
from starflow_torch.data import ShardedBatchSampler, collate, epoch_batches

REPO = Path(__file__).resolve().parents[1]


def run_config(model: dict, out: Path, **train_settings):
    return load_run_config(None, [*overrides(model, **train_settings), f"train.out_dir={out}"])


def weights(folder: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(folder / "model.safetensors")).items()}


def test_class_folder_training_reduces_the_loss_and_loads_in_torch(tmp_path):
    data = make_class_folder(tmp_path / "images", per_class=8)
    result = train(run_config(TARFLOW_TINY, tmp_path / "run", data=str(data), steps=12, sample_every=12))
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, 13))
    assert np.mean([r["loss"] for r in log[-3:]]) < np.mean([r["loss"] for r in log[:3]])
    assert (tmp_path / "run/samples/step_00000012.png").is_file()
    assert (tmp_path / "run/loss.png").is_file()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    labels = np.array([0, 1])
    for folder in (result.checkpoint, result.checkpoint / "ema"):
        got = np.array(StarFlow.from_pretrained(folder).log_prob(mx.array(x), mx.array(labels)))
        want = (
            TorchStarFlow.from_pretrained(folder)
            .log_prob(
                torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(labels)
            )
            .detach()
            .numpy()
        )
        assert max_relative_error(got, want) < 1e-4  # fp32 in both twins, different kernels


def test_the_prior_variance_is_not_trained(tmp_path):
    data = make_class_folder(tmp_path / "images")
    result = train(run_config(TARFLOW_TINY, tmp_path / "run", data=str(data), steps=2))
    np.testing.assert_array_equal(weights(result.checkpoint)["var"], 1.0)  # a buffer in torch


def test_same_batches_and_pixels_as_the_torch_loader(tmp_path):
    """Both twins read the shared epoch order: the same images, crops and flips per batch."""
    data = make_class_folder(tmp_path / "images", per_class=6, size=(13, 9))
    run = run_config(TARFLOW_TINY, tmp_path / "run", data=str(data), flip=True, seed=3)
    dataset = build_dataset(run.model, run.train)
    stream = batch_stream(dataset, run.train, epoch=0, start=1)
    torch_data = TorchImageFolder(data, "label", 8, 2)
    batches = epoch_batches(torch_data.buckets, 4, seed=3, epoch=0, flip=True)
    sampler = ShardedBatchSampler(batches, rank=0, world_size=1, start=1)
    for refs in list(sampler)[:2]:
        want = collate([torch_data[ref] for ref in refs])
        epoch, number, got = next(stream)
        np.testing.assert_array_equal(got["label"], want["label"].numpy())
        np.testing.assert_allclose(got["image"], want["image"].permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert (epoch, number) == (0, 3)


def test_resume_continues_exactly(tmp_path):
    data = make_class_folder(tmp_path / "images")
    settings = dict(data=str(data), steps=4, grad_accum=2, drop_label=0.3)
    straight = train(run_config(TARFLOW_TINY, tmp_path / "straight", **settings))
    first = train(run_config(TARFLOW_TINY, tmp_path / "split", **settings), stop_at_step=2)
    assert first.interrupted and not first.signalled and first.progress.step == 2  # stop_at_step: exit 0
    second = train(run_config(TARFLOW_TINY, tmp_path / "split", **settings), resume=tmp_path / "split")
    assert first.losses + second.losses == straight.losses  # exact: same data, noise and arithmetic
    for name in ("", "ema"):
        a, b = weights(straight.checkpoint / name), weights(second.checkpoint / name)
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    assert second.progress.step == 4 and second.progress.micro_step == 8


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The MLX trainer commits checkpoints like the torch one: a save that fails midway (here the
    training state, written after the weights) leaves the previous checkpoint, `latest` and no
    leftovers, and the run still resumes from it."""
    data = make_class_folder(tmp_path / "images")
    out = tmp_path / "run"
    settings = dict(data=str(data), steps=4, save_every=1)
    train(run_config(TARFLOW_TINY, out, **settings), stop_at_step=1)
    before = weights(out / "checkpoints/step_00000001")
    real_save = mx.save_safetensors

    def disk_full(path, *args, **kwargs):
        if Path(path).name == "training_state.safetensors":
            raise OSError("No space left on device")
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(mx, "save_safetensors", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(run_config(TARFLOW_TINY, out, **settings), resume=out)
    monkeypatch.undo()
    checkpoints = out / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_00000001"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000001"]  # no leftovers
    after = weights(checkpoints / "step_00000001")
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert train(run_config(TARFLOW_TINY, out, **settings), resume=out).progress.step == 4


def test_command_line_training_is_exact_on_openblas_with_two_threads(tmp_path):
    """What "exact" means for the MLX trainer: on one machine with one BLAS, a run stopped and
    resumed gives the losses, gradient norms and weights of an uninterrupted run, bit for bit.
    The suite's other MLX tests run on MLX's bundled single-threaded BLAS; this one runs the
    command line as users do (the system OpenBLAS on Linux, command_setup) with 2 threads, on
    products large enough for OpenBLAS to split them (128 rows x 64 x 192: over its 262144
    multiply-add threshold for one thread)."""
    data = make_class_folder(tmp_path / "images", per_class=8)
    model = dict(TARFLOW_TINY, channels=64, head_dim=32)
    settings = overrides(
        model, data=str(data), steps=6, batch_size=8, grad_accum=2, drop_label=0.3, ema_decay=0.9
    )
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}

    def command(out: Path, *extra: str) -> None:
        arguments = [arg for item in [*settings, f"train.out_dir={out}"] for arg in ("--set", item)]
        completed = subprocess.run(
            [sys.executable, "-m", "starflow_mlx.train", *arguments, *extra],
            cwd=REPO,
            env=environment,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]

    command(tmp_path / "straight")
    command(tmp_path / "split", "--stop-at-step", "3")
    command(tmp_path / "split", "--resume", str(tmp_path / "split"))
    straight, split = read_log(tmp_path / "straight"), read_log(tmp_path / "split")
    assert [r["step"] for r in split] == [r["step"] for r in straight] == list(range(1, 7))
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in split] == [r[key] for r in straight], key
    last = "checkpoints/step_00000006"
    for name in ("", "ema"):
        a, b = weights(tmp_path / "straight" / last / name), weights(tmp_path / "split" / last / name)
        assert all(np.array_equal(a[k], b[k]) for k in a), name


def test_captioned_folder_with_the_t5_encoder(tmp_path):
    data = make_caption_folder(tmp_path / "images", count=8)
    t5 = tmp_path / "t5"
    make_tiny_t5_folder(t5)
    d_model = json.loads((t5 / "config.json").read_text())["d_model"]
    model = dict(STARFLOW_TINY, in_channels=3, img_size=8, patch_size=2, txt_dim=d_model)
    result = train(
        run_config(
            model,
            tmp_path / "run",
            data=str(data),
            text_encoder=str(t5),
            steps=2,
            drop_label=0.5,
            sample_every=2,
            sample_count=4,
            sample_guidance=1.5,
        )
    )
    assert result.progress.step == 2 and np.isfinite(result.losses).all()
    assert (tmp_path / "run/samples/step_00000002.png").is_file()


def test_latent_shards_from_the_torch_encoder(tmp_path):
    shards = encode_caption_shards(tmp_path / "data", buckets=True)
    settings = dict(data=str(shards), steps=3, buckets=True, latent_norm_reg=1e-3, drop_label=0.3)
    result = train(run_config(STARFLOW_TINY, tmp_path / "run", **settings))
    log = read_log(tmp_path / "run")
    assert all(r["loss"] > r["flow_loss"] for r in log)  # the latent-norm regulariser is added
    assert result.progress.samples_seen == 12


def test_corrupt_images_are_counted_not_fatal(tmp_path):
    data = make_class_folder(tmp_path / "images", per_class=4)
    (data / "class_0" / "broken.png").write_bytes(b"not a png")
    result = train(run_config(TARFLOW_TINY, tmp_path / "run", data=str(data), steps=6))
    assert result.progress.corrupt_images >= 1 and np.isfinite(result.losses).all()


def test_grey_images_for_one_channel_models(tmp_path):
    folder = tmp_path / "grey" / "seven"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    model = dict(TARFLOW_TINY, in_channels=1, num_classes=1)
    result = train(run_config(model, tmp_path / "run", data=str(tmp_path / "grey"), steps=2))
    assert StarFlow.from_pretrained(result.checkpoint).config.in_channels == 1


def test_a_torch_checkpoint_is_refused_with_the_fix(tmp_path):
    from starflow_torch.training import train as torch_train

    data = make_class_folder(tmp_path / "images")
    torch_result = torch_train(run_config(TARFLOW_TINY, tmp_path / "torch", data=str(data), steps=1))
    with pytest.raises(FileNotFoundError, match="init_weights"):
        train(run_config(TARFLOW_TINY, tmp_path / "mlx", data=str(data), steps=2), resume=tmp_path / "torch")
    # its weights start an MLX run
    result = train(
        run_config(
            TARFLOW_TINY,
            tmp_path / "mlx",
            data=str(data),
            steps=1,
            init_weights=str(torch_result.checkpoint),
            lr=1e-6,
            min_lr=1e-6,
        )
    )
    a, b = weights(torch_result.checkpoint), weights(result.checkpoint)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-3


def test_command_line_errors_name_the_problem(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "starflow_mlx.train", "--set", "model.preset=tiny", "--data", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert completed.returncode != 0
    assert "encode it first" in completed.stderr  # a latent model given an image folder


def test_mlx_encoder_writes_the_torch_encoders_shards(tmp_path):
    """Same index and arrays from both twins' encoders (fp32 shards; tiny diffusers VAE, T5).

    Tolerance 1e-5 absolute: the MLX VAE and T5 match diffusers / transformers to a few 1e-6
    (tests/test_vae.py, tests/test_text.py).
    """
    from safetensors.numpy import load_file

    from starflow_mlx.text import TextEncoder
    from starflow_mlx.training.encode import encode_dataset
    from starflow_mlx.vae import AutoencoderKL
    from starflow_torch.text import TextEncoder as TorchTextEncoder
    from starflow_torch.training.encode import encode_dataset as torch_encode_dataset
    from starflow_torch.vae import AutoencoderKL as TorchAutoencoderKL

    images = make_caption_folder(tmp_path / "images", count=7, sizes=((8, 8), (16, 9)))
    make_tiny_vae_folder(tmp_path / "vae")
    make_tiny_t5_folder(tmp_path / "t5")
    options = dict(image_size=8, txt_size=4, multiple=2, buckets=True, batch_size=3, shard_size=2)
    mlx_index = encode_dataset(
        images,
        tmp_path / "mlx",
        AutoencoderKL.from_pretrained(tmp_path / "vae"),
        TextEncoder.from_pretrained(tmp_path / "t5"),
        dtype=mx.float32,
        **options,
    )
    torch_index = torch_encode_dataset(
        images,
        tmp_path / "torch",
        TorchAutoencoderKL.from_pretrained(tmp_path / "vae"),
        TorchTextEncoder.from_pretrained(tmp_path / "t5"),
        dtype=torch.float32,
        **options,
    )
    assert mlx_index == torch_index
    for shard in [*(s["file"] for s in mlx_index["shards"]), mlx_index["null_text"]]:
        got, want = load_file(str(tmp_path / "mlx" / shard)), load_file(str(tmp_path / "torch" / shard))
        assert set(got) == set(want), shard
        for key in want:
            assert got[key].dtype == want[key].dtype, (shard, key)
            np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=f"{shard} {key}")

    d_model = mlx_index["txt_dim"]
    model = dict(STARFLOW_TINY, txt_dim=d_model)
    result = train(run_config(model, tmp_path / "run", data=str(tmp_path / "mlx"), steps=2, buckets=True))
    assert result.progress.step == 2 and np.isfinite(result.losses).all()
