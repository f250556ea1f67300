"""Video sampling and denoising of StarFlow (STARFlow-V, SPEC section 9), on top of the block samplers.

A video is one token sequence, frame after frame. What it adds to sampling an image:
frame-local blocks (shallow_block_local) sample each frame as its own sequence; the deep
block may sample a video longer than its window (local_attn_window) window by window;
image-to-video starts every block that spans frames from the known first frame (official
forward_context); and the learned self-denoiser replaces the score-based step.
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx

from starflow_core.frames import DENOISER_STEP, denoiser_attention_mask, denoising_chunks, sampling_windows

from .sampling import BlockConditions, SamplingStats, sample_block_jacobi, sample_block_sequential


@dataclasses.dataclass(frozen=True)
class JacobiSettings:
    block_size: int
    tol: float
    max_iter: int


def sample_block(
    model,
    index: int,
    tokens: mx.array,
    frames: int,
    shape: tuple[int, ...],
    cond: BlockConditions,
    prefix: mx.array | None,
    jacobi: JacobiSettings | None,
    context_length: int | None,
    progress: bool,
    stats: SamplingStats,
) -> mx.array:
    """Invert block `index` on noise tokens (B, T*h*w, C') of `frames` frames -> data tokens."""
    config, block = model.config, model.blocks[index]
    p = config.patch_size
    h, w = shape[-3] // p, shape[-2] // p
    B, L, C = tokens.shape
    if config.block_is_frame_local(index) and frames > 1:
        # B*T one-frame sequences, each sampled from scratch (also in image-to-video); with a
        # window, sequential sampling takes that many frames at a time, so memory follows the
        # window, not the length. Jacobi takes all frames at once: the official stopping rule
        # averages each chunk's change over every frame, so groups would stop differently.
        group = frames if jacobi is not None else (config.local_attn_window or frames)
        frame = L // frames
        per_frame, rope = tokens.reshape(B, frames, frame, C), model.rope(index, h, w, 0)
        outputs, iterations = [], []
        for start in range(0, frames, group):
            part = per_frame[:, start : start + group]
            count = part.shape[1]
            out, part_iterations = _invert(block, part.reshape(B * count, frame, C), cond, rope, 1, None, None,
                                           jacobi, progress)  # fmt: skip
            outputs.append(out.reshape(B, count, frame, C))
            iterations += part_iterations
        _record(stats, iterations if jacobi else None, frame * len(outputs))  # one evaluation per group step
        return mx.concatenate(outputs, axis=1).reshape(B, L, C)
    txt_len = cond.text.shape[1] if (block.has_text and cond.text is not None) else 0
    windows = None
    if index == config.deep_block and config.local_attn_window and config.sos:
        windows = sampling_windows(L, L // frames, config.local_attn_window, context_length)
    rope_frames = frames if windows is None else min(frames, config.local_attn_window)  # cached frames
    rope = model.rope(index, h, w, txt_len, rope_frames)
    out, iterations = _invert(block, tokens, cond, rope, frames, prefix, windows, jacobi, progress)
    _record(stats, iterations if jacobi else None, L)
    return out


def _invert(
    block, sequences, cond, rope, frames, prefix, windows, jacobi, progress
) -> tuple[mx.array, list[int]]:
    """One block's sampler over sequences (rows, tokens, C'): (data tokens, Jacobi iterations)."""
    if jacobi is None:
        return sample_block_sequential(block, sequences, cond, rope, progress, frames, prefix, windows), []
    return sample_block_jacobi(
        block, sequences, cond, rope, jacobi.block_size, jacobi.tol, jacobi.max_iter, progress,
        frames, prefix, windows,
    )  # fmt: skip


def _record(stats: SamplingStats, iterations: list[int] | None, tokens: int) -> None:
    """Jacobi: the block's iterations per chunk; sequential: one evaluation per token."""
    if iterations is None:
        stats.steps += tokens
    else:
        stats.jacobi_iterations.append(iterations)
        stats.steps += sum(iterations)


def first_frame_prefixes(
    model, first_frame: mx.array | None, shape: tuple[int, ...], cond: BlockConditions
) -> dict[int, mx.array]:
    """Image-to-video: for each block spanning frames, the first frame's tokens at that block's
    data side (its forward input), permuted as the block orders them: {block index: (B, h*w, C')}.

    The official forward_context runs the first frame through the model once to fill every
    block's cache; frame-local blocks then resample all frames from scratch (their caches are
    reset), so they get no prefix.
    """
    if first_frame is None:
        return {}
    config = model.config
    if len(shape) != 5:
        raise ValueError("first_frame (image-to-video) needs video noise (B, T, H, W, C)")
    if tuple(first_frame.shape) != (shape[0], *shape[2:]):
        raise ValueError(
            f"first_frame must be (B, H, W, C) = {(shape[0], *shape[2:])} like a frame of the noise, "
            f"got {tuple(first_frame.shape)}"
        )
    tokens, _ = model.tokens(first_frame[:, None].astype(mx.float32))
    prefixes = {}
    for i, block in enumerate(model.blocks):
        if model.is_identity(i):
            continue
        if not config.block_is_frame_local(i):
            if block.flipped and not config.temporal_causal:
                raise ValueError(
                    "image-to-video needs every block spanning frames to keep the first frame first "
                    "(temporal_causal >= 1)"
                )
            prefixes[i] = block.permute(tokens, 1)
        if i < config.deep_block:
            tokens, _ = model.forward_block(i, tokens, 1, first_frame[:, None].shape, cond.text, None)
    return prefixes


def learned_denoise(model, x: mx.array, y: mx.array | None, evaluate: bool = False) -> mx.array:
    """The learned self-denoiser's output for x (B, H, W, C) or (B, T, H, W, C), same shape.
    evaluate (inference, not inside mx.compile): the masked attention's chunks of query rows are
    evaluated one by one, so its scores peak at one chunk's (layers.attention_in_query_chunks)."""
    config = model.config
    if not config.learnable_self_denoiser:
        raise ValueError(
            "this model has no learned self-denoiser (learnable_self_denoiser=False); "
            "use model.denoise, the score-based step"
        )
    model._check_input(x)
    tokens, frames = model.tokens(x)
    text = model.text_features(y, x.shape[0]) if config.conditional_denoiser else None
    txt_len = text.shape[1] if text is not None else 0
    p = config.patch_size
    h, w = x.shape[-3] // p, x.shape[-2] // p
    mask = None
    if x.ndim == 5 and config.temporal_causal:  # the official mask is for video input only
        mask = mx.array(
            denoiser_attention_mask(txt_len, frames, h * w, config.temporal_causal, config.denoiser_window)
        )
    rope = model.rope_table(h, w, txt_len, frames)
    out = model.learnable_self_denoiser(tokens, text, rope, mask, evaluate)
    return model.from_tokens(out, x.shape).astype(x.dtype)


def denoise_video(model, x: mx.array, y: mx.array | None, chunk_frames: int | None = None) -> mx.array:
    """x - DENOISER_STEP * learned_denoise(x) in the chunks of the official process_denoising:
    chunk_frames frames (default local_attn_window; the whole video without one) overlapping by
    denoiser_window, each chunk reading the frames the chunks before it already denoised."""
    if x.ndim == 4:
        return (x.astype(mx.float32) - DENOISER_STEP * learned_denoise(model, x, y, True)).astype(x.dtype)
    chunk_frames = chunk_frames or model.config.local_attn_window
    out = x.astype(mx.float32)
    for chunk in denoising_chunks(x.shape[1], chunk_frames, model.config.denoiser_window):
        frames = out[:, chunk.start : chunk.stop]
        denoised = frames - DENOISER_STEP * learned_denoise(model, frames, y, True).astype(mx.float32)
        keep = chunk.keep_from - chunk.start
        out = mx.concatenate([out[:, : chunk.keep_from], denoised[:, keep:], out[:, chunk.stop :]], axis=1)
    return out.astype(x.dtype)
