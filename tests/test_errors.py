"""Bad input gets a clear error naming the problem, and loses nothing."""

from __future__ import annotations

import os
import pickle
import re
import zipfile

import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import FIXTURES, load_vectors, to_nhwc
from helpers.twins import random_torch_model

import starflow_mlx
import starflow_torch
from starflow_core.config import FlowConfig
from starflow_core.official.arguments import resolve_config
from starflow_core.official.convert import convert_official_checkpoint
from starflow_core.official.keys import CheckpointMismatchError, UnexpectedTensorsWarning

CONFIG = FlowConfig(
    in_channels=3,
    img_size=8,
    patch_size=2,
    channels=32,
    num_blocks=2,
    layers_per_block=(1, 1),
    head_dim=16,
    rope=True,
    sos=True,
    use_softplus=True,
)
STARFLOW_TINY = FIXTURES / "starflow_tiny"


@pytest.mark.parametrize(
    "shape, message",
    [((1, 4, 8, 8), "channels"), ((1, 3, 7, 8), "divisible by patch_size"), ((3, 8, 8), "(B, C, H, W)")],
)
def test_torch_rejects_bad_image_shapes(shape, message):
    model = starflow_torch.StarFlow(CONFIG)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model(torch.zeros(shape))
    with pytest.raises(ValueError):
        model.sample(torch.zeros(shape))


@pytest.mark.parametrize(
    "shape, message", [((1, 8, 8, 4), "channels"), ((1, 8, 7, 3), "divisible by patch_size")]
)
def test_mlx_rejects_bad_image_shapes(shape, message):
    model = starflow_mlx.StarFlow(CONFIG)
    with pytest.raises(ValueError, match=message):
        model(mx.zeros(shape))


def test_wrong_text_shape_and_missing_null_prompt():
    model = starflow_torch.StarFlow.from_official(
        STARFLOW_TINY / "official.pth", STARFLOW_TINY / "config.json"
    )
    with pytest.raises(ValueError, match="txt_dim=32"):
        model(torch.zeros(2, 4, 8, 8), torch.zeros(2, 6, 31))
    with pytest.raises(ValueError, match="y_null"):
        model.sample(torch.zeros(2, 4, 8, 8), torch.zeros(2, 6, 32), guidance=2.0)
    with pytest.raises(ValueError, match="pass y"):
        model(torch.zeros(2, 4, 8, 8))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_pickled_code_is_refused_by_both_twins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"blocks.0.proj_in.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(ValueError, match="refused"):
        starflow_torch.StarFlow.from_official(path, STARFLOW_TINY / "config.json")
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        starflow_mlx.StarFlow.from_official(path, STARFLOW_TINY / "config.json")
    assert not (tmp_path / "pwned_marker").exists()


def _state_dict_with(change):
    state = torch.load(STARFLOW_TINY / "official.pth", weights_only=True)
    change(state)
    return state


@pytest.mark.parametrize(
    "change, names",
    [
        (lambda s: s.pop("blocks.1.proj_in.weight"), ["missing", "blocks.1.proj_in.weight"]),
        (lambda s: s.update({"blocks.9.extra": torch.zeros(2)}), ["unexpected", "blocks.9.extra"]),
        (
            lambda s: s.update({"blocks.0.proj_out.bias": torch.zeros(5)}),
            ["wrong shape", "blocks.0.proj_out.bias"],
        ),
    ],
    ids=["missing", "extra", "mis-shaped"],
)
def test_checkpoint_key_mismatches_are_listed(change, names, tmp_path):
    """With strict=True every mismatch is an error; missing and mis-shaped tensors always are."""
    path = tmp_path / "edited.pth"
    torch.save(_state_dict_with(change), path)
    config = STARFLOW_TINY / "config.json"
    for loader in (starflow_torch.StarFlow.from_official, starflow_mlx.StarFlow.from_official):
        with pytest.raises(CheckpointMismatchError) as info:
            loader(path, config, strict=True)
        for name in names:
            assert name in str(info.value)
        if names[0] != "unexpected":
            with pytest.raises(CheckpointMismatchError):
                loader(path, config)
    with pytest.raises(CheckpointMismatchError):
        convert_official_checkpoint(path, resolve_config(config), tmp_path / "out", strict=True)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_unexpected_tensors_warn_and_are_skipped(tmp_path):
    """The official sampler loads with strict=False: extra tensors are listed in a warning and the
    model loads exactly as without them, in both twins, in conversion and from our folders."""
    from safetensors.numpy import load_file, save_file

    extra = {"blocks.9.extra": torch.zeros(2), "ema_decay": torch.ones(1)}
    path = tmp_path / "extra.pth"
    torch.save(_state_dict_with(lambda s: s.update(extra)), path)
    config = STARFLOW_TINY / "config.json"
    _, vectors = load_vectors("starflow_tiny")
    x, y = to_nhwc(vectors["x"]), mx.array(vectors["y"])
    z_clean, _ = starflow_mlx.StarFlow.from_official(STARFLOW_TINY / "official.pth", config)(x, y)
    with pytest.warns(UnexpectedTensorsWarning, match=r"2 tensor\(s\).*blocks\.9\.extra, ema_decay"):
        z_mlx, _ = starflow_mlx.StarFlow.from_official(path, config)(x, y)
    assert np.array_equal(np.array(z_mlx), np.array(z_clean))
    with pytest.warns(UnexpectedTensorsWarning, match=r"blocks\.9\.extra, ema_decay"):
        starflow_torch.StarFlow.from_official(path, config)
    with pytest.warns(UnexpectedTensorsWarning, match="blocks.9.extra"):
        result = convert_official_checkpoint(path, resolve_config(config), tmp_path / "ours")
    assert {"blocks.9.extra", "ema_decay"} <= set(result["dropped"])
    assert "blocks.9.extra" not in load_file(tmp_path / "ours" / "model.safetensors")

    # one of our folders holding a tensor the model does not use
    weights = tmp_path / "ours" / "model.safetensors"
    save_file({**load_file(weights), "blocks.0.unused": np.zeros(3, np.float32)}, weights)
    for twin in (starflow_mlx, starflow_torch):
        with pytest.warns(UnexpectedTensorsWarning, match="blocks.0.unused"):
            twin.StarFlow.from_pretrained(tmp_path / "ours")
        with pytest.raises(CheckpointMismatchError, match="blocks.0.unused"):
            twin.StarFlow.from_pretrained(tmp_path / "ours", strict=True)


def test_truncated_safetensors_gives_a_clear_error(tmp_path):
    random_torch_model(CONFIG).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    for loader in (starflow_torch.StarFlow.from_pretrained, starflow_mlx.StarFlow.from_pretrained):
        with pytest.raises(ValueError, match="truncated"):
            loader(tmp_path)


@pytest.mark.parametrize("kept", [0.5, 0.99])
@pytest.mark.parametrize("twin", [starflow_mlx, starflow_torch], ids=["mlx", "torch"])
def test_truncated_pth_gives_a_clear_error(tmp_path, kept, twin):
    """A ValueError that names the file and what is wrong with it (not zipfile.BadZipFile)."""
    data = (STARFLOW_TINY / "official.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(path))} is (a truncated or corrupt zip|not a readable)"
    ):
        twin.StarFlow.from_official(path, STARFLOW_TINY / "config.json")


def test_corrupt_tensor_data_in_a_pth_gives_a_clear_error(tmp_path):
    """The torch-free reader checks each record's CRC: damaged tensor bytes name the file and storage."""
    path = tmp_path / "damaged.pth"
    path.write_bytes((STARFLOW_TINY / "official.pth").read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = max(
            (info for info in archive.infolist() if "/data/" in info.filename), key=lambda i: i.file_size
        )
        offset = (
            record.header_offset + 30 + len(record.filename) + len(record.extra)
        )  # local header: 30 bytes
    with open(path, "r+b") as handle:
        handle.seek(offset + record.file_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: storage \S+ is corrupt .*re-download"):
        starflow_mlx.StarFlow.from_official(path, STARFLOW_TINY / "config.json")


def test_failed_save_leaves_previous_files_intact(tmp_path, monkeypatch):
    model = random_torch_model(CONFIG)
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    import safetensors.torch

    def explode(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        random_torch_model(CONFIG, seed=1).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_mlx_failed_save_leaves_previous_files_intact(tmp_path, monkeypatch):
    random_torch_model(CONFIG).save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    model = starflow_mlx.StarFlow.from_pretrained(tmp_path)

    def explode(path, tensors, metadata=None):
        raise OSError("disk full")

    monkeypatch.setattr(mx, "save_safetensors", explode)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_mlx_and_torch_round_trip_our_format(tmp_path):
    torch_model = random_torch_model(CONFIG)
    torch_model.save_pretrained(tmp_path / "a")
    mlx_model = starflow_mlx.StarFlow.from_pretrained(tmp_path / "a")
    mlx_model.save_pretrained(tmp_path / "b")
    again = starflow_torch.StarFlow.from_pretrained(tmp_path / "b")
    for (name, p), (_, q) in zip(torch_model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    bf16 = tmp_path / "bf16"
    torch_model.save_pretrained(bf16, dtype=torch.bfloat16)
    loaded = starflow_mlx.StarFlow.from_pretrained(bf16)
    assert loaded.blocks[0].proj_in.weight.dtype == mx.bfloat16
    np.testing.assert_allclose(
        np.array(loaded.blocks[0].proj_in.weight.astype(mx.float32)),
        torch_model.blocks[0].proj_in.weight.detach().numpy(),
        atol=1e-2,
    )
