"""Each STARFlow-V option on a tiny video model, checked against what it means (SPEC section 9).

Each test names the breakage it was seen failing against. The model: 3 blocks (the first
flipped), frame-local shallow blocks, a deep block wider than them, a conditional learned
denoiser seeing one frame back; videos of 2x3 token frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import max_relative_error
from helpers.twins import random_torch_model, twin_models

from starflow_core.config import FlowConfig
from starflow_core.frames import denoiser_attention_mask, denoising_chunks, sampling_windows
from starflow_core.positions import rope_angles

VIDEO_CONFIG = FlowConfig(
    in_channels=2,
    img_size=2,
    patch_size=1,
    channels=48,
    num_blocks=3,
    layers_per_block=(1, 1, 2),
    head_dim=24,
    rope=True,
    sos=True,
    txt_size=2,
    txt_dim=8,
    cond_top_only=True,
    use_softplus=True,
    use_final_norm=True,
    soft_clip=2.0,
    seq_order="L2R",
    temporal_causal=1,
    shallow_block_local=True,
    top_block_channels=72,
    learnable_self_denoiser=True,
    conditional_denoiser=True,
    denoiser_window=1,
)
HEIGHT, WIDTH = 2, 3  # a non-square frame: 6 tokens


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return twin_models(VIDEO_CONFIG, tmp_path_factory.mktemp("video"), scale=0.3)


def video_inputs(frames: int, batch: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, frames, 2, HEIGHT, WIDTH)).astype(np.float32)
    y = rng.standard_normal((batch, 2, 8)).astype(np.float32)
    return x, y


def torch_tensors(*arrays):
    return [torch.from_numpy(a) for a in arrays]


# ----- framework-free pieces, against hand-written expectations --------------------------------
def test_video_positions_match_an_independent_computation():
    """Token (i, j) of frame f at (i P / sqrt(hw), j P / sqrt(hw), f), text k at (0, 0, k P / L).
    Breakage tried: the frame coordinate left at 0 (the image positions repeated) fails."""
    head_dim, h, w, frames, txt, side = 40, 2, 3, 3, 2, 4
    got = rope_angles(head_dim, h, w, side, txt, three_d=True, frames=frames)
    spatial = [10000.0 ** (-2 * k / 12) for k in range(6)]  # half 20 - 8 = 12 -> 6 per axis
    third = [10000.0 ** (-k / 8) for k in range(8)]
    rows = [(0.0, 0.0, k * side / txt) for k in range(txt)]
    rows += [
        (i * side / 6**0.5, j * side / 6**0.5, f) for f in range(frames) for i in range(h) for j in range(w)
    ]
    want = [[r * s for s in spatial] + [c * s for s in spatial] + [t * s for s in third] for r, c, t in rows]
    np.testing.assert_allclose(got, np.repeat(np.array(want), 2, axis=1), rtol=1e-6, atol=1e-6)


def test_denoiser_mask_by_hand():
    """One text token, 3 frames of one token, lookahead 2 (temporal_causal 2), window 1: frame f
    sees frames f-0 .. f+1 (f + A - 1 - G = f, f + A - 1 = f + 1); the text query sees frame 0
    and 1 (upper bound 0 + A - 1), its lower bound floor(-1/1) + 0 = -1 excludes nothing.
    Breakage tried: the lookahead dropped (A - 1 -> 0) fails."""
    got = denoiser_attention_mask(1, 3, 1, lookahead=2, window=1)
    want = np.array(
        [
            [1, 1, 1, 0],  # text
            [1, 1, 1, 0],  # frame 0: frames 0, 1
            [1, 0, 1, 1],  # frame 1: frames 1, 2
            [1, 0, 0, 1],  # frame 2: frame 2 (3 does not exist)
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(got, want)


def test_denoising_chunks_follow_the_official_loop():
    """process_denoising: chunks of `steps` frames, the next starting steps - overlap later, each
    writing only past the overlap. 5 frames, chunks of 3 overlapping by 1: [0,3) all, [2,5) from 3."""
    assert [(c.start, c.stop, c.keep_from) for c in denoising_chunks(5, 3, 1)] == [(0, 3, 0), (2, 5, 3)]
    assert [(c.start, c.stop, c.keep_from) for c in denoising_chunks(4, None, 10)] == [(0, 4, 0)]
    with pytest.raises(ValueError, match="never advances"):
        denoising_chunks(5, 2, 2)


def test_sampling_windows_re_encode_the_context():
    """Windows of 3 frames (2 tokens each) keeping 1 context frame: [0, 6), then 2 new frames at a time."""
    got = [(w.context_start, w.start, w.stop) for w in sampling_windows(14, 2, 3, 1)]
    assert got == [(0, 0, 6), (4, 6, 10), (8, 10, 14)]
    assert [(w.context_start, w.start, w.stop) for w in sampling_windows(6, 2, 3, None)] == [(0, 0, 6)]


# ----- the options in the models -----------------------------------------------------------------
def test_twins_agree_on_every_video_option(models):
    """Forward, learned denoiser and the score-based denoising step agree between the twins (1e-4
    of the scale: fp32 rounding of different kernels, measured ~1e-6)."""
    import mlx.core as mx

    torch_model, mlx_model = models
    x, y = video_inputs(3, batch=2)
    z_t, logdet_t = torch_model(*torch_tensors(x, y))
    z_m, logdet_m = mlx_model(mx.array(x.transpose(0, 1, 3, 4, 2)), mx.array(y))
    assert max_relative_error(np.asarray(z_m).transpose(0, 1, 4, 2, 3), z_t.detach().numpy()) < 1e-4
    assert max_relative_error(np.asarray(logdet_m), logdet_t.detach().numpy()) < 1e-4
    d_t = torch_model.learned_denoise(*torch_tensors(x, y))
    d_m = mlx_model.learned_denoise(mx.array(x.transpose(0, 1, 3, 4, 2)), mx.array(y))
    assert max_relative_error(np.asarray(d_m).transpose(0, 1, 4, 2, 3), d_t.detach().numpy()) < 1e-4
    step_t = torch_model.denoise(*torch_tensors(x, y), noise_std=0.3)  # SPEC section 3, on a video
    step_m = mlx_model.denoise(mx.array(x.transpose(0, 1, 3, 4, 2)), mx.array(y), noise_std=0.3)
    assert max_relative_error(np.asarray(step_m).transpose(0, 1, 4, 2, 3), step_t.detach().numpy()) < 1e-4


@pytest.mark.parametrize("temporal_causal", [1, 2])
def test_every_block_is_causal_in_time(temporal_causal):
    """With temporal_causal the flipped blocks reverse tokens within each frame only, so the noise
    of a frame depends on that frame and the ones before it, never on later frames.
    Breakage tried: flipping the whole sequence (flip_groups -> 1) fails."""
    torch_model = random_torch_model(VIDEO_CONFIG.replace(temporal_causal=temporal_causal), scale=0.3)
    x, y = video_inputs(3)
    changed = x.copy()
    changed[:, 2] += 1.0
    with torch.no_grad():
        z, _ = torch_model(*torch_tensors(x, y))
        z_changed, _ = torch_model(*torch_tensors(changed, y))
    torch.testing.assert_close(z_changed[:, :2], z[:, :2], rtol=0, atol=1e-6)  # fp32 noise only
    assert (z_changed[:, 2] - z[:, 2]).abs().max() > 0.1


def test_shallow_blocks_model_each_frame_on_its_own(models):
    """shallow_block_local: a shallow block's output for a frame depends on that frame alone.
    Breakage tried: running the shallow block over the whole video (block_is_frame_local ->
    False) fails: the frame after the changed one changes too."""
    torch_model = models[0]
    x, _ = video_inputs(3)
    changed = x.copy()
    changed[:, 1] += 1.0
    outputs = []
    with torch.no_grad():
        for video in (x, changed):
            tokens, frames = torch_model.tokens(torch.from_numpy(video))
            out, _ = torch_model.forward_block(0, tokens, frames, video.shape, None, None)
            outputs.append(torch_model.from_tokens(out, video.shape))
    torch.testing.assert_close(outputs[1][:, [0, 2]], outputs[0][:, [0, 2]], rtol=0, atol=0)
    assert (outputs[1][:, 1] - outputs[0][:, 1]).abs().max() > 0.1


def test_denoise_video_moves_by_the_official_step(models):
    """The official apply_denoising: x - 0.3 * denoiser(x) (noise_std_const 0.3, times
    (sigma - 0) / sigma), chunk by chunk: here chunks of 2 frames overlapping by denoiser_window 1.
    Breakage tried: a step of 0.35 fails; chunks that read the undenoised frames fail."""
    torch_model = models[0]
    x, y = torch_tensors(*video_inputs(3))
    with torch.no_grad():
        whole = torch_model.denoise_video(x, y)  # no local_attn_window: one chunk
        torch.testing.assert_close(whole, x - 0.3 * torch_model.learned_denoise(x, y), rtol=0, atol=1e-6)
        from starflow_torch.video import denoise_video

        chunked = denoise_video(torch_model, x, y, chunk_frames=2)
        want = x.clone()
        want[:, 0:2] = x[:, 0:2] - 0.3 * torch_model.learned_denoise(x[:, 0:2], y)
        want[:, 2:3] = (want[:, 1:3] - 0.3 * torch_model.learned_denoise(want[:, 1:3], y))[:, 1:]
    torch.testing.assert_close(chunked, want, rtol=0, atol=1e-6)


def test_window_sampling_re_encodes_the_context(tmp_path):
    """local_attn_window 2 on a 5-frame video, 1 context frame: each window's deep-block tokens
    run through the deep block's forward pass as a video of their own (the context frames
    first, positions from frame 0) give back the noise of the window's new frames; full
    attention over the whole video does not. Sequential, Jacobi and the MLX twin agree.
    Breakage tried: ignoring the window (one window over the whole video) fails."""
    import mlx.core as mx

    config = VIDEO_CONFIG.replace(local_attn_window=2)
    torch_model, mlx_model = twin_models(config, tmp_path, scale=0.3)
    noise, y = torch_tensors(*video_inputs(5, seed=1))
    x = torch_model.sample(noise, y, context_length=1)
    with torch.no_grad():
        tokens, frames = torch_model.tokens(x)
        for i in (0, 1):  # to the deep block's data side
            tokens, _ = torch_model.forward_block(i, tokens, frames, x.shape, None, None)
        text, frame = torch_model.text_features(y, 1), HEIGHT * WIDTH
        noise_tokens = torch_model.tokens(noise)[0]
        for window in sampling_windows(5 * frame, frame, 2, 1):
            part = tokens[:, window.context_start : window.stop]
            shape = (1, part.shape[1] // frame, 2, HEIGHT, WIDTH)
            z, _ = torch_model.forward_block(2, part, shape[1], shape, text, None)
            new = window.start - window.context_start
            torch.testing.assert_close(
                z[:, new:], noise_tokens[:, window.start : window.stop], rtol=0, atol=1e-4
            )
        z_full, _ = torch_model.forward_block(2, tokens, 5, x.shape, text, None)
        assert (z_full - noise_tokens).abs().max() > 1e-2  # the window changed the sample
    jacobi = torch_model.sample(noise, y, context_length=1, jacobi=True, block_size=2, tol=1e-12, max_iter=64)
    torch.testing.assert_close(jacobi, x, rtol=0, atol=1e-4)  # converged Jacobi, SPEC section 3
    to_mlx = (0, 1, 3, 4, 2)
    mlx_x = mlx_model.sample(mx.array(noise.numpy().transpose(to_mlx)), mx.array(y.numpy()), context_length=1)
    np.testing.assert_allclose(np.asarray(mlx_x).transpose(0, 1, 4, 2, 3), x.numpy(), atol=1e-4)


def test_image_to_video_keeps_the_first_frame_under_a_window_and_guidance(tmp_path):
    """Image-to-video (the first frame known, official forward_context) with guidance and a window
    shorter than the video: the sample's first frame is the given one (1e-4: the frame-local
    blocks resample it from its deep-block tokens, exact up to fp32), Jacobi equals sequential and
    the twins agree (1e-4). Breakage tried: no first-frame prefix for the deep block fails."""
    import mlx.core as mx

    torch_model, mlx_model = twin_models(VIDEO_CONFIG.replace(local_attn_window=2), tmp_path, scale=0.3)
    noise, y = video_inputs(5, seed=1)
    first = np.random.default_rng(3).standard_normal((1, 2, HEIGHT, WIDTH)).astype(np.float32)
    options = dict(guidance=1.5, context_length=1)
    y_null = np.zeros_like(y)
    x = torch_model.sample(*torch_tensors(noise, y, y_null), first_frame=torch.from_numpy(first), **options)
    torch.testing.assert_close(x[:, 0], torch.from_numpy(first), rtol=0, atol=1e-4)
    jacobi = torch_model.sample(
        *torch_tensors(noise, y, y_null), first_frame=torch.from_numpy(first), jacobi=True, block_size=2,
        tol=1e-12, max_iter=64, **options,
    )  # fmt: skip
    torch.testing.assert_close(jacobi, x, rtol=0, atol=1e-4)
    mlx_x = mlx_model.sample(
        mx.array(noise.transpose(0, 1, 3, 4, 2)), mx.array(y), mx.array(y_null),
        first_frame=mx.array(first.transpose(0, 2, 3, 1)), **options,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(mlx_x).transpose(0, 1, 4, 2, 3), x.numpy(), atol=1e-4)
