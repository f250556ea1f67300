"""Prompt (and optionally a first frame) -> video with STARFlow-V in MLX.

    pipe = StarFlowVideoPipeline.from_pretrained("starflow-v-7b-t2v-480p", quantize=8)
    videos = pipe.video("a red fox running in the snow", seeds=[0], num_frames=81, fps=16,
                        aspect_ratio="16:9")
    videos.frames, videos.seeds, videos.fps, videos.save("fox.mp4")

The steps are framework-free (starflow_core.generation.video_pipeline.VideoPipelineBase); this
class does the MLX array work. Videos are (B, T, H, W, C), channels last.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from starflow_core.generation.settings import GenerationSettings
from starflow_core.generation.video_pipeline import VideoPipelineBase
from starflow_core.video.settings import Window

from . import video
from .pipeline import StarFlowPipeline
from .sampling import SamplingStats
from .wan_vae import AutoencoderKLWan


class StarFlowVideoPipeline(VideoPipelineBase, StarFlowPipeline):
    @property
    def vae(self):
        """The VAE on first use: the Wan2.2 video VAE (with the model's temporal scale) or an image VAE."""
        if self._vae is None and self.parts.video_vae:
            scale = self.parts.video.temporal_scale if self.parts.video else 1.0
            self._vae = AutoencoderKLWan.from_pretrained(
                self.parts.vae, dtype=self.dtype, temporal_scale=scale
            )
        return StarFlowPipeline.vae.fget(self)

    # ----- array work ------------------------------------------------------------------------
    def video_noise_array(self, noise: np.ndarray) -> mx.array:
        return mx.array(noise.transpose(0, 1, 3, 4, 2)).astype(self.dtype)  # (B, T, h, w, C)

    def video_numpy(self, latents: mx.array) -> np.ndarray:
        return np.array(latents.astype(mx.float32)).transpose(0, 1, 4, 2, 3)

    def frame_array(self, frame: np.ndarray) -> mx.array:
        return mx.array(np.ascontiguousarray(frame, dtype=np.float32))

    def encode_frame(self, frame: mx.array) -> mx.array:
        if self.vae is None:
            return frame
        if self.parts.video_vae:
            return self.vae.encode(frame[:, None])[:, 0]  # a one-frame video
        return self.vae.encode(frame)

    def to_numpy_frame(self, frame: mx.array) -> np.ndarray:
        return np.array(frame.astype(mx.float32)).transpose(0, 3, 1, 2)

    def latent_frame_array(self, frame: np.ndarray) -> mx.array:
        return mx.array(frame.transpose(0, 2, 3, 1)).astype(self.dtype)

    def sample_video(
        self,
        noise: mx.array,
        y: mx.array | None,
        y_null: mx.array | None,
        settings: GenerationSettings,
        first_frame: mx.array | None,
        window: Window | None,
        progress: bool,
        callback: Callable[[int, mx.array], None] | None,
    ) -> tuple[mx.array, int]:
        stats = SamplingStats()
        with windowed(self.flow, window):
            latents = self.flow.sample(
                noise,
                y,
                y_null,
                settings.guidance,
                jacobi=settings.jacobi,
                block_size=settings.block_size,
                tol=settings.tol,
                max_iter=settings.max_iter,
                progress=progress,
                stats=stats,
                callback=callback,
                first_frame=first_frame,
                context_length=window.context if window else None,
            ).astype(mx.float32)
        mx.eval(latents)
        return latents, stats.steps

    def denoise_video(self, latents: mx.array, y: mx.array | None, chunk_frames: int) -> mx.array:
        rows = []
        for i in range(latents.shape[0]):  # one video at a time, as the official denoising_batch_size 1
            row = video.denoise_video(
                self.flow, latents[i : i + 1], None if y is None else y[i : i + 1], chunk_frames
            )
            mx.eval(row)
            rows.append(row)
        return mx.concatenate(rows)

    def decode_video(self, latents: mx.array, progress: bool) -> np.ndarray:
        if self.vae is None:  # pixel models: the samples are the frames
            return np.array(latents.astype(mx.float32))
        videos = []
        for i in range(latents.shape[0]):
            chunks = []
            bar = tqdm(total=latents.shape[1], desc="decoding", unit="latent frame", disable=not progress)
            for chunk in self.vae.iter_decode(latents[i : i + 1]):
                chunks.append(np.array(chunk))
                bar.update(1)
            bar.close()
            videos.append(np.concatenate(chunks, axis=1))
        return np.concatenate(videos)


@contextlib.contextmanager
def windowed(flow, window: Window | None):
    """The flow sampling with `window` frames in its deep block (when it has no window of its own)."""
    config = flow.config
    if window is None or config.local_attn_window == window.frames:
        yield
        return
    flow.config = config.replace(local_attn_window=window.frames)
    try:
        yield
    finally:
        flow.config = config
