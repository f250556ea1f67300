"""Noise -> data for one flow block: sequential (KV-cached) and Jacobi (block-parallel) sampling.

Both samplers walk the block's causal sequence. Target j is token j with sos
(input j is sos for j = 0, else token j-1) and token j+1 without sos (token 0 is
copied from the noise). Guidance doubles the batch: the first half is conditional,
the second null, and both continue with the guided token (SPEC section 3).

Speed: one step (L target tokens: L = 1 sequential, L = block_size Jacobi) is a single
`mx.compile`d function of fixed-shape inputs (the whole sequence, the noise, the write
position and the preallocated KV cache), evaluated with one `mx.eval`. A sequential
step is a Jacobi step of one token, which is exact after one iteration.
"""

from __future__ import annotations

import dataclasses
import functools

import mlx.core as mx
from tqdm.auto import tqdm

from starflow_core.frames import SamplingWindow
from starflow_core.video.settings import progress_units

from .flow_block import FlowBlock, Rope
from .flow_math import guide_linear, guide_scale_shift, scale_and_log_scale, to_data, to_noise
from .kv_cache import BlockCache, visible_positions

PROGRESS_DELAY = 1.0  # seconds before a block's progress bar appears: fast blocks stay quiet


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


def attention_query_scale(config, cond: BlockConditions, batch: int) -> mx.array | None:
    """Per-row factor (B', 1, 1, 1) on the attention queries for attn_temp != 1, else None.

    Official STARFlow tempers every row; TARFlow only the null branch of a guided batch."""
    if cond.attn_temp == 1.0:
        return None
    guided = cond.guidance > 0
    rows = 2 * batch if guided else batch
    first = batch if (config.family == "tarflow" and guided) else 0
    factors = [1.0] * first + [1.0 / cond.attn_temp] * (rows - first)
    return mx.array(factors).reshape(rows, 1, 1, 1)


def guided_shift_scale(
    config, cond: BlockConditions, raw_scale: mx.array, shift: mx.array, steps: mx.array, num_targets: int
) -> tuple[mx.array, mx.array, mx.array]:
    """The affine map of each target token: (shift, scale, log scale), each (B, L, C').

    Guided (raw_scale and shift hold 2B rows, conditional first): the guided Gaussian of
    SPEC section 3, which both branches follow; B rows come back. `steps` (L,) are the
    targets' 1-based numbers, for annealed guidance w * step / num_targets.
    """
    if cond.guidance <= 0:
        scale, log_scale = scale_and_log_scale(raw_scale, config.use_softplus)
        return shift, scale, log_scale
    weight = cond.guidance
    if cond.annealed:
        weight = (weight * steps / num_targets).reshape(1, -1, 1)
    shift_c, shift_u = mx.split(shift, 2, axis=0)
    if config.family == "tarflow":
        raw_c, raw_u = mx.split(raw_scale, 2, axis=0)
        scale, log_scale = scale_and_log_scale(guide_linear(raw_c, raw_u, weight), config.use_softplus)
        return guide_linear(shift_c, shift_u, weight), scale, log_scale
    scale, _ = scale_and_log_scale(raw_scale, config.use_softplus)
    scale_c, scale_u = mx.split(scale, 2, axis=0)
    guided_shift, guided_scale = guide_scale_shift(shift_c, scale_c, shift_u, scale_u, weight)
    return guided_shift, guided_scale, mx.log(guided_scale)


class _BlockSampler:
    """The state of inverting one block: the causal sequence, the noise and the KV cache.

    `sequence` holds the block's inputs and, one position later, its outputs: with sos
    it is [sos, x_0 .. x_{T-1}] and target j (token j) reads position j and is written at
    j + 1; without sos it is x itself and target j (token j + 1) reads j and is written
    at j + 1. So a step over targets first..first+L-1 reads positions first..first+L-1
    and writes first+1..first+L.

    Video (sos models): `prefix` (B, P, C') permuted tokens already known (image-to-video's
    first frame), and `windows` (starflow_core.frames.sampling_windows): the cache holds one
    window, target j of window w at cache position txt_len + j - w.context_start, and a
    window starts by re-encoding its context tokens as a fresh sequence [sos, ...].
    """

    def __init__(
        self,
        block: FlowBlock,
        noise: mx.array,
        cond: BlockConditions,
        rope: Rope | None,
        frames: int = 1,
        prefix: mx.array | None = None,
        windows: list[SamplingWindow] | None = None,
    ):
        self.block, self.cond, self.rope, self.frames = block, cond, rope, frames
        config = block.config
        self.guided = cond.guidance > 0
        self.batch = noise.shape[0]
        z = block.permute(noise, frames).astype(mx.float32)
        self.z = mx.concatenate([z, z]) if self.guided else z  # (B', T, C')
        rows, tokens, token_dim = self.z.shape
        self.frame_tokens = tokens // frames
        self.offset = 0 if config.sos else 1  # target j is token j + offset
        self.num_targets = tokens - self.offset
        if config.sos:  # (B', 1 + T, C'); x starts at the Jacobi guess x = z
            sos = mx.broadcast_to(block.sos_embed.astype(mx.float32), (rows, 1, token_dim))
            known = self.z
            if prefix is not None:  # the known first tokens replace the guess
                prefix = prefix.astype(mx.float32)
                prefix = mx.concatenate([prefix, prefix]) if self.guided else prefix
                known = mx.concatenate([prefix, self.z[:, prefix.shape[1] :]], axis=1)
            self.sequence = mx.concatenate([sos, known], axis=1)
        else:  # (B', T, C'); token 0 is copied from the noise
            self.sequence = mx.array(self.z)
        self.windows = list(windows or [SamplingWindow(0, 0, self.num_targets)])
        if prefix is not None:
            first = self.windows[0]
            self.windows[0] = SamplingWindow(first.context_start, prefix.shape[1], first.stop)
        self.query_scale = attention_query_scale(config, cond, self.batch)
        self.txt_len = cond.text.shape[1] if block.has_text else 0
        self.base = 0  # the target at cache position txt_len (context start of the window)
        cache = BlockCache.empty(
            len(block.attn_blocks),
            rows,
            block.layer_config.kv_heads,  # grouped heads: the cache holds only the key/value heads
            self.txt_len + max(w.stop - w.context_start for w in self.windows),
            config.head_dim,
            block.proj_in.weight.dtype,
        )
        if block.has_text:  # text tokens fill the cache first, at positions 0..txt_len-1
            cache.prepare_write(mx.array(0, dtype=mx.int32), self.txt_len, self.txt_len)
            text_rope = None if rope is None else (rope[0][: self.txt_len], rope[1][: self.txt_len])
            block.trunk(block.text_tokens(cond.text), text_rope, cache, self.query_scale)
        self.cache_state = cache.state()
        mx.eval(self.sequence, self.cache_state)
        self.capacity = cache.capacity
        self._compiled_steps: dict[tuple, object] = {}

    def _rope(self, cache_start: mx.array, length: int) -> Rope | None:
        """(cos, sin) rows for cache positions cache_start..cache_start+length-1, each (L, head_dim)."""
        if self.rope is None:
            return None
        return tuple(
            mx.slice(table, cache_start, axes=(0,), slice_size=(length, table.shape[1]))
            for table in self.rope
        )

    def begin(self, window: SamplingWindow) -> None:
        """Start a window: its context tokens (sampled or known) fill the cache after the text,
        as a fresh sequence [sos, x_context_start .. x_start-2] (official re-encoding), one
        frame's worth of tokens at a time so the scratch stays a frame's."""
        self.base = window.context_start
        length = window.start - window.context_start
        sos = self.sequence[:, :1]
        inputs = mx.concatenate([sos, self.sequence[:, window.context_start + 1 : window.start]], axis=1)
        for offset in range(0, length, self.frame_tokens):
            piece = min(self.frame_tokens, length - offset)
            key = ("encode", piece, visible_positions(self.txt_len + offset + piece, self.capacity))
            compiled = self._compiled_steps.get(key)
            if compiled is None:
                compiled = mx.compile(functools.partial(self._encode, *key[1:]))
                self._compiled_steps[key] = compiled
            positions = (self.txt_len + offset, window.context_start + offset)
            self.cache_state = list(
                compiled(
                    inputs[:, offset : offset + piece],
                    *(mx.array(n, dtype=mx.int32) for n in positions),
                    *self.cache_state,
                )
            )
            mx.eval(self.cache_state)

    def _encode(
        self,
        length: int,
        visible: int,
        inputs: mx.array,
        cache_start: mx.array,
        first: mx.array,
        *cache_state,
    ) -> list[mx.array]:
        """Write the keys and values of `inputs` (B', L, C') at cache_start; the updated cache."""
        cache = BlockCache.from_state(list(cache_state))
        cache.prepare_write(cache_start, length, visible)
        h = self.block.embed(inputs, first, self.cond.labels)
        self.block.trunk(h, self._rope(cache_start, length), cache, self.query_scale)
        return cache.state()

    def _step(
        self,
        length: int,
        visible: int,
        sequence: mx.array,
        z: mx.array,
        first: mx.array,
        read: mx.array,
        cache_start: mx.array,
        *cache_state: mx.array,
    ):
        """Evaluate targets first..first+L-1 from the inputs at read..read+L-1 (first, or the
        frame before for a video's first Jacobi guess); a pure function of its inputs.

        Attention reads the first `visible` cache positions (static, covers cache_start + L).

        Returns the updated sequence, the relative change mean((new - old)^2) / mean(new^2)
        of the written tokens, and the updated cache arrays.
        """
        rows, _, token_dim = sequence.shape
        inputs = mx.slice(sequence, read, axes=(1,), slice_size=(rows, length, token_dim))  # (B', L, C')
        cache = BlockCache.from_state(list(cache_state))
        cache.prepare_write(cache_start, length, visible)
        h = self.block.embed(inputs, first, self.cond.labels)
        h = self.block.trunk(h, self._rope(cache_start, length), cache, self.query_scale)
        raw_scale, shift = self.block.head(h)
        shift, scale = self.combine(raw_scale, shift, first, length)
        noise = mx.slice(z, first + self.offset, axes=(1,), slice_size=(rows, length, token_dim))
        new = to_data(noise, shift, scale)  # (B', L, C')
        old = mx.slice(sequence, first + 1, axes=(1,), slice_size=(rows, length, token_dim))
        change = mx.mean(mx.square(new - old)) / mx.maximum(mx.mean(mx.square(new)), 1e-30)
        sequence = mx.slice_update(sequence, new, first + 1, axes=(1,))
        return (sequence, change, *cache.state())

    def step(self, first: int, length: int, read: int | None = None) -> mx.array:
        """Run targets first..first+length-1 (one evaluation) from the inputs at `read` (default
        first); return the relative change (scalar)."""
        cache_start = self.txt_len + first - self.base
        key = (length, visible_positions(cache_start + length, self.capacity))
        compiled = self._compiled_steps.get(key)
        if compiled is None:
            compiled = mx.compile(functools.partial(self._step, *key))
            self._compiled_steps[key] = compiled
        positions = (first, first if read is None else read, cache_start)
        outputs = compiled(
            self.sequence, self.z, *(mx.array(n, dtype=mx.int32) for n in positions), *self.cache_state
        )
        # drop the old arrays before evaluating so the cache updates can reuse their buffers
        self.sequence, change, self.cache_state = outputs[0], outputs[1], list(outputs[2:])
        del outputs
        mx.eval(self.sequence, change, self.cache_state)
        return change

    def combine(self, raw_scale, shift, first: mx.array, length: int) -> tuple[mx.array, mx.array]:
        steps = (first + 1 + mx.arange(length, dtype=mx.int32)).astype(mx.float32)
        shift, scale, _ = guided_shift_scale(
            self.block.config, self.cond, raw_scale, shift, steps, self.num_targets
        )
        if not self.guided:
            return shift, scale
        return mx.concatenate([shift, shift]), mx.concatenate([scale, scale])

    def result(self) -> mx.array:
        """The sampled tokens; also releases the compiled steps, which refer back to this sampler
        (a cycle Python cannot collect, that kept every block's KV cache alive after sampling)."""
        self._compiled_steps.clear()
        tokens = self.sequence[: self.batch, 1:] if self.block.config.sos else self.sequence[: self.batch]
        return self.block.permute(tokens, self.frames)


def sample_block_sequential(
    block: FlowBlock,
    noise: mx.array,
    cond: BlockConditions,
    rope: Rope | None,
    progress: bool = False,
    frames: int = 1,
    prefix: mx.array | None = None,
    windows: list[SamplingWindow] | None = None,
) -> mx.array:
    """Invert one block token by token with a KV cache. noise/result: (B, T, C') raster order
    (`frames` frames; prefix and windows as in _BlockSampler)."""
    sampler = _BlockSampler(block, noise, cond, rope, frames, prefix, windows)
    bar = tqdm(
        total=sampler.num_targets, disable=not progress, desc=f"block {block.index}", leave=False,
        delay=PROGRESS_DELAY, **progress_units(sampler.frames, sampler.frame_tokens),
    )  # fmt: skip
    bar.update(sampler.windows[0].start)
    for window in sampler.windows:
        sampler.begin(window)
        for j in range(window.start, window.stop):
            sampler.step(j, 1)
            bar.update(1)
    bar.close()
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
    frames: int = 1,
    prefix: mx.array | None = None,
    windows: list[SamplingWindow] | None = None,
) -> tuple[mx.array, list[int]]:
    """Invert one block chunk by chunk with Jacobi fixed-point iteration (SPEC section 3).

    Each chunk starts from x = z, re-evaluates all its tokens in parallel from the
    current guess, and stops when mean((x_new - x)^2) / mean(x_new^2) < tol or after
    max_iter; a retry overwrites the chunk's cache entries in place. In a video (official
    Jacobi path) chunks after the first frame hold 4 x block_size tokens and their first
    iteration reads the inputs one frame earlier (the previous frame as the guess). Returns
    the sample and the iteration count of each chunk.
    """
    sampler = _BlockSampler(block, noise, cond, rope, frames, prefix, windows)
    frame = sampler.frame_tokens
    iterations = []
    bar = tqdm(
        total=sampler.num_targets, disable=not progress, desc=f"block {block.index} (Jacobi)",
        leave=False, delay=PROGRESS_DELAY, **progress_units(sampler.frames, sampler.frame_tokens),
    )  # fmt: skip
    bar.update(sampler.windows[0].start)
    for window in sampler.windows:
        sampler.begin(window)
        first = window.start
        while first < window.stop:
            length = min(block_size if first <= frame else 4 * block_size, window.stop - first)
            for iteration in range(1, max_iter + 1):
                read = first - frame if (iteration == 1 and first > frame) else first
                change = sampler.step(first, length, read)
                if iteration == max_iter or change.item() < tol:
                    break
            iterations.append(iteration)
            bar.update(length)
            first += length
    bar.close()
    return sampler.result(), iterations


def invert_block(
    block: FlowBlock, tokens: mx.array, cond: BlockConditions, rope: Rope | None
) -> tuple[mx.array, mx.array]:
    """The exact inverse of sampling one block under the same conditions and guidance:
    data tokens (B, T, C') raster order -> (noise tokens (B, T, C'), log|det| (B,)).

    Teacher forcing: each token's shift and scale depend only on the tokens before it,
    which are all known here, so one parallel pass (both branches when guided, each
    reading the same tokens, as in sampling) gives every token's affine map at once.
    Without guidance this is the block's forward pass.
    """
    config = block.config
    batch, length, _ = tokens.shape
    permuted = block.permute(tokens.astype(mx.float32))
    rows = mx.concatenate([permuted, permuted]) if cond.guidance > 0 else permuted
    query_scale = attention_query_scale(config, cond, batch)
    raw_scale, shift = block.predict(rows, cond.text, rope, cond.labels, query_scale)
    offset = 0 if config.sos else 1  # token t is target t - offset, as in _BlockSampler
    steps = (mx.arange(length, dtype=mx.int32) + 1 - offset).astype(mx.float32)
    shift, scale, log_scale = guided_shift_scale(config, cond, raw_scale, shift, steps, length - offset)
    noise = to_noise(permuted, shift, scale)
    return block.permute(noise), -mx.sum(log_scale, axis=(1, 2))
