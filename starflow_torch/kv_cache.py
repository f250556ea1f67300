"""Preallocated key/value caches for autoregressive sampling, written in place at a given position.

Caches are explicit objects created per sampling call and passed down; nothing is
stored on the modules. Keys are stored after RoPE (rotation depends only on the
position the key was written at). Every step writes its L new entries at a position
`start` and attends to the positions written so far; a Jacobi retry simply writes the
same positions again. The causal mask is built once per cache and sliced per step.
"""

from __future__ import annotations

import torch


def visible_keys_mask(capacity: int, device) -> torch.Tensor:
    """(capacity, capacity) bool: the query at position i sees keys at positions <= i."""
    return torch.ones(capacity, capacity, dtype=torch.bool, device=device).tril()


class LayerCache:
    """Keys and values of one attention layer, each (B, heads, capacity, head_dim)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys = keys
        self.values = values
        self.start = 0  # write position of the current step
        self.mask: torch.Tensor | None = None  # (L, start + L) visibility of the current step

    @classmethod
    def empty(
        cls, batch: int, heads: int, capacity: int, head_dim: int, dtype: torch.dtype, device
    ) -> LayerCache:
        keys = torch.zeros(batch, heads, capacity, head_dim, dtype=dtype, device=device)
        return cls(keys, torch.zeros_like(keys))

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def write(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, heads, L, head_dim) at `start`; return positions 0..start+L-1 (views)."""
        end = self.start + keys.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        self.keys[:, :, self.start : end] = keys
        self.values[:, :, self.start : end] = values
        return self.keys[:, :, :end], self.values[:, :, :end]


class BlockCache:
    """One LayerCache per transformer layer of a flow block."""

    def __init__(self, layers: list[LayerCache]):
        self.layers = layers
        self._causal = visible_keys_mask(self.capacity, layers[0].keys.device) if layers else None

    @classmethod
    def empty(
        cls, num_layers: int, batch: int, heads: int, capacity: int, head_dim: int, dtype, device
    ) -> BlockCache:
        return cls(
            [LayerCache.empty(batch, heads, capacity, head_dim, dtype, device) for _ in range(num_layers)]
        )

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity if self.layers else 0

    def prepare_write(self, start: int, length: int) -> None:
        """Set the write position and mask of the next step (L = length new tokens) in every layer."""
        mask = None if length == 1 else self._causal[start : start + length, : start + length]
        for layer in self.layers:
            layer.start, layer.mask = start, mask

    def state(self) -> list[torch.Tensor]:
        """The cache tensors (keys, values per layer)."""
        return [t for layer in self.layers for t in (layer.keys, layer.values)]
