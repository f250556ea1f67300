"""What a video adds to the flow, framework-free (SPEC section 9): frame structure of the tokens.

A video of T latent frames is one token sequence, frame after frame, each frame in raster
order as for an image; an image is a video of one frame. The pieces here depend only on
that layout, so both twins use the same numbers:

- `denoiser_attention_mask`: which tokens the learned self-denoiser lets each token see
  (official NonCausalBlock with `block_causal` = temporal_causal and `window` =
  denoiser_window);
- `denoising_chunks`: the frame chunks the official `process_denoising` runs the denoiser on;
- `sampling_windows`: the frames the deep block samples under `local_attn_window`, each
  window starting from re-encoded context frames (official Jacobi path, `--target_length`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# The official `apply_denoising` moves a sample by the denoiser output times this constant
# (its `noise_std_const`), times (sigma - sigma_next) / sigma = 1 when denoising to sigma_next 0.
DENOISER_STEP = 0.3
# Frames seen without a denoiser_window (the official default: effectively unbounded).
UNBOUNDED_WINDOW = 10000
# The denoiser attends over the whole (windowed) video with a mask, so its attention runs in
# chunks of query rows, one after another, each chunk's float32 scores (B, heads, rows, S) at most
# this many bytes (the 7B at 81 frames of 480x848: 83 rows of 33,646 keys, instead of all 33,646).
DENOISER_SCORE_BYTES = 512 * 2**20


def query_chunk_rows(batch: int, heads: int, keys: int, score_bytes: int | None = None) -> int:
    """Query rows per chunk of a masked attention: float32 scores (batch, heads, rows, keys) of
    at most score_bytes (default DENOISER_SCORE_BYTES, read at the call), at least one row."""
    score_bytes = DENOISER_SCORE_BYTES if score_bytes is None else score_bytes
    return max(1, score_bytes // (batch * heads * keys * 4))


def denoiser_attention_mask(
    txt_len: int, frames: int, frame_tokens: int, lookahead: int, window: int | None
) -> np.ndarray:
    """(S, S) bool, S = txt_len + frames * frame_tokens, True where query q may attend to key k.

    Every token sees the text. Image token q of frame f(q) sees the frames
    f(q) + lookahead - 1 - window ... f(q) + lookahead - 1 (lookahead = temporal_causal: 1 sees
    up to its own frame, 2 one frame ahead). Text queries use the official arithmetic as it is:
    their lower bound takes the floor frame of the negative offset q - txt_len, their upper
    bound frame 0.
    """
    window = UNBOUNDED_WINDOW if window is None else window
    size = txt_len + frames * frame_tokens
    q = np.arange(size)[:, None]
    k = np.arange(size)[None, :]
    key_frame = (k - txt_len) // frame_tokens  # floor division, as torch's // on integers
    query_frame_low = (q - txt_len) // frame_tokens
    query_frame_high = np.maximum(q - txt_len, 0) // frame_tokens
    sees_frame = (key_frame >= query_frame_low + lookahead - 1 - window) & (
        key_frame <= query_frame_high + lookahead - 1
    )
    return (k < txt_len) | sees_frame


@dataclasses.dataclass(frozen=True)
class DenoisingChunk:
    """Frames start..stop-1 go through the denoiser; frames keep_from..stop-1 take its result."""

    start: int
    stop: int
    keep_from: int


def denoising_chunks(
    frames: int, chunk_frames: int | None, overlap_frames: int | None
) -> list[DenoisingChunk]:
    """The chunks of the official `process_denoising`, in order, each reading the frames the
    chunks before it already denoised.

    chunk_frames: frames per chunk (the official local_attn_window, None: the whole video);
    overlap_frames: frames shared with the previous chunk, which only give context (the
    official denoiser_window; None: chunk_frames - 1). The official loop runs until a chunk
    starts past the last frame; the chunks after the first one reaching the last frame write
    nothing, so they are left out here. When overlap >= chunk and the first chunk is not the
    whole video the official loop never ends: that is refused.
    """
    chunk = frames if chunk_frames is None else chunk_frames
    overlap = chunk - 1 if overlap_frames is None else overlap_frames
    if chunk < 1:
        raise ValueError(f"denoising chunks need at least one frame, got {chunk}")
    chunks, start, keep_from = [], 0, 0
    while True:
        stop = min(start + chunk, frames)
        chunks.append(DenoisingChunk(start, stop, min(start + keep_from, stop)))
        if start + chunk >= frames:
            return chunks
        if chunk - overlap <= 0:
            raise ValueError(
                f"denoising in chunks of {chunk} frames overlapping by {overlap} never advances; "
                "use a denoiser_window smaller than the chunk"
            )
        keep_from = overlap
        start += chunk - overlap


@dataclasses.dataclass(frozen=True)
class SamplingWindow:
    """Tokens context_start..stop-1 are in the deep block's cache while tokens start..stop-1 are
    sampled; tokens context_start..start-1 (already sampled) are re-encoded first as a fresh
    sequence beginning with sos (none for the first window)."""

    context_start: int
    start: int
    stop: int


def sampling_windows(
    num_tokens: int, frame_tokens: int, window_frames: int | None, context_frames: int | None
) -> list[SamplingWindow]:
    """Windows of the official Jacobi path with local_attn_window (and `--context_length`).

    The first window covers window_frames frames; each later one re-encodes the last
    context_frames sampled frames and adds window_frames - context_frames new frames, so the
    cache never holds more than window_frames frames (plus the text). Without a window, or a
    video no longer than it, one window covers everything.
    """
    if window_frames is None or num_tokens <= window_frames * frame_tokens:
        return [SamplingWindow(0, 0, num_tokens)]
    context_frames = window_frames - 1 if context_frames is None else context_frames
    if not 1 <= context_frames < window_frames:
        raise ValueError(
            f"context_length={context_frames} must be at least 1 and less than the window "
            f"of {window_frames} frames (local_attn_window)"
        )
    window, context = window_frames * frame_tokens, context_frames * frame_tokens
    windows = [SamplingWindow(0, 0, window)]
    while windows[-1].stop < num_tokens:
        start = windows[-1].stop
        windows.append(SamplingWindow(start - context, start, min(start + window - context, num_tokens)))
    return windows
