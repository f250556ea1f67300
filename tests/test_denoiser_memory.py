"""The learned denoiser's masked attention in chunks of query rows (MLX): the numbers of the whole
attention, with one chunk's scores alive instead of the whole (L, S) matrix per head."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map

import starflow_core.frames
from starflow_core.config import FlowConfig
from starflow_core.frames import denoiser_attention_mask, query_chunk_rows
from starflow_mlx import StarFlow
from starflow_mlx.layers import attention_in_query_chunks

WHOLE = 2**40  # a score budget no test shape reaches: the attention in one piece


def video_config(conditional: bool, channels: int = 48, head_dim: int = 16) -> FlowConfig:
    return FlowConfig(
        in_channels=2,
        img_size=4,
        patch_size=1,
        channels=channels,
        num_blocks=2,
        layers_per_block=(1, 1),
        head_dim=head_dim,
        rope=True,
        sos=True,
        txt_size=3,
        txt_dim=8,
        cond_top_only=True,
        use_final_norm=True,
        seq_order="L2R",
        temporal_causal=2,
        shallow_block_local=True,
        learnable_self_denoiser=True,
        conditional_denoiser=conditional,
        denoiser_window=2,
    )


def random_model(config: FlowConfig, seed: int = 0) -> StarFlow:
    """Random weights everywhere, the denoiser's zero-initialised head included."""
    mx.random.seed(seed)
    model = StarFlow(config)
    model.update(tree_map(lambda p: 0.2 * mx.random.normal(p.shape), model.parameters()))
    mx.eval(model.parameters())
    return model


def video(config: FlowConfig, frames: int, height: int, width: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = mx.array(rng.standard_normal((1, frames, height, width, config.in_channels), np.float32))
    y = mx.array(rng.standard_normal((1, config.txt_size, config.txt_dim), np.float32))
    return x, y


def test_query_chunks_compute_the_whole_attention():
    """Grouped heads, the window mask with text rows, chunks that do not divide the length."""
    rng = np.random.default_rng(0)
    txt_len, frames, frame_tokens = 3, 5, 7
    length = txt_len + frames * frame_tokens  # 38
    q = mx.array(rng.standard_normal((2, 4, length, 8), np.float32))
    k, v = (mx.array(rng.standard_normal((2, 2, length, 8), np.float32)) for _ in range(2))
    mask = mx.array(denoiser_attention_mask(txt_len, frames, frame_tokens, 2, 2))
    whole = mx.fast.scaled_dot_product_attention(q, k, v, scale=8**-0.5, mask=mask)
    for rows in (5, 7, 37):
        for evaluate in (False, True):
            chunked = attention_in_query_chunks(q, k, v, mask, 8**-0.5, rows, evaluate)
            # the same float32 products and softmax per row, summed in another blocking: 1e-6
            np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=0, atol=1e-6)


def test_query_chunk_rows_follow_the_budget():
    assert query_chunk_rows(1, 48, 33_646) == 83  # the 7B at 81 frames of 480x848, 512 MiB
    assert query_chunk_rows(2, 4, 100, score_bytes=4 * 2 * 4 * 100 * 3 + 5) == 3
    assert query_chunk_rows(1, 4, 10**9, score_bytes=1) == 1  # at least one row


@pytest.mark.parametrize("conditional", [True, False])
def test_denoiser_in_chunks_matches_the_whole(monkeypatch, conditional):
    """The whole learned denoiser (8 layers, text rows when conditional) on a 5-frame video of
    4x3 tokens: S = 60 (+ 3 text), chunks of 8 rows (3 heads x 63 keys x 4 bytes x 8)."""
    config = video_config(conditional)
    model = random_model(config)
    x, y = video(config, 5, 4, 3)
    monkeypatch.setattr(starflow_core.frames, "DENOISER_SCORE_BYTES", WHOLE)
    whole = model.learned_denoise(x, y)
    keys = 5 * 12 + (3 if conditional else 0)
    monkeypatch.setattr(starflow_core.frames, "DENOISER_SCORE_BYTES", 3 * keys * 4 * 8)
    assert query_chunk_rows(1, 3, keys) == 8 and keys % 8 != 0
    for evaluate in (False, True):
        from starflow_mlx.video import learned_denoise

        chunked = learned_denoise(model, x, y, evaluate)
        # eight layers of float32 attention rows computed apart: 1e-5 on outputs of size ~1
        np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=0, atol=1e-5)
        assert float(mx.abs(whole).max()) > 0.1  # random weights: a denoiser that predicts something


def peak_of(run) -> int:
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(run())
    return mx.get_peak_memory() - base


def test_denoise_video_peak_is_one_chunk_of_scores(monkeypatch):
    """MLX counts the bytes its arrays hold (on CPU as on a Mac). 16 frames of 8x8 tokens + 3 text
    (S = 1,027) with 8 heads of width 16: the whole attention's float32 scores are 34 MB a layer,
    above the rest of the denoiser's activations (~20 MB: MLP and projections over 1,027
    positions); in chunks of 1 MiB of scores (31 rows, evaluated one by one) the peak must fall to
    under half the whole run's (measured: 54.9 MiB whole, 22.2 MiB in chunks; both are counts
    of array bytes, the same on any machine)."""
    config = video_config(True, channels=128)
    model = random_model(config)
    x, y = video(config, 16, 8, 8)
    mx.eval(x, y)
    from starflow_mlx.video import denoise_video

    monkeypatch.setattr(starflow_core.frames, "DENOISER_SCORE_BYTES", WHOLE)
    whole = peak_of(lambda: denoise_video(model, x, y))
    monkeypatch.setattr(starflow_core.frames, "DENOISER_SCORE_BYTES", 2**20)
    chunked = peak_of(lambda: denoise_video(model, x, y))
    scores = 8 * 1027 * 1027 * 4
    assert whole > scores  # the whole run holds at least one layer's scores
    assert chunked < whole / 2, (chunked, whole)
