"""What one training step does, in both trainers, with parameters where a bug shows: the EMA
(decay 0.9, not 0.5 where an inverted update looks right), the learning rate of every step
against the schedule written out here, the condition dropout rate (labels and captions) and
the spread of the noise augmentation.

Rates measured on random draws use enough draws for a 6-sigma bound (a false failure about
once in 5e8 runs); the seeds are fixed, so a run is deterministic anyway.
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers.training import (
    STARFLOW_TINY,
    TARFLOW_TINY,
    StandInTextEncoder,
    make_caption_folder,
    make_class_folder,
    overrides,
    read_log,
)
from helpers.twins import random_torch_model
from safetensors.numpy import load_file

import starflow_mlx.training as mlx_training
import starflow_torch.training as torch_training
from starflow_core.training.config import TrainConfig, load_run_config, model_config_from
from starflow_mlx.training.inputs import InputBuilder as MlxInputBuilder
from starflow_torch.training.inputs import InputBuilder as TorchInputBuilder
from starflow_torch.training.parallel import EMA

TWINS = {"mlx": mlx_training, "torch": torch_training}
SIGMAS = 6  # bounds below: 6 standard deviations of the estimate


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is much faster than two on a CPU shared with other jobs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----- a short run per twin: EMA and learning rate ----------------------------------------------
LR, MIN_LR, WARMUP, STEPS, DECAY = 1e-2, 1e-3, 1, 4, 0.9


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Four steps of each trainer from the same random weights, a checkpoint after every step."""
    root = tmp_path_factory.mktemp("steps")
    data = make_class_folder(root / "images")
    settings = dict(data=str(data), steps=STEPS, warmup_steps=WARMUP, lr=LR, min_lr=MIN_LR, ema_decay=DECAY)
    settings.update(save_every=1, keep_checkpoints=STEPS + 1, init_weights=str(root / "init"))
    items = overrides(TARFLOW_TINY, **settings)
    random_torch_model(load_run_config(None, items).model, seed=3).save_pretrained(root / "init")
    for twin, training in TWINS.items():
        training.train(load_run_config(None, [*items, f"train.out_dir={root / twin}"]))
    return {twin: root / twin for twin in TWINS} | {"init": root / "init"}


def test_one_ema_update_at_decay_0_9_moves_a_tenth_of_the_way():
    """From 0 toward 1: 0.1 (an inverted update gives 0.9), then 0.19."""
    weight = torch.nn.Parameter(torch.zeros(3))
    ema = EMA({"w": weight}, DECAY)
    with torch.no_grad():
        weight.fill_(1.0)
    ema.update()
    torch.testing.assert_close(ema.shadow["w"], torch.full((3,), 0.1), rtol=0, atol=1e-7)  # fp32 rounding
    ema.update()
    torch.testing.assert_close(ema.shadow["w"], torch.full((3,), 0.19), rtol=0, atol=1e-7)


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_the_trainers_ema_moves_a_tenth_of_the_way_each_step(twin, runs):
    """ema_k = 0.9 ema_(k-1) + 0.1 w_k after every step, from ema_0 = the initial weights."""
    ema = load_file(str(runs["init"] / "model.safetensors"))
    for step in range(1, STEPS + 1):
        folder = runs[twin] / "checkpoints" / f"step_{step:08d}"
        weights, saved = (
            load_file(str(folder / "model.safetensors")),
            load_file(str(folder / "ema/model.safetensors")),
        )
        assert set(saved) == set(ema)
        moved = max(float(np.abs(weights[k] - ema[k]).max()) for k in ema)
        assert step == 1 or moved > 1e-3  # a step of lr >= 1e-3: an inverted decay is 0.8x that away
        ema = {k: DECAY * ema[k] + (1 - DECAY) * weights[k] for k in ema}
        for name, value in saved.items():
            # float32 rounding of weights below 1.5 in magnitude, over a few updates: ~1e-7
            np.testing.assert_allclose(
                value, ema[name], rtol=0, atol=1e-6, err_msg=f"{twin} {name} step {step}"
            )


def expected_learning_rates() -> list[float]:
    """The official warmup-cosine schedule for LR, MIN_LR, WARMUP=1 and STEPS=4, written out: the
    rate of the step that follows `k` steps taken, k = 0..3."""
    start = 1e-6  # min(MIN_LR, 1e-6): warmup starts here
    assert (WARMUP, STEPS) == (1, 4)
    return [
        start,  # k=0: the start of the warmup
        LR,  # k=1: the end of the warmup (k <= warmup_steps)
        MIN_LR + 0.5 * (1 + math.cos(math.pi * 1 / 3)) * (LR - MIN_LR),  # k=2: a third into the cosine
        MIN_LR + 0.5 * (1 + math.cos(math.pi * 2 / 3)) * (LR - MIN_LR),  # k=3: two thirds into it
    ]


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_each_steps_learning_rate_logged_and_applied_is_the_schedules(twin, runs):
    log = read_log(runs[twin])
    assert [record["step"] for record in log] == list(range(1, STEPS + 1))
    expected = expected_learning_rates()
    assert len(set(expected)) == STEPS  # a rate one step early or late differs from every one here
    assert [record["lr"] for record in log] == pytest.approx(expected, rel=1e-12)  # float64 both ways
    # and the rate the optimizer held for that update, as its checkpoint saved it
    for step in range(1, STEPS + 1):
        folder = runs[twin] / "checkpoints" / f"step_{step:08d}"
        if twin == "torch":
            state = torch.load(folder / "training_state.pt", weights_only=True)
            applied = state["optimizer"]["param_groups"][0]["lr"]
        else:
            applied = load_file(str(folder / "training_state.safetensors"))["optimizer.learning_rate"].item()
        assert applied == pytest.approx(expected[step - 1], rel=1e-6), (twin, step)  # MLX keeps float32


# ----- condition dropout -------------------------------------------------------------------------
ROWS, MICRO_STEPS, DROP = 4000, 5, 0.1
# 20,000 Bernoulli(0.1) draws: the count has standard deviation sqrt(20000 * 0.1 * 0.9) = 42.4, so
# 6 sigma is 255 drops around the expected 2,000 (a rate within 0.0127 of 0.1); 90% is 16,000 away.
DRAWS = ROWS * MICRO_STEPS
DROP_BOUND = SIGMAS * math.sqrt(DRAWS * DROP * (1 - DROP))


def builders(kind: str, train: TrainConfig, config, dataset, encoder=None) -> dict:
    mlx_encoder = None
    if encoder is not None:  # the stand-in's vectors as MLX arrays
        mlx_encoder = types.SimpleNamespace(encode=lambda p, n: mx.array(encoder.encode(p, n).numpy()))
    return {
        "mlx": MlxInputBuilder(config, train, dataset, mlx_encoder),
        "torch": TorchInputBuilder(config, train, dataset, torch.device("cpu"), encoder),
    }


def batch_for(twin: str, micro_step: int, extra: dict) -> dict:
    """Global micro-batch `micro_step` of ROWS rows: 1x1 images, slot i is row i."""
    rows = np.arange(ROWS)
    image = np.zeros((ROWS, 1, 1, 3), np.float32)
    batch = {"image": image, "slot": rows, "valid": True, "index": rows % 8, **extra}
    if twin == "torch":
        batch = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
        batch["image"] = batch["image"].permute(0, 3, 1, 2)
    return batch


def as_numpy(array) -> np.ndarray:
    return array.numpy() if isinstance(array, torch.Tensor) else np.array(array)


def count_dropped(twin: str, builder, extra: dict, is_null) -> int:
    dropped = 0
    for micro_step in range(MICRO_STEPS):
        y = as_numpy(builder(batch_for(twin, micro_step, extra), micro_step).y)
        dropped += int(is_null(y).sum())
    return dropped


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_label_dropout_drops_the_asked_share(twin):
    config = model_config_from(TARFLOW_TINY)
    train = TrainConfig(data="x", batch_size=ROWS, drop_label=DROP)
    builder = builders("labels", train, config, types.SimpleNamespace())[twin]
    labels = np.arange(ROWS) % 2
    y = as_numpy(builder(batch_for(twin, 0, {"label": labels}), 0).y)
    kept = y != -1
    np.testing.assert_array_equal(y[kept], labels[kept])  # a row keeps its label or gets the null one
    dropped = count_dropped(twin, builder, {"label": labels}, lambda y: y == -1)
    assert abs(dropped - DRAWS * DROP) <= DROP_BOUND, (twin, dropped / DRAWS)


@pytest.mark.parametrize("twin", ["mlx", "torch"])
@pytest.mark.parametrize("source", ["encoded", "captions"])
def test_caption_dropout_drops_the_asked_share(twin, source, tmp_path):
    """Encoded shards swap in the stored null prompt; captions read from a folder are encoded as ""."""
    config = model_config_from(STARFLOW_TINY)  # 4 text tokens of 8 features
    train = TrainConfig(data="x", batch_size=ROWS, drop_label=DROP)
    encoder = StandInTextEncoder(8)
    if source == "encoded":
        features = np.ones((ROWS, 4, 8), np.float32)
        null = np.zeros((4, 8), np.float32)
        dataset = types.SimpleNamespace(null_text=null if twin == "mlx" else torch.from_numpy(null))
        extra, builder = {"text_features": features}, builders("text", train, config, dataset)[twin]
    else:
        folder = make_caption_folder(tmp_path / "captions")  # 8 captions of 1 to 3 words: never ""
        if twin == "mlx":
            from starflow_mlx.data import ImageFolderDataset

            dataset = ImageFolderDataset(folder, "text", 8, 2, False, channels=3)
            extra = {}
        else:
            dataset = types.SimpleNamespace()
            lines = (folder / "metadata.jsonl").read_text().splitlines()
            captions = [json.loads(line)["text"] for line in lines]
            extra = {"text": [captions[i % 8] for i in range(ROWS)]}
        builder = builders("text", train, config, dataset, encoder)[twin]
    dropped = count_dropped(twin, builder, extra, lambda y: ~y.any(axis=(1, 2)))  # the null prompt: zeros
    assert abs(dropped - DRAWS * DROP) <= DROP_BOUND, (twin, source, dropped / DRAWS)


# ----- noise augmentation ----------------------------------------------------------------------
NOISE_ROWS, NOISE_STD = 2000, 0.2
# 2000 x 4 x 4 x 3 = 96,000 Gaussian draws: the sample standard deviation has a relative standard
# error 1 / sqrt(2 n) = 0.23%, so 6 sigma is 1.4% (the model's 0.05 is 75% away); the mean's is
# 0.2 / sqrt(n) = 6.5e-4, 6 sigma 3.9e-3.
NOISE_DRAWS = NOISE_ROWS * 4 * 4 * 3


def augmented(twin: str, train: TrainConfig, config, x: np.ndarray, micro_step: int = 0) -> np.ndarray:
    builder = builders("labels", train, config, types.SimpleNamespace())[twin]
    batch = {"image": x, "slot": np.arange(len(x)), "valid": True, "label": np.zeros(len(x), np.int64)}
    if twin == "torch":
        batch = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
        batch["image"] = batch["image"].permute(0, 3, 1, 2)
        return builder(batch, micro_step).x.permute(0, 2, 3, 1).numpy()
    return np.array(builder(batch, micro_step).x)


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_noise_augmentation_has_the_asked_spread(twin):
    """train.noise_std (0.2) replaces the model's (0.05); unset, the model's is used; 0, none."""
    config = model_config_from({**TARFLOW_TINY, "noise_std": 0.05})
    x = np.full((NOISE_ROWS, 4, 4, 3), 0.5, np.float32)
    for asked, spread in ((NOISE_STD, NOISE_STD), (None, 0.05)):
        train = TrainConfig(data="x", batch_size=NOISE_ROWS, noise_std=asked)
        noise = augmented(twin, train, config, x) - x
        assert abs(noise.std() / spread - 1) <= SIGMAS / math.sqrt(2 * NOISE_DRAWS), (
            twin,
            asked,
            noise.std(),
        )
        assert abs(noise.mean()) <= SIGMAS * spread / math.sqrt(NOISE_DRAWS), (twin, asked, noise.mean())
    # 0 asks for no noise at all (not for the model's)
    train = TrainConfig(data="x", batch_size=NOISE_ROWS, noise_std=0.0)
    np.testing.assert_array_equal(augmented(twin, train, config, x), x)


def test_the_twins_augment_and_score_a_batch_alike(monkeypatch, tmp_path):
    """Given the same standard normal draws (the twins' generators differ), both trainers' inputs
    make the same augmented batch (x + noise_std * eps, each row its own global row's draw) and
    the same loss on it."""
    from starflow_mlx import StarFlow as MlxStarFlow
    from starflow_mlx.training.objective import FlowObjective as MlxObjective
    from starflow_torch.training.objective import FlowObjective as TorchObjective

    config = model_config_from({**TARFLOW_TINY, "noise_std": 0.05})
    train = TrainConfig(data="x", batch_size=4, noise_std=NOISE_STD)
    rng = np.random.default_rng(0)
    eps = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)  # NHWC
    x = rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    monkeypatch.setattr(mx.random, "normal", lambda shape, key=None: mx.array(eps))
    monkeypatch.setattr(
        torch, "randn", lambda *a, generator=None, **k: torch.from_numpy(eps).permute(0, 3, 1, 2).contiguous()
    )
    got = {twin: augmented(twin, train, config, x) for twin in ("mlx", "torch")}
    monkeypatch.undo()  # the models below draw their own random numbers
    for twin, value in got.items():
        np.testing.assert_allclose(value, x + NOISE_STD * eps, rtol=0, atol=1e-6, err_msg=twin)  # fp32 add
    model = random_torch_model(config, seed=1)
    model.save_pretrained(tmp_path)
    labels = np.array([0, 1, 0, 1])
    torch_loss, _ = TorchObjective(model)(
        torch.from_numpy(got["torch"]).permute(0, 3, 1, 2), torch.from_numpy(labels)
    )
    mlx_loss, _ = MlxObjective()(
        MlxStarFlow.from_pretrained(tmp_path), mx.array(got["mlx"]), mx.array(labels)
    )
    assert abs(mlx_loss.item() - torch_loss.item()) <= 1e-5 * abs(torch_loss.item())  # fp32, two libraries
