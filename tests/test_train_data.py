"""Training data and bookkeeping: sharding, buckets, encoding, and every user error we can name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.training import (
    STARFLOW_TINY,
    TARFLOW_TINY,
    encode_caption_shards,
    make_caption_folder,
    make_class_folder,
    overrides,
    read_log,
)
from safetensors.torch import load_file

from starflow_core.training.config import TrainConfig
from starflow_torch import StarFlow
from starflow_torch.data import (
    ImageFolderDataset,
    LatentShardDataset,
    SampleRef,
    ShardedBatchSampler,
    aspect_ratio_to_size,
    collate,
    epoch_batches,
)
from starflow_torch.training import load_run_config, train


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared CPU
    yield
    torch.set_num_threads(previous)


# ----- batching -------------------------------------------------------------------------
def test_processes_share_each_global_batch_without_overlap():
    buckets = ["1:1"] * 20
    batches = epoch_batches(buckets, 4, seed=3, epoch=0, flip=True)
    assert len(batches) == 5
    shares = [list(ShardedBatchSampler(batches, rank, 2)) for rank in range(2)]
    for step, batch in enumerate(batches):
        together = shares[0][step] + shares[1][step]
        assert together == batch  # rank 0 then rank 1: exactly the one-process batch
        assert not {r.index for r in shares[0][step]} & {r.index for r in shares[1][step]}
    all_indices = sorted(r.index for batch in batches for r in batch)
    assert all_indices == list(range(20))
    assert epoch_batches(buckets, 4, 3, 0, True) == batches  # deterministic per (seed, epoch)
    assert epoch_batches(buckets, 4, 3, 1, True) != batches
    assert list(ShardedBatchSampler(batches, 1, 2, start=3)) == shares[1][3:]  # resume position


def test_buckets_group_batches_by_aspect_ratio(tmp_path):
    folder = make_caption_folder(tmp_path, count=8, sizes=((8, 8), (16, 9)))
    dataset = ImageFolderDataset(folder, "text", 8, 2, buckets=True)
    assert set(dataset.buckets) == {"1:1", "16:9"}
    for batch in epoch_batches(dataset.buckets, 2, 0, 0, False):
        assert len({dataset.buckets[r.index] for r in batch}) == 1
    wide = dataset[SampleRef(1, False, 0)]["image"]
    assert wide.shape == (3, *aspect_ratio_to_size(8, "16:9", 2)) == (3, 6, 10)
    assert wide.min() >= -1 and wide.max() <= 1


def test_encoded_shards_hold_latents_text_and_null_prompt(tmp_path):
    shards = encode_caption_shards(tmp_path, count=7, sizes=((8, 8), (16, 9)), buckets=True)
    index = json.loads((shards / "index.json").read_text())
    assert index["count"] == 7 and index["txt_dim"] == STARFLOW_TINY["txt_dim"]
    assert all(s["count"] <= 5 for s in index["shards"])  # shard_size=5
    dataset = LatentShardDataset(shards)
    item = dataset[SampleRef(0, False, 0)]
    assert item["latent"].shape[0] == 4 and item["text_features"].shape == (4, 8)
    assert torch.equal(dataset.null_text, torch.zeros(4, 8))  # "" has no tokens: all padding rows
    first = load_file(str(shards / index["shards"][0]["file"]))
    assert first["mask"].sum(1).tolist() == (first["text"].abs().sum(-1) > 0).sum(1).tolist()


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    folder = make_class_folder(tmp_path / "images", classes=2, per_class=2)
    (folder / "class_1" / "broken.png").write_bytes(b"\x89PNG not really an image")
    items = [ImageFolderDataset(folder, "label", 8, 2)[SampleRef(i, False, i)] for i in range(5)]
    batch = collate(items)
    assert batch["corrupt"] == 1 and batch["image"].shape[0] == 4 and batch["valid"]
    only_broken = collate([items[i] for i in range(5) if items[i]["corrupt"]])
    assert not only_broken["valid"] and only_broken["image"].shape[0] == 1  # a weight-0 placeholder
    out = tmp_path / "run"
    result = train(
        load_run_config(
            None, [*overrides(TARFLOW_TINY, data=str(folder), steps=2, batch_size=5), f"train.out_dir={out}"]
        )
    )
    assert result.progress.corrupt_images == 2  # one per step: every step reads all five files
    assert read_log(out)[-1]["corrupt_images"] == 2


# ----- user errors ----------------------------------------------------------------------
def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolderDataset(tmp_path / "empty", "none", 8, 2)
    with pytest.raises(ValueError, match="no class subfolders"):
        train(
            load_run_config(
                None, [*overrides(TARFLOW_TINY, data=str(tmp_path / "empty")), f"train.out_dir={tmp_path}"]
            )
        )


def test_metadata_line_without_text_names_the_line(tmp_path):
    folder = make_caption_folder(tmp_path, count=3)
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"file_name": "1.png"})
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 2 \(1.png\) has no 'text'"):
        ImageFolderDataset(folder, "text", 8, 2)


def test_unknown_config_keys_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown train keys \['learning_rate'\]"):
        load_run_config(None, ["model.preset=tiny", "train.data=x", "train.learning_rate=1"])
    with pytest.raises(ValueError, match="unknown FlowConfig keys"):
        load_run_config(None, ["model.preset=tiny", "model.chanels=3", "train.data=x"])
    run_file = tmp_path / "run.yaml"
    run_file.write_text("model: tiny\ntrain: {data: x}\noptimizer: {}\n")
    with pytest.raises(ValueError, match="unknown top-level keys"):
        load_run_config(run_file)
    with pytest.raises(ValueError, match="TrainConfig.batch_size=6: must be divisible by grad_accum=4"):
        TrainConfig(data="x", batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="TrainConfig.lr='fast': must be a number"):
        TrainConfig(data="x", lr="fast")


def test_exponents_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-4 as a string; run files and --set both accept it as a number."""
    run_file = tmp_path / "run.yaml"
    run_file.write_text("model: tiny\ntrain: {data: x, lr: 1e-4, min_lr: 1e-6}\n")
    run = load_run_config(run_file, ["train.weight_decay=1e-2"])
    assert (run.train.lr, run.train.min_lr, run.train.weight_decay) == (1e-4, 1e-6, 1e-2)


def test_resume_with_a_different_config_is_refused(tmp_path):
    data = make_class_folder(tmp_path / "images")
    settings = [*overrides(TARFLOW_TINY, data=str(data), steps=1), f"train.out_dir={tmp_path / 'run'}"]
    train(load_run_config(None, settings))
    with pytest.raises(ValueError, match=r"model.channels: checkpoint 32, now 64(.|\n)*train.batch_size"):
        changed = [*settings, "model.channels=64", "model.head_dim=32", "train.batch_size=8"]
        train(load_run_config(None, changed), resume=tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        train(load_run_config(None, settings), resume=tmp_path / "nowhere")


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    data = make_class_folder(tmp_path / "images")
    out = tmp_path / "run"
    settings = [*overrides(TARFLOW_TINY, data=str(data), steps=4, save_every=1), f"train.out_dir={out}"]
    train(load_run_config(None, settings), stop_at_step=1)
    before = load_file(str(out / "checkpoints/step_00000001/model.safetensors"))

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)  # weights are written first, then this fails
    with pytest.raises(OSError, match="No space left"):
        train(load_run_config(None, settings), resume=out)
    monkeypatch.undo()
    checkpoints = out / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_00000001"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000001"]  # no leftovers
    after = StarFlow.from_pretrained(checkpoints / "step_00000001").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    resumed = train(load_run_config(None, settings), resume=out)  # and it still resumes
    assert resumed.progress.step == 4


def test_latent_model_on_an_image_folder_says_encode_first(tmp_path):
    folder = make_caption_folder(tmp_path / "images", count=2)
    with pytest.raises(ValueError, match="encode_dataset"):
        train(
            load_run_config(None, [*overrides(STARFLOW_TINY, data=str(folder)), f"train.out_dir={tmp_path}"])
        )


def test_shards_from_an_unfinished_encoding_are_refused(tmp_path):
    shards = encode_caption_shards(tmp_path)
    (shards / "index.json").unlink()
    with pytest.raises(FileNotFoundError, match="index.json"):
        LatentShardDataset(Path(shards))


def test_non_finite_loss_skips_the_update_and_counts_it(tmp_path, monkeypatch):
    import starflow_torch.training.inputs as inputs

    real_augment = inputs.augment
    calls = []

    def poisoned(x, *args):  # the second micro-batch becomes NaN
        calls.append(1)
        out = real_augment(x, *args)
        return out * float("nan") if len(calls) == 2 else out

    monkeypatch.setattr(inputs, "augment", poisoned)
    data = make_class_folder(tmp_path / "images")
    out = tmp_path / "run"
    result = train(
        load_run_config(None, [*overrides(TARFLOW_TINY, data=str(data), steps=3), f"train.out_dir={out}"])
    )
    assert result.progress.skipped_steps == 1 and result.progress.step == 3
    log = read_log(out)
    assert [r["skipped_steps"] for r in log] == [0, 1, 1]
    weights = load_file(str(result.checkpoint / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
