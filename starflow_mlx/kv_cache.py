"""Preallocated key/value caches for autoregressive sampling, with rewind for Jacobi.

Caches are explicit objects created per sampling call and passed down; nothing is
stored on the modules. Keys are stored after RoPE (rotation depends only on the
position the key was written at).
"""

from __future__ import annotations

import mlx.core as mx


class LayerCache:
    """Keys and values of one attention layer: (B, heads, capacity, head_dim), written in place."""

    def __init__(self, batch: int, heads: int, capacity: int, head_dim: int, dtype: mx.Dtype):
        self.keys = mx.zeros((batch, heads, capacity, head_dim), dtype=dtype)
        self.values = mx.zeros_like(self.keys)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def append(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Write (B, heads, L, head_dim) at the current index; return everything written so far."""
        end = self.length + keys.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        self.keys[:, :, self.length : end] = keys.astype(self.keys.dtype)
        self.values[:, :, self.length : end] = values.astype(self.values.dtype)
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def rewind(self, steps: int) -> None:
        self.length = max(0, self.length - steps)


class BlockCache:
    """One LayerCache per transformer layer of a flow block."""

    def __init__(
        self, num_layers: int, batch: int, heads: int, capacity: int, head_dim: int, dtype: mx.Dtype
    ):
        self.layers = [LayerCache(batch, heads, capacity, head_dim, dtype) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def rewind(self, steps: int) -> None:
        for layer in self.layers:
            layer.rewind(steps)

    def state(self) -> list[mx.array]:
        """The cache arrays, for mx.eval."""
        return [a for layer in self.layers for a in (layer.keys, layer.values)]
