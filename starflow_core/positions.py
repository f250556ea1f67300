"""Rotary position angles of SPEC section 1, framework-free (both twins use these numbers).

Positions are assigned by *sequence index*, before a block permutes its tokens:
text token k sits at (0, 0, k * P / txt_len), image token (i, j) of an h x w grid at
(i * P / sqrt(hw), j * P / sqrt(hw), 0), where P is the training grid side. Scaling
by sqrt(hw) is what lets one model sample other resolutions and aspect ratios. In a video
(SPEC section 9) the token (i, j) of frame f sits at (i * P / sqrt(hw), j * P / sqrt(hw), f):
frames run one after another, the third coordinate counts frames unscaled (official
misc/pe.py get_positions with its frame count).

Pairing: by default dims (2j, 2j+1) rotate together by angle j. The official
`hf_style_rope` (the Hugging Face convention) pairs dims (j, j + head_dim/2) instead,
with the same angles; `halves=True` lays the table out for that pairing.
"""

from __future__ import annotations

import numpy as np

ROPE_THETA = 10000.0
TEXT_ROPE_FREQUENCIES = 8  # frequencies reserved for the third (text) coordinate


def _inverse_frequencies(width: int, step: int) -> np.ndarray:
    exponents = np.arange(0, width, step, dtype=np.float32)[: width // step] / np.float32(width)
    return (np.float32(1.0) / np.power(np.float32(ROPE_THETA), exponents)).astype(np.float32)


def rope_angles(
    head_dim: int,
    height: int,
    width: int,
    pt_seq_len: int,
    txt_len: int = 0,
    three_d: bool = False,
    halves: bool = False,
    frames: int = 1,
) -> np.ndarray:
    """Angles (txt_len + height*width, head_dim) float32, each pair (2j, 2j+1) sharing angle j,
    or with halves=True, each pair (j, j + head_dim/2).

    three_d: the model has txt_size > 0 (text tokens, or with txt_dim 0 no text), so every block, with or
    without text, uses 3D positions; txt_len is the number of text tokens this block
    attends to (0 for blocks without text). With head_dim 16 the row and column get no
    frequency: the 8 text frequencies fill the head. frames: the grid repeats once per frame
    (txt_len + frames*height*width rows), frame f at third coordinate f (3D only).
    """
    half = head_dim // 2
    mean_side = np.float32(np.sqrt(height * width))
    scale = np.float32(pt_seq_len)
    rows = np.arange(height, dtype=np.float32) / mean_side * scale
    cols = np.arange(width, dtype=np.float32) / mean_side * scale
    row_pos, col_pos = (np.tile(a.reshape(-1), frames) for a in np.meshgrid(rows, cols, indexing="ij"))
    frame_pos = np.repeat(np.arange(frames, dtype=np.float32), height * width)
    if three_d:
        spatial = _inverse_frequencies(half - TEXT_ROPE_FREQUENCIES, 2)
        third = (
            np.float32(1.0)
            / np.power(
                np.float32(ROPE_THETA),
                np.arange(TEXT_ROPE_FREQUENCIES, dtype=np.float32) / np.float32(TEXT_ROPE_FREQUENCIES),
            )
        ).astype(np.float32)
        text_pos = np.arange(txt_len, dtype=np.float32) / np.float32(max(txt_len, 1)) * scale
        zeros_txt = np.zeros(txt_len, dtype=np.float32)
        pos_row = np.concatenate([zeros_txt, row_pos])
        pos_col = np.concatenate([zeros_txt, col_pos])
        pos_third = np.concatenate([text_pos, frame_pos])
        angles = np.concatenate(
            [pos_row[:, None] * spatial, pos_col[:, None] * spatial, pos_third[:, None] * third], axis=-1
        )
    else:
        if txt_len or frames > 1:
            raise ValueError(
                "2D RoPE has no third coordinate for text or frames; such models use 3D positions"
            )
        spatial = _inverse_frequencies(half, 2)
        angles = np.concatenate([row_pos[:, None] * spatial, col_pos[:, None] * spatial], axis=-1)
    angles = angles.astype(np.float32)  # (L, head_dim / 2), one angle per pair
    if halves:
        return np.concatenate([angles, angles], axis=-1)  # (L, head_dim): pair j is (j, j + head_dim/2)
    return np.repeat(angles, 2, axis=-1)  # (L, head_dim): interleaved pairs
