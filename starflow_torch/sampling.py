"""Noise -> data for one flow block: sequential (KV-cached) and Jacobi (block-parallel) sampling.

Both samplers walk the block's causal sequence. Target j is token j with sos
(input j is sos for j = 0, else token j-1) and token j+1 without sos (token 0 is
copied from the noise). Guidance doubles the batch: the first half is conditional,
the second null, and both continue with the guided token (SPEC section 3).

A sequential step is a Jacobi step of one token, which is exact after one iteration.
Everything runs under torch.no_grad (not inference_mode: samples may feed the autograd
of denoising); the causal mask is built once per cache.
"""

from __future__ import annotations

import dataclasses

import torch
from tqdm.auto import tqdm

from starflow_core.frames import SamplingWindow
from starflow_core.video.settings import progress_units

from .flow_block import FlowBlock, Rope
from .flow_math import guide_linear, guide_scale_shift, scale_and_log_scale, to_data, to_noise
from .kv_cache import BlockCache

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

    text: torch.Tensor | None  # (B', txt_len, txt_dim)
    labels: torch.Tensor | None  # (B',), -1 = null class
    guidance: float  # 0 disables
    annealed: bool
    attn_temp: float


def attention_query_scale(
    config, cond: BlockConditions, batch: int, device: torch.device
) -> torch.Tensor | None:
    """Per-row factor (B', 1, 1, 1) on the attention queries for attn_temp != 1, else None.

    Official STARFlow tempers every row; TARFlow only the null branch of a guided batch."""
    if cond.attn_temp == 1.0:
        return None
    guided = cond.guidance > 0
    rows = 2 * batch if guided else batch
    first = batch if (config.family == "tarflow" and guided) else 0
    scale = torch.ones(rows, 1, 1, 1, device=device)
    scale[first:] = 1.0 / cond.attn_temp
    return scale


def guided_shift_scale(
    config,
    cond: BlockConditions,
    raw_scale: torch.Tensor,
    shift: torch.Tensor,
    steps: torch.Tensor,
    num_targets: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        weight = (weight * steps / num_targets).view(1, -1, 1)
    shift_c, shift_u = shift.chunk(2)
    if config.family == "tarflow":
        raw_c, raw_u = raw_scale.chunk(2)
        scale, log_scale = scale_and_log_scale(guide_linear(raw_c, raw_u, weight), config.use_softplus)
        return guide_linear(shift_c, shift_u, weight), scale, log_scale
    scale, _ = scale_and_log_scale(raw_scale, config.use_softplus)
    scale_c, scale_u = scale.chunk(2)
    guided_shift, guided_scale = guide_scale_shift(shift_c, scale_c, shift_u, scale_u, weight)
    return guided_shift, guided_scale, torch.log(guided_scale)


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
        noise: torch.Tensor,
        cond: BlockConditions,
        rope: Rope | None,
        frames: int = 1,
        prefix: torch.Tensor | None = None,
        windows: list[SamplingWindow] | None = None,
    ):
        self.block, self.cond, self.rope, self.frames = block, cond, rope, frames
        config = block.config
        self.guided = cond.guidance > 0
        self.batch = noise.shape[0]
        z = block.permute(noise, frames).float()
        self.z = torch.cat([z, z]) if self.guided else z  # (B', T, C')
        rows, tokens, token_dim = self.z.shape
        self.frame_tokens = tokens // frames
        self.offset = 0 if config.sos else 1  # target j is token j + offset
        self.num_targets = tokens - self.offset
        if config.sos:  # (B', 1 + T, C'); x starts at the Jacobi guess x = z
            sos = block.sos_embed.float().expand(rows, 1, token_dim)
            known = self.z
            if prefix is not None:  # the known first tokens replace the guess
                prefix = prefix.float()
                prefix = torch.cat([prefix, prefix]) if self.guided else prefix
                known = torch.cat([prefix, self.z[:, prefix.shape[1] :]], dim=1)
            self.sequence = torch.cat([sos, known], dim=1)
        else:  # (B', T, C'); token 0 is copied from the noise
            self.sequence = self.z.clone()
        self.windows = list(windows or [SamplingWindow(0, 0, self.num_targets)])
        if prefix is not None:
            first = self.windows[0]
            self.windows[0] = SamplingWindow(first.context_start, prefix.shape[1], first.stop)
        self.query_scale = attention_query_scale(config, cond, self.batch, z.device)
        self.txt_len = cond.text.shape[1] if block.has_text else 0
        self.base = 0  # the target at cache position txt_len (context start of the window)
        weight = block.proj_in.weight
        self.cache = BlockCache.empty(
            len(block.attn_blocks),
            rows,
            block.layer_config.kv_heads,  # grouped heads: the cache holds only the key/value heads
            self.txt_len + max(w.stop - w.context_start for w in self.windows),
            config.head_dim,
            weight.dtype,
            weight.device,
        )
        if block.has_text:  # text tokens fill the cache first, at positions 0..txt_len-1
            self.cache.prepare_write(0, self.txt_len)
            text_rope = None if rope is None else (rope[0][: self.txt_len], rope[1][: self.txt_len])
            block.trunk(block.text_tokens(cond.text), text_rope, self.cache, self.query_scale)

    def _rope(self, cache_start: int, length: int) -> Rope | None:
        """(cos, sin) rows for cache positions cache_start..cache_start+length-1, each (L, head_dim)."""
        if self.rope is None:
            return None
        cos, sin = self.rope
        return cos[cache_start : cache_start + length], sin[cache_start : cache_start + length]

    def begin(self, window: SamplingWindow) -> None:
        """Start a window: its context tokens (sampled or known) fill the cache after the text,
        as a fresh sequence [sos, x_context_start .. x_start-2] (official re-encoding), one
        frame's worth of tokens at a time so the scratch stays a frame's."""
        self.base = window.context_start
        length = window.start - window.context_start
        sos = self.sequence[:, :1]
        inputs = torch.cat([sos, self.sequence[:, window.context_start + 1 : window.start]], dim=1)
        for offset in range(0, length, self.frame_tokens):
            piece = min(self.frame_tokens, length - offset)
            cache_start = self.txt_len + offset
            self.cache.prepare_write(cache_start, piece)
            h = self.block.embed(
                inputs[:, offset : offset + piece], window.context_start + offset, self.cond.labels
            )
            self.block.trunk(h, self._rope(cache_start, piece), self.cache, self.query_scale)

    def step(self, first: int, length: int, read: int | None = None) -> torch.Tensor:
        """Run targets first..first+length-1 (one evaluation) from the inputs at `read` (default
        first; a video's first Jacobi guess reads the frame before); return the relative change
        (scalar), mean((new - old)^2) / mean(new^2) over the written tokens.
        """
        read = first if read is None else read
        inputs = self.sequence[:, read : read + length]  # (B', L, C')
        cache_start = self.txt_len + first - self.base
        self.cache.prepare_write(cache_start, length)
        h = self.block.embed(inputs, first, self.cond.labels)
        h = self.block.trunk(h, self._rope(cache_start, length), self.cache, self.query_scale)
        raw_scale, shift = self.block.head(h)
        shift, scale = self.combine(raw_scale, shift, first, length)
        noise = self.z[:, first + self.offset : first + self.offset + length]
        new = to_data(noise, shift, scale)  # (B', L, C')
        written = self.sequence[:, first + 1 : first + 1 + length]
        change = (new - written).square().mean() / new.square().mean().clamp_min(1e-30)
        written.copy_(new)
        return change

    def combine(self, raw_scale, shift, first: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        steps = torch.arange(first + 1, first + length + 1, device=shift.device, dtype=torch.float32)
        shift, scale, _ = guided_shift_scale(
            self.block.config, self.cond, raw_scale, shift, steps, self.num_targets
        )
        if not self.guided:
            return shift, scale
        return torch.cat([shift, shift]), torch.cat([scale, scale])

    def result(self) -> torch.Tensor:
        tokens = self.sequence[: self.batch, 1:] if self.block.config.sos else self.sequence[: self.batch]
        return self.block.permute(tokens, self.frames)


@torch.no_grad()
def sample_block_sequential(
    block: FlowBlock,
    noise: torch.Tensor,
    cond: BlockConditions,
    rope: Rope | None,
    progress: bool = False,
    frames: int = 1,
    prefix: torch.Tensor | None = None,
    windows: list[SamplingWindow] | None = None,
) -> torch.Tensor:
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


@torch.no_grad()
def sample_block_jacobi(
    block: FlowBlock,
    noise: torch.Tensor,
    cond: BlockConditions,
    rope: Rope | None,
    block_size: int,
    tol: float,
    max_iter: int,
    progress: bool = False,
    frames: int = 1,
    prefix: torch.Tensor | None = None,
    windows: list[SamplingWindow] | None = None,
) -> tuple[torch.Tensor, list[int]]:
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
    block: FlowBlock, tokens: torch.Tensor, cond: BlockConditions, rope: Rope | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact inverse of sampling one block under the same conditions and guidance:
    data tokens (B, T, C') raster order -> (noise tokens (B, T, C'), log|det| (B,)).

    Teacher forcing: each token's shift and scale depend only on the tokens before it,
    which are all known here, so one parallel pass (both branches when guided, each
    reading the same tokens, as in sampling) gives every token's affine map at once.
    Without guidance this is the block's forward pass. Differentiable (no no_grad).
    """
    config = block.config
    batch, length, _ = tokens.shape
    permuted = block.permute(tokens.float())
    rows = torch.cat([permuted, permuted]) if cond.guidance > 0 else permuted
    query_scale = attention_query_scale(config, cond, batch, tokens.device)
    raw_scale, shift = block.predict(rows, cond.text, rope, cond.labels, query_scale)
    offset = 0 if config.sos else 1  # token t is target t - offset, as in _BlockSampler
    steps = torch.arange(1 - offset, length + 1 - offset, device=tokens.device, dtype=torch.float32)
    shift, scale, log_scale = guided_shift_scale(config, cond, raw_scale, shift, steps, length - offset)
    noise = to_noise(permuted, shift, scale)
    return block.permute(noise), -log_scale.sum(dim=(1, 2))
