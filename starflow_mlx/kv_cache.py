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


def visible_keys_mask(start: mx.array, length: int, capacity: int) -> mx.array:
    """(length, capacity) bool: query i (at position start + i) sees keys at positions <= start + i."""
    query_positions = start + mx.arange(length, dtype=mx.int32)
    return mx.arange(capacity, dtype=mx.int32)[None, :] <= query_positions[:, None]


class LayerCache:
    """Keys and values of one attention layer, each (B, heads, capacity, head_dim)."""

    def __init__(self, keys: mx.array, values: mx.array):
        self.keys = keys
        self.values = values
        self.start: mx.array | None = None  # write position of the current step (int32 scalar)
        self.mask: mx.array | None = None  # (L, capacity) visibility of the current step

    @classmethod
    def empty(cls, batch: int, heads: int, capacity: int, head_dim: int, dtype: mx.Dtype) -> LayerCache:
        keys = mx.zeros((batch, heads, capacity, head_dim), dtype=dtype)
        return cls(keys, mx.zeros_like(keys))

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def write(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Write (B, heads, L, head_dim) at `start`; return the full (B, heads, capacity, head_dim) arrays."""
        self.keys = mx.slice_update(self.keys, keys.astype(self.keys.dtype), self.start, axes=(2,))
        self.values = mx.slice_update(self.values, values.astype(self.values.dtype), self.start, axes=(2,))
        return self.keys, self.values


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

    def prepare_write(self, start: mx.array, length: int) -> None:
        """Set the write position and mask of the next step (L = length new tokens) in every layer."""
        mask = visible_keys_mask(start, length, self.capacity)
        for layer in self.layers:
            layer.start, layer.mask = start, mask

    def state(self) -> list[mx.array]:
        """The cache arrays (keys, values per layer), for mx.eval and compiled steps."""
        return [a for layer in self.layers for a in (layer.keys, layer.values)]
