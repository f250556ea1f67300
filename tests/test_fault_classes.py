"""Faults at the library level: the classes of fault behind the command-line cases of
tests/test_faults.py (staging and swaps, pruning, labels, image modes, metadata, config types,
non-finite updates, unreadable images, failed writes), each broken on purpose once to see it fail.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers.fault_workspace import make_image_modes
from helpers.tiny_pipeline import TINY_LABEL_FLOW, make_flow_folder
from helpers.training import TARFLOW_TINY, make_caption_folder, make_class_folder, overrides

import starflow_mlx
import starflow_torch
from starflow_core.config import FlowConfig
from starflow_core.generation.settings import GenerationSettings
from starflow_core.sources.pipeline_folder import PipelineParts, write_pipeline_folder
from starflow_core.staging import remove_stale_staging, staged_folder, staging_path
from starflow_core.training.config import TrainConfig, load_run_config
from starflow_core.training.files import LATEST_NAME, commit_checkpoint
from starflow_core.training.image_folders import ImageFolder


def test_a_swap_cut_short_puts_the_previous_version_back(tmp_path):
    """kill -9 between the swap's two renames: the next run restores the previous folder."""
    target = tmp_path / "flow"
    old = staging_path(target, "old").with_name(f".flow.old-{socket.gethostname()}-999999999")
    old.mkdir()
    (old / "config.json").write_text("{}")
    remove_stale_staging(tmp_path)
    assert (target / "config.json").read_text() == "{}" and not old.exists()


def test_a_failed_staged_write_leaves_the_old_folder(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(OSError), staged_folder(target, overwrite=True) as staging:
        (staging / "keep.txt").write_text("new")
        raise OSError(28, "No space left on device")
    assert (target / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left
    # the swap itself fails after the old folder was moved aside: it is moved back
    real, calls = os.replace, []

    def second_rename_fails(source, destination):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(source, destination)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError), staged_folder(target, overwrite=True) as staging:
        (staging / "keep.txt").write_text("new")
    monkeypatch.undo()
    assert (target / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with staged_folder(target, overwrite=True) as staging:
        (staging / "keep.txt").write_text("new")
    assert (target / "keep.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_existing_folder_is_refused_without_overwrite(tmp_path):
    """The library functions themselves refuse an existing folder (the commands check first,
    which would hide a check that looked at files only), and leave it and its parent as they were."""
    target = tmp_path / "out"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "keep.txt").write_text("old")
    linked = tmp_path / "linked"  # a symlink to a folder is an existing output too
    linked.symlink_to(target, target_is_directory=True)
    for existing in (target, linked):
        before = sorted(p.name for p in tmp_path.iterdir())
        refused = pytest.raises(FileExistsError, match="already exists; pass --overwrite")
        with refused, staged_folder(existing) as staging:
            (staging / "keep.txt").write_text("new")
        assert tree(target) == {"sub/keep.txt": b"old"} and linked.resolve() == target
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no staging folder left

    flow = make_flow_folder(tmp_path / "parts" / "flow", TINY_LABEL_FLOW)
    parts = PipelineParts(name="tiny", transformer=flow, labels=("a", "b", "c"))
    with pytest.raises(FileExistsError, match="already exists"):
        write_pipeline_folder(parts, target)
    assert tree(target) == {"sub/keep.txt": b"old"}
    written = write_pipeline_folder(parts, target, overwrite=True)  # and with overwrite, it is replaced
    assert tree(target).keys() == {str(p.relative_to(target)) for p in written}


def test_pruning_sorts_by_step_number_and_keeps_latest(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step_9", "step_00000010", "step_00000100"):  # an unpadded old name sorts wrongly by name
        (root / name).mkdir(parents=True)

    def write(folder: Path) -> None:
        folder.mkdir()

    commit_checkpoint(tmp_path, 101, {}, write, keep=2)
    assert sorted(p.name for p in root.iterdir()) == [LATEST_NAME, "step_00000100", "step_00000101"]
    # a resumed earlier step is the newest checkpoint: `latest` names it, and it is never pruned
    commit_checkpoint(tmp_path, 50, {}, write, keep=1)
    assert (root / LATEST_NAME).read_text().strip() == "step_00000050" and (root / "step_00000050").is_dir()


def test_labels_out_of_range_are_refused_by_both_twins():
    mlx_model, torch_model = starflow_mlx.StarFlow(TINY_LABEL_FLOW), starflow_torch.StarFlow(TINY_LABEL_FLOW)
    x_mlx, x_torch = mx.zeros((1, 8, 8, 3)), torch.zeros(1, 3, 8, 8)
    for label in (12, 3, -2):  # 3 classes: 0..2, and -1 (the null label)
        with pytest.raises(ValueError, match=r"class labels must be 0\.\.2"):
            mlx_model.log_prob(x_mlx, mx.array([label]))
        with pytest.raises(ValueError, match=r"class labels must be 0\.\.2"):
            mlx_model.sample(x_mlx, mx.array([label]))
        with pytest.raises(ValueError, match=r"class labels must be 0\.\.2"):
            torch_model.log_prob(x_torch, torch.tensor([label]))
    assert np.isfinite(np.array(mlx_model.log_prob(x_mlx, mx.array([2])))).all()
    assert torch.isfinite(torch_model.log_prob(x_torch, torch.tensor([-1]))).all()


def test_image_modes_convert_correctly_or_are_refused_by_name(tmp_path):
    make_image_modes(tmp_path / "modes")
    for channels, red in ((1, 60), (3, 200)):  # red 200 is grey round(0.299 * 200) = 60
        folder = ImageFolder(tmp_path, "none", 8, 2, channels=channels)
        names = [p.name for p in folder.files]
        pixels = {n: folder.read_pixels(i, False) for i, n in enumerate(names)}
        to_byte = lambda a: np.round((a[..., 0] + 1) * 127.5)  # [-1, 1] back to 0..255
        assert np.all(to_byte(pixels["grey16.png"]) == 128)  # 32896 / 257, not saturated to 255
        for name in ("rgba.png", "palette.png"):
            assert np.all(to_byte(pixels[name])[:3] == 255) and np.all(to_byte(pixels[name])[5:] == red), name
        assert pixels["float.tif"] is None
        assert "32-bit float image" in folder.why_unreadable(names.index("float.tif"))


@pytest.mark.parametrize(
    "line, message",
    [
        (b'{"file_name": 123, "text": "a"}', "'file_name' must be a file name string"),
        (b'{"file_name": "0.png", "text": "caf\xe9"}', "line 2 is not UTF-8"),
        (b'{"file_name": "../../etc/hostname", "text": "a"}', "leaves the data set folder"),
        (b'{"file_name": "/etc/hostname", "text": "a"}', "leaves the data set folder"),
    ],
    ids=["number", "latin-1", "dot-dot", "absolute"],
)
def test_metadata_faults_name_the_line(line, message, tmp_path):
    folder = make_caption_folder(tmp_path / "data", count=2)
    metadata = folder / "metadata.jsonl"
    first = metadata.read_bytes().splitlines()[0]
    metadata.write_bytes(first + b"\n" + line + b"\n")
    with pytest.raises(ValueError, match=message) as info:
        ImageFolder(folder, "text", 8, 2)
    assert f"{metadata}, line 2" in str(info.value)


def test_wrong_types_are_named_and_lossless_conversions_made():
    assert FlowConfig(rope=1, sos=0, layers_per_block=[2], num_blocks=2).layers_per_block == (2, 2)
    config = TrainConfig(data="x", lr="1e-4", steps=1e3, betas=[0.9, 0.99])
    assert (config.lr, config.steps, config.betas) == (1e-4, 1000, (0.9, 0.99))
    for make, message in [
        (lambda: FlowConfig(channels="128"), "FlowConfig.channels='128': must be an integer"),
        (lambda: FlowConfig(rope="yes"), "FlowConfig.rope='yes': must be true or false"),
        (
            lambda: FlowConfig(quantization=[4]),
            "FlowConfig.quantization=\\[4\\]: must be a list of 2 integers",
        ),
        (lambda: TrainConfig(data="x", steps=2.5), "TrainConfig.steps=2.5: must be an integer"),
        (lambda: TrainConfig(data="x", flip="no"), "TrainConfig.flip='no': must be true or false"),
        (lambda: TrainConfig(data=3), "TrainConfig.data=3: must be a string"),
        (lambda: GenerationSettings(guidance=float("inf")), "GenerationSettings.guidance=inf"),
    ]:
        with pytest.raises(ValueError, match=message):
            make()


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_weights_made_non_finite_by_an_update_stop_the_run_unsaved(twin, tmp_path, monkeypatch):
    data = make_class_folder(tmp_path / "images")
    settings = [
        *overrides(TARFLOW_TINY, data=str(data), steps=3, save_every=1),
        f"train.out_dir={tmp_path / 'run'}",
    ]
    if twin == "mlx":
        import mlx.optimizers as optim

        from starflow_mlx.training import train

        real = optim.AdamW.update

        def poisoned(self, model, gradients):
            real(self, model, gradients)
            if int(self.step.item()) == 2:
                block = model.blocks[0]
                block.proj_in.weight = block.proj_in.weight * float("inf")

        monkeypatch.setattr(optim.AdamW, "update", poisoned)
    else:
        from starflow_torch.training import train

        real = torch.optim.AdamW.step

        def poisoned(self, *args, **kwargs):
            out = real(self, *args, **kwargs)
            if self.state[self.param_groups[0]["params"][0]]["step"] == 2:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("nan"))
            return out

        monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    with pytest.raises(
        ValueError, match="update of step 2 .* made some weights NaN or infinite; they were not saved"
    ):
        train(load_run_config(None, settings))
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert saved == [LATEST_NAME, "step_00000001"]  # the bad weights of step 2 never reached disk


def test_a_step_without_a_readable_image_makes_no_update(tmp_path, monkeypatch, capsys):
    from starflow_torch.training import train
    from starflow_torch.training.inputs import InputBuilder

    data = make_class_folder(tmp_path / "images")
    real = InputBuilder.__call__

    def unreadable(self, batch, micro_step):
        inputs = real(self, batch, micro_step)
        inputs.weight = 0.0 if micro_step == 1 else inputs.weight  # as if all of step 2 failed to decode
        return inputs

    monkeypatch.setattr(InputBuilder, "__call__", unreadable)
    out = tmp_path / "run"
    result = train(
        load_run_config(None, [*overrides(TARFLOW_TINY, data=str(data), steps=3), f"train.out_dir={out}"])
    )
    assert result.progress.skipped_steps == 1
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in log] == [0, 1, 1]


def test_skipped_images_are_named_on_the_console(tmp_path, capsys):
    from starflow_torch.training import train

    data = make_class_folder(tmp_path / "images", per_class=4)
    (data / "class_0" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    result = train(
        load_run_config(
            None, [*overrides(TARFLOW_TINY, data=str(data), steps=3, batch_size=9), f"train.out_dir={out}"]
        )
    )
    assert result.progress.corrupt_images == 3  # every step reads all nine files
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2  # steps 1 and 2 (1 and 2 skipped so far), then not until 4
    assert all("class_0/broken.png cannot be decoded" in line for line in warnings)


def test_a_read_only_out_dir_is_named_with_the_fix(tmp_path, monkeypatch):
    """As root a chmod does not stop writes, so the refusal of the file system is simulated."""
    from starflow_core.training.run_folder import prepare_out_dir

    def read_only(self, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(
        PermissionError, match=r"cannot write to train.out_dir=.*\(Permission denied\); choose"
    ):
        prepare_out_dir(tmp_path / "run")


def test_a_failed_weights_write_is_an_oserror_in_both_twins(tmp_path, monkeypatch):
    """safetensors and MLX report a full disk in their own exception types; our savers say OSError,
    which the commands report in one line (a traceback before)."""
    import safetensors
    import safetensors.torch

    def torch_full(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr(safetensors.torch, "save_file", torch_full)
    with pytest.raises(OSError, match="File too large"):
        starflow_torch.StarFlow(TINY_LABEL_FLOW).save_pretrained(tmp_path / "torch")

    def mlx_full(*args, **kwargs):
        raise RuntimeError("[write] Unable to write 4365 bytes to file.")

    monkeypatch.setattr(mx, "save_safetensors", mlx_full)
    with pytest.raises(OSError, match="Unable to write"):
        starflow_mlx.StarFlow(TINY_LABEL_FLOW).save_pretrained(tmp_path / "mlx")
    assert not [p for p in (tmp_path / "mlx").iterdir() if p.name.startswith(".")]  # no half-written file
