"""Training: the official objective, process-count invariance, exact resume, MLX loading."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, load_vectors, max_relative_error, to_nhwc
from helpers.training import (
    STARFLOW_TINY,
    TARFLOW_TINY,
    encode_caption_shards,
    make_class_folder,
    overrides,
    read_log,
)
from helpers.waiting import HANG_GUARD_S, wait_for
from safetensors.torch import load_file

from starflow_torch import StarFlow
from starflow_torch.flow_math import scale_and_log_scale, to_noise
from starflow_torch.training import load_run_config, train
from starflow_torch.training.objective import FlowObjective, learning_rate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is ~100x faster than two on a CPU shared with other jobs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def official_model(name: str) -> tuple[StarFlow, torch.Tensor, torch.Tensor | None]:
    config, vectors = load_vectors(name)
    model = StarFlow.from_official(FIXTURES / name / "official.pth", config)
    x = torch.from_numpy(vectors["x"])
    y = vectors.get("y", vectors.get("labels"))
    return model, x, (torch.from_numpy(y) if y is not None else None)


def loss_block_by_block(model: StarFlow, x: torch.Tensor, y) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """0.5 mean(z^2) - sum_blocks mean(per-element logdet), from each block's raw outputs."""
    B, _, H, W = x.shape
    text, labels = model.text_features(y, B), model.class_labels(y, B)
    tokens, logdet_means, block_inputs = model.patchify(x), [], []
    for i, block in enumerate(model.blocks):
        block_inputs.append(tokens)
        permuted = block.permute(tokens)
        p = model.config.patch_size
        rope = model.rope(i, H // p, W // p, text.shape[1] if text is not None else 0, x.device)
        raw_scale, shift = block.predict(permuted, text if block.has_text else None, rope, labels)
        scale, log_scale = scale_and_log_scale(raw_scale, model.config.use_softplus)
        logdet_means.append((-log_scale).mean(dim=(1, 2)))  # (B,) mean over this block's elements
        tokens = block.permute(to_noise(permuted, shift, scale))
    loss = (0.5 * tokens.square().mean(dim=(1, 2)) - sum(logdet_means)).mean()
    return loss, block_inputs


@pytest.mark.parametrize("name", ["starflow_tiny", "tarflow_tiny"])
def test_loss_is_the_official_formula(name):
    model, x, y = official_model(name)
    _, vectors = load_vectors(name)
    with torch.no_grad():
        loss = model.loss(x, y)
        independent, block_inputs = loss_block_by_block(model, x, y)
        objective_loss, _ = FlowObjective(model, 0.0)(x, y)
        regularised, flow_loss = FlowObjective(model, 0.01)(x, y)
    # from the official code's own z and total logdet (SPEC section 7)
    z = vectors.get("z_image", vectors["z"])
    official = 0.5 * np.mean(z.astype(np.float64) ** 2) - np.mean(vectors["logdet"]) / x[0].numel()
    assert abs(loss.item() - official) < 1e-4 * max(1.0, abs(official))  # fp32 sums of 256 elements
    assert torch.allclose(loss, independent, rtol=1e-5, atol=1e-6)  # same maths, other summation order
    assert objective_loss.item() == loss.item()
    expected_reg = sum(t.square().mean() for t in block_inputs)  # official outputs[:-1]
    assert torch.allclose(flow_loss, loss, rtol=1e-5, atol=1e-6)
    assert torch.allclose(regularised, loss + 0.01 * expected_reg, rtol=1e-5)


def test_a_few_steps_reduce_the_loss():
    model, x, y = official_model("tarflow_tiny")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=1e-4)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = model.loss(x, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.01, losses


def test_learning_rate_warms_up_then_decays_to_min_lr():
    lrs = [learning_rate(s, 1e-3, 1e-5, 10, 100) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[10] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    assert lrs[100] == pytest.approx(1e-5)


# ----- processes ------------------------------------------------------------------------
def torchrun(args: list[str], nproc: int, timeout: float = HANG_GUARD_S) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    result = subprocess.run(
        [*command, "-m", "starflow_torch.train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def set_args(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_ddp_and_fsdp_match_one_process(tmp_path):
    data = make_class_folder(tmp_path / "images")
    # two accumulation micro-steps: gradients must be exchanged on the last one only (with one,
    # syncing on the "wrong" micro-step cannot show)
    settings = dict(data=str(data), steps=3, grad_accum=2, drop_label=0.25, ema_decay=0.5)
    common = overrides(TARFLOW_TINY, **settings)
    train(load_run_config(None, [*common, f"train.out_dir={tmp_path / 'one'}"]))
    reference = load_file(str(tmp_path / "one/checkpoints/step_00000003/model.safetensors"))
    reference_log = read_log(tmp_path / "one")
    for mode in ("ddp", "fsdp"):
        out = tmp_path / mode
        torchrun(set_args([*common, f"train.out_dir={out}", f"train.parallel={mode}"]), nproc=2)
        # The gradient itself, before clipping: AdamW and clipping ignore a constant factor, so the
        # weights alone cannot tell a gradient summed over processes from one averaged over them.
        # Two half-batch means averaged vs one whole-batch mean: float32 rounding, measured 1.7e-7.
        log = read_log(out)
        assert [r["step"] for r in log] == [r["step"] for r in reference_log] == [1, 2, 3]
        for got_record, want_record in zip(log, reference_log, strict=True):
            assert got_record["grad_norm"] == pytest.approx(want_record["grad_norm"], rel=1e-5), mode
            assert got_record["loss"] == pytest.approx(want_record["loss"], rel=1e-5), mode
        got = load_file(str(out / "checkpoints/step_00000003/model.safetensors"))
        assert sorted(got) == sorted(reference)
        # Two processes average two half-batch gradients where one process averages the whole
        # batch: float32 rounding (~1e-7 relative), which Adam's normalised steps (lr 1e-3,
        # 3 steps) carry into the weights at ~1e-7 absolute; measured 2e-7.
        for key in reference:
            assert torch.allclose(got[key], reference[key], atol=2e-5, rtol=0), (mode, key)


# ----- resume ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return encode_caption_shards(
        tmp_path_factory.mktemp("captions"), count=10, sizes=((8, 8), (12, 8)), buckets=True
    )


def text_run(shards: Path, out: Path, **train_overrides) -> list[str]:
    settings = dict(
        data=str(shards), steps=4, buckets=True, drop_label=0.3, latent_norm_reg=1e-3, grad_accum=2
    )
    settings.update(train_overrides)
    return [*overrides(STARFLOW_TINY, **settings), f"train.out_dir={out}"]


def test_resume_continues_exactly(shards, tmp_path):
    straight = train(load_run_config(None, text_run(shards, tmp_path / "straight")))
    first = train(load_run_config(None, text_run(shards, tmp_path / "split")), stop_at_step=2)
    assert first.interrupted and not first.signalled and first.progress.step == 2  # stop_at_step: exit 0
    second = train(load_run_config(None, text_run(shards, tmp_path / "split")), resume=tmp_path / "split")
    assert first.losses + second.losses == straight.losses  # exact: same data, noise and arithmetic
    for name in ("model.safetensors", "ema/model.safetensors"):
        a = load_file(str(straight.checkpoint / name))
        b = load_file(str(second.checkpoint / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    state = torch.load(second.checkpoint / "training_state.pt", weights_only=True)
    assert state["progress"]["step"] == 4 and state["progress"]["micro_step"] == 8


def test_sigterm_saves_and_resume_matches(tmp_path):
    data = make_class_folder(tmp_path / "images")
    common = overrides(TARFLOW_TINY, data=str(data), steps=500)
    run_dir = tmp_path / "signalled"
    process = subprocess.Popen(
        [sys.executable, "-m", "starflow_torch.train", *set_args([*common, f"train.out_dir={run_dir}"])],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: (run_dir / "log.jsonl").is_file(), process, "the first logged step")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=HANG_GUARD_S)
    # saved, then 130 (128 + SIGINT, what shells report for an interrupt): a scheduler or a
    # shell script must not take a stopped run for a finished one
    assert process.returncode == 130, stderr[-2000:]
    assert b"interrupted; step" in stderr and b"continue with --resume" in stderr, stderr[-2000:]
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints/latest").read_text().strip()
    saved = torch.load(latest / "training_state.pt", weights_only=True)
    step = saved["progress"]["step"]
    assert 1 <= step < 500
    resumed = train(
        load_run_config(None, [*common, f"train.out_dir={run_dir}"]), resume=run_dir, stop_at_step=step + 1
    )
    straight = train(
        load_run_config(None, [*common, f"train.out_dir={tmp_path / 'straight'}"]), stop_at_step=step + 1
    )
    a, b = (
        load_file(str(resumed.checkpoint / "model.safetensors")),
        load_file(str(straight.checkpoint / "model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.losses == straight.losses[-1:]


# ----- the MLX twin reads what torch training writes -----------------------------------
def test_mlx_loads_a_training_checkpoint(shards, tmp_path):
    try:
        from starflow_mlx import StarFlow as MlxStarFlow
    except ImportError as err:
        pytest.skip(f"starflow_mlx.StarFlow is not importable yet: {err}")
    import mlx.core as mx

    result = train(load_run_config(None, text_run(shards, tmp_path / "run", steps=2, sample_every=2)))
    assert (tmp_path / "run/samples/step_00000002.png").is_file()
    x = torch.randn(2, 4, 4, 4)
    y = torch.randn(2, STARFLOW_TINY["txt_size"], STARFLOW_TINY["txt_dim"])
    for folder in (result.checkpoint, result.checkpoint / "ema"):
        want = StarFlow.from_pretrained(folder).log_prob(x, y).detach().numpy()
        got = np.array(MlxStarFlow.from_pretrained(folder).log_prob(to_nhwc(x.numpy()), mx.array(y.numpy())))
        assert max_relative_error(got, want) < 1e-4  # fp32 in both twins, different kernels


def test_gradient_checkpointing_gives_the_same_training(shards, tmp_path):
    plain = train(load_run_config(None, text_run(shards, tmp_path / "plain", steps=2)))
    recomputed = train(
        load_run_config(None, text_run(shards, tmp_path / "ckpt", steps=2, gradient_checkpointing=True))
    )
    assert recomputed.losses == plain.losses
    a = load_file(str(plain.checkpoint / "model.safetensors"))
    b = load_file(str(recomputed.checkpoint / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # recomputation repeats the same fp32 ops
