"""Held-out evaluation inside both trainers: every train.eval_every steps, exact bits/dim of the
held-out folder on the weights samples use (the EMA), FID against given statistics, logged to
eval.jsonl and plotted beside the loss."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers.training import TARFLOW_TINY, make_class_folder, overrides
from PIL import Image

from starflow_core.evaluation.digit_features import DigitFeatures
from starflow_core.evaluation.metrics import FeatureStatistics
from starflow_core.training.config import load_run_config


def held_out_folder(root, per_class: int = 3):
    rng = np.random.default_rng(7)  # not the training images (make_class_folder draws from seed 0)
    for label in range(2):
        (root / f"class_{label}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                root / f"class_{label}/{i}.png"
            )
    return root


def bits_by_hand(twin: str, folder, held) -> float:
    """Mean exact bits/dim of the held-out images (no training noise here) under a checkpoint."""
    paths = sorted(held.rglob("*.png"))
    x = np.stack([np.asarray(Image.open(p), np.float32) / 127.5 - 1 for p in paths])  # (N, 8, 8, 3)
    labels = np.array([int(p.parent.name[-1]) for p in paths])
    if twin == "mlx":
        from starflow_mlx import StarFlow

        return float(
            np.mean(np.array(StarFlow.from_pretrained(folder).bits_per_dim(mx.array(x), mx.array(labels))))
        )
    from starflow_torch import StarFlow

    model = StarFlow.from_pretrained(folder)
    with torch.no_grad():
        bits = model.bits_per_dim(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels))
    return float(bits.mean())


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_trainers_evaluate_held_out_data_every_n_steps(twin, tmp_path):
    data = make_class_folder(tmp_path / "train", per_class=4, size=(8, 8))
    held = held_out_folder(tmp_path / "held")  # 6 images: batches of 4 and 2 would drop 2; 3 + 3
    reference = tmp_path / "reference.npz"
    real = np.random.default_rng(3).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    FeatureStatistics.of(DigitFeatures.load()(real)[0]).save(reference)
    settings = dict(
        data=str(data),
        steps=4,
        batch_size=3,
        noise_std=0.0,  # the held-out bits/dim can then be recomputed exactly below
        eval_every=2,
        eval_data=str(held),
        eval_reference=str(reference),
        eval_samples=6,
        ema_decay=0.5,
    )
    run = load_run_config(None, [*overrides(TARFLOW_TINY, **settings), f"train.out_dir={tmp_path / 'run'}"])
    if twin == "mlx":
        from starflow_mlx.training import train
    else:
        from starflow_torch.training import train
    result = train(run)

    records = [json.loads(line) for line in (tmp_path / "run/eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    last = records[-1]
    assert last["eval_images"] == 6  # every held-out image, once
    assert last["eval_bits_per_dim_low"] < last["eval_bits_per_dim"] < last["eval_bits_per_dim_high"]
    # the EMA weights (what samples use), on the held-out folder: fp32 forward passes, 1e-4 relative
    want = bits_by_hand(twin, result.checkpoint / "ema", held)
    assert last["eval_bits_per_dim"] == pytest.approx(want, rel=1e-4)
    assert want != pytest.approx(
        bits_by_hand(twin, result.checkpoint, held), rel=1e-4
    )  # EMA differs from raw
    assert np.isfinite(last["eval_fid"]) and last["eval_fid"] > 0
    assert (tmp_path / "run/evaluation.png").is_file()


@pytest.mark.slow  # two processes under torchrun
def test_under_fsdp_the_main_process_evaluates_what_one_process_does(tmp_path):
    from test_train import set_args, torchrun

    from starflow_torch.training import train

    data = make_class_folder(tmp_path / "train", per_class=4, size=(8, 8))
    held = held_out_folder(tmp_path / "held")
    reference = tmp_path / "reference.npz"
    FeatureStatistics.of(
        DigitFeatures.load()(np.random.default_rng(3).integers(0, 256, (40, 8, 8, 3), np.uint8))[0]
    ).save(reference)
    settings = dict(data=str(data), steps=2, batch_size=4, eval_every=2, eval_data=str(held), ema_decay=0.5)
    settings.update(eval_reference=str(reference), eval_samples=6)
    common = overrides(TARFLOW_TINY, **settings)
    train(load_run_config(None, [*common, f"train.out_dir={tmp_path / 'one'}"]))
    # the full weights are gathered on every process (a collective), the main one evaluates
    torchrun(set_args([*common, f"train.out_dir={tmp_path / 'fsdp'}", "train.parallel=fsdp"]), nproc=2)
    one, fsdp = (
        [json.loads(line) for line in (tmp_path / name / "eval.jsonl").read_text().splitlines()]
        for name in ("one", "fsdp")
    )
    assert [r["step"] for r in fsdp] == [r["step"] for r in one] == [2]
    # weights differ by float32 rounding of two half-batch gradients (~2e-7, test_train.py)
    assert fsdp[0]["eval_bits_per_dim"] == pytest.approx(one[0]["eval_bits_per_dim"], rel=1e-5)
    assert fsdp[0]["eval_fid"] == pytest.approx(one[0]["eval_fid"], rel=1e-3)
