"""Preallocated key/value caches for autoregressive sampling, written in place at a given position.

Caches are explicit objects created per sampling call and passed down; nothing is
stored on the modules. Keys are stored after RoPE (rotation depends only on the
position the key was written at). Every step writes its L new entries at a position
`start` and attends to the whole preallocated capacity through a mask, so the arrays
keep one shape for the whole sampling call: a compiled step takes the cache arrays and
the position as inputs, and a Jacobi retry simply writes the same positions again.
"""

from __future__ import annotations

import mlx.core as mx

# Attention reads the cache in prefixes of a multiple of this many positions: the softmax
# over masked-out positions is most of the attention time on CPU, and each distinct prefix
# size costs one more compilation of the step.
VISIBLE_STEP = 64


def visible_positions(end: int, capacity: int) -> int:
    """The prefix size that covers cache positions 0..end-1: end rounded up to VISIBLE_STEP."""
    return min(capacity, -(-end // VISIBLE_STEP) * VISIBLE_STEP)


def visible_keys_mask(start: mx.array, length: int, visible: int) -> mx.array:
    """(length, visible) bool: query i (at position start + i) sees keys at positions <= start + i."""
    query_positions = start + mx.arange(length, dtype=mx.int32)
    return mx.arange(visible, dtype=mx.int32)[None, :] <= query_positions[:, None]


class LayerCache:
    """Keys and values of one attention layer, each (B, heads, capacity, head_dim)."""

    def __init__(self, keys: mx.array, values: mx.array):
        self.keys = keys
        self.values = values
        self.start: mx.array | None = None  # write position of the current step (int32 scalar)
        self.visible = keys.shape[2]  # cache positions the current step attends to (a prefix)
        self.mask: mx.array | None = None  # (L, visible) visibility of the current step

    @classmethod
    def empty(cls, batch: int, heads: int, capacity: int, head_dim: int, dtype: mx.Dtype) -> LayerCache:
        keys = mx.zeros((batch, heads, capacity, head_dim), dtype=dtype)
        return cls(keys, mx.zeros_like(keys))

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def write(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Write (B, heads, L, head_dim) at `start`; return the first `visible` positions of keys, values."""
        self.keys = mx.slice_update(self.keys, keys.astype(self.keys.dtype), self.start, axes=(2,))
        self.values = mx.slice_update(self.values, values.astype(self.values.dtype), self.start, axes=(2,))
        return self.keys[:, :, : self.visible], self.values[:, :, : self.visible]


class BlockCache:
    """One LayerCache per transformer layer of a flow block."""

    def __init__(self, layers: list[LayerCache]):
        self.layers = layers

    @classmethod
    def empty(
        cls, num_layers: int, batch: int, heads: int, capacity: int, head_dim: int, dtype: mx.Dtype
    ) -> BlockCache:
        return cls([LayerCache.empty(batch, heads, capacity, head_dim, dtype) for _ in range(num_layers)])

    @classmethod
    def from_state(cls, arrays: list[mx.array]) -> BlockCache:
        """Rebuild from `state()` (keys, values, keys, values, ...), e.g. inside a compiled step."""
        return cls([LayerCache(arrays[i], arrays[i + 1]) for i in range(0, len(arrays), 2)])

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity if self.layers else 0

    def prepare_write(self, start: mx.array, length: int, visible: int) -> None:
        """Set the write position, attended prefix and mask of the next step (L = length new tokens).

        `visible` must cover start + length (a static size; `start` may be a traced array).
        """
        mask = visible_keys_mask(start, length, visible)
        for layer in self.layers:
            layer.start, layer.visible, layer.mask = start, visible, mask

    def state(self) -> list[mx.array]:
        """The cache arrays (keys, values per layer), for mx.eval and compiled steps."""
        return [a for layer in self.layers for a in (layer.keys, layer.values)]
