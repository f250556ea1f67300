"""Noise -> data for one flow block: sequential (KV-cached) and Jacobi (block-parallel) sampling.

Both samplers walk the block's causal sequence. Target j is token j with sos
(input j is sos for j = 0, else token j-1) and token j+1 without sos (token 0 is
copied from the noise). Guidance doubles the batch: the first half is conditional,
the second null, and both continue with the guided token (SPEC section 3).
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx
from tqdm.auto import tqdm

from .flow_block import FlowBlock, Rope
from .flow_math import guide_linear, guide_scale_shift, scale_and_log_scale, to_data
from .kv_cache import BlockCache


@dataclasses.dataclass
class SamplingStats:
    """What a sampling call did: Jacobi iterations per chunk, per block (deep block first)."""

    jacobi_iterations: list[list[int]] = dataclasses.field(default_factory=list)
    steps: int = 0  # network evaluations of a token or chunk, all blocks

    @property
    def total_iterations(self) -> int:
        return sum(sum(block) for block in self.jacobi_iterations)


@dataclasses.dataclass(frozen=True)
class BlockConditions:
    """Everything a block needs besides its tokens, already batched (2B rows when guided)."""

    text: mx.array | None  # (B', txt_len, txt_dim)
    labels: mx.array | None  # (B',), -1 = null class
    guidance: float  # 0 disables
    annealed: bool
    attn_temp: float


class _BlockSampler:
    def __init__(self, block: FlowBlock, noise: mx.array, cond: BlockConditions, rope: Rope | None):
        self.block, self.cond, self.rope = block, cond, rope
        config = block.config
        self.guided = cond.guidance > 0
        self.batch = noise.shape[0]
        z = block.permute(noise).astype(mx.float32)
        self.z = mx.concatenate([z, z]) if self.guided else z  # (B', T, C')
        self.x = mx.array(self.z)  # the sample being built; starts at the Jacobi guess x = z
        self.offset = 0 if config.sos else 1  # target j is token j + offset
        self.num_targets = self.z.shape[1] - self.offset
        rows = self.z.shape[0]
        self.query_scale = None
        if cond.attn_temp != 1.0:  # official STARFlow: every row; TARFlow: the null branch only
            first = self.batch if (config.family == "tarflow" and self.guided) else 0
            factors = [1.0] * first + [1.0 / cond.attn_temp] * (rows - first)
            self.query_scale = mx.array(factors).reshape(rows, 1, 1, 1)
        txt_len = cond.text.shape[1] if block.has_text else 0
        self.txt_len = txt_len
        self.cache = BlockCache(
            len(block.attn_blocks),
            rows,
            config.num_heads,
            txt_len + self.z.shape[1],
            config.head_dim,
            block.proj_in.weight.dtype,
        )
        if block.has_text:  # text tokens fill the cache first
            block.trunk(block.text_tokens(cond.text), self._rope(-txt_len, 0), self.cache, self.query_scale)
            mx.eval(self.cache.state())

    def _rope(self, start: int, stop: int) -> Rope | None:
        if self.rope is None:
            return None
        cos, sin = self.rope
        lo, hi = self.txt_len + start, self.txt_len + stop
        return cos[lo:hi], sin[lo:hi]

    def inputs(self, first: int, stop: int) -> mx.array:
        """Input tokens for targets first..stop-1: token (target - 1), sos for target 0."""
        lo = first + self.offset - 1
        if lo >= 0:
            return self.x[:, lo : stop + self.offset - 1]
        sos = mx.broadcast_to(self.block.sos_embed.astype(mx.float32), (self.x.shape[0], 1, self.x.shape[2]))
        return mx.concatenate([sos, self.x[:, : stop + self.offset - 1]], axis=1)

    def run(self, first: int, stop: int) -> mx.array:
        """Evaluate targets first..stop-1 (appending to the cache); return their new values."""
        h = self.block.embed(self.inputs(first, stop), first, self.cond.labels)
        h = self.block.trunk(h, self._rope(first, stop), self.cache, self.query_scale)
        raw_scale, shift = self.block.head(h)
        shift, scale = self.combine(raw_scale, shift, first, stop)
        return to_data(self.z[:, first + self.offset : stop + self.offset], shift, scale)

    def combine(self, raw_scale, shift, first: int, stop: int) -> tuple[mx.array, mx.array]:
        config = self.block.config
        if not self.guided:
            scale, _ = scale_and_log_scale(raw_scale, config.use_softplus)
            return shift, scale
        weight = self.cond.guidance
        if self.cond.annealed:  # w * (t + 1) / T, per target
            steps = mx.arange(first + 1, stop + 1, dtype=mx.float32)
            weight = (weight * steps / self.num_targets).reshape(1, -1, 1)
        shift_c, shift_u = mx.split(shift, 2, axis=0)
        if config.family == "tarflow":
            raw_c, raw_u = mx.split(raw_scale, 2, axis=0)
            guided_shift = guide_linear(shift_c, shift_u, weight)
            scale, _ = scale_and_log_scale(guide_linear(raw_c, raw_u, weight), config.use_softplus)
        else:
            scale, _ = scale_and_log_scale(raw_scale, config.use_softplus)
            scale_c, scale_u = mx.split(scale, 2, axis=0)
            guided_shift, scale = guide_scale_shift(shift_c, scale_c, shift_u, scale_u, weight)
        return mx.concatenate([guided_shift, guided_shift]), mx.concatenate([scale, scale])

    def result(self) -> mx.array:
        return self.block.permute(self.x[: self.batch])


def sample_block_sequential(
    block: FlowBlock, noise: mx.array, cond: BlockConditions, rope: Rope | None, progress: bool = False
) -> mx.array:
    """Invert one block token by token with a KV cache. noise/result: (B, T, C') raster order."""
    sampler = _BlockSampler(block, noise, cond, rope)
    offset = sampler.offset
    for j in tqdm(range(sampler.num_targets), disable=not progress, desc=f"block {block.index}", leave=False):
        sampler.x[:, j + offset] = sampler.run(j, j + 1)[:, 0]
        mx.eval(sampler.x, sampler.cache.state())
    return sampler.result()


def sample_block_jacobi(
    block: FlowBlock,
    noise: mx.array,
    cond: BlockConditions,
    rope: Rope | None,
    block_size: int,
    tol: float,
    max_iter: int,
    progress: bool = False,
) -> tuple[mx.array, list[int]]:
    """Invert one block chunk by chunk with Jacobi fixed-point iteration (SPEC section 3).

    Each chunk starts from x = z, re-evaluates all its tokens in parallel from the
    current guess, and stops when mean((x_new - x)^2) / mean(x_new^2) < tol or after
    max_iter; the chunk's cache entries are rewound before every retry. Returns the
    sample and the iteration count of each chunk.
    """
    sampler = _BlockSampler(block, noise, cond, rope)
    offset, iterations = sampler.offset, []
    bar = tqdm(
        total=sampler.num_targets, disable=not progress, desc=f"block {block.index} (Jacobi)", leave=False
    )
    for first in range(0, sampler.num_targets, block_size):
        stop = min(first + block_size, sampler.num_targets)
        lo, hi = first + offset, stop + offset
        for iteration in range(1, max_iter + 1):
            new = sampler.run(first, stop)
            change = mx.mean(mx.square(new - sampler.x[:, lo:hi])) / mx.maximum(
                mx.mean(mx.square(new)), 1e-30
            )
            sampler.x[:, lo:hi] = new
            mx.eval(change, sampler.x, sampler.cache.state())
            if change.item() < tol or iteration == max_iter:
                break
            sampler.cache.rewind(stop - first)
        iterations.append(iteration)
        bar.update(stop - first)
    bar.close()
    return sampler.result(), iterations
