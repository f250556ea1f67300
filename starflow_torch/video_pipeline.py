"""Prompt (and optionally a first frame) -> video with STARFlow-V in PyTorch.

    pipe = StarFlowVideoPipeline.from_pretrained("starflow-v-7b-t2v-480p", device="cuda")
    videos = pipe.video("a red fox running in the snow", seeds=[0], num_frames=81, fps=16,
                        aspect_ratio="16:9")
    videos.frames, videos.seeds, videos.fps, videos.save("fox.mp4")

The steps are framework-free (starflow_core.generation.video_pipeline.VideoPipelineBase); this
class does the torch array work. Videos are (B, T, C, H, W) here; results are channels last.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from starflow_core.generation.settings import GenerationSettings
from starflow_core.generation.video_pipeline import VideoPipelineBase
from starflow_core.video.settings import Window

from . import video
from .pipeline import StarFlowPipeline
from .sampling import SamplingStats


class StarFlowVideoPipeline(VideoPipelineBase, StarFlowPipeline):
    @property
    def vae(self):
        """The VAE on first use: the Wan2.2 video VAE (with the model's temporal scale) or an image VAE."""
        if self._vae is None and self.parts.video_vae:
            from .wan_vae import AutoencoderKLWan  # diffusers: slow to import, only for video VAEs

            scale = self.parts.video.temporal_scale if self.parts.video else 1.0
            vae = AutoencoderKLWan.from_pretrained(self.parts.vae, dtype=self.dtype, temporal_scale=scale)
            self._vae = vae.to(self.device).eval()
        return StarFlowPipeline.vae.fget(self)

    # ----- array work ------------------------------------------------------------------------
    def video_noise_array(self, noise: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(noise).to(self.device, self.dtype)  # (B, T, C, h, w)

    def video_numpy(self, latents: torch.Tensor) -> np.ndarray:
        return latents.detach().float().cpu().numpy()

    def frame_array(self, frame: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(frame.transpose(0, 3, 1, 2), dtype=np.float32)).to(
            self.device
        )

    @torch.no_grad()
    def encode_frame(self, frame: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return frame
        if self.parts.video_vae:
            return self.vae.encode(frame[:, None].to(self.dtype))[:, 0]  # a one-frame video
        return self.vae.encode(frame)

    def to_numpy_frame(self, frame: torch.Tensor) -> np.ndarray:
        return frame.detach().float().cpu().numpy()

    def latent_frame_array(self, frame: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(frame)).to(self.device, self.dtype)

    @torch.no_grad()
    def sample_video(
        self,
        noise: torch.Tensor,
        y: torch.Tensor | None,
        y_null: torch.Tensor | None,
        settings: GenerationSettings,
        first_frame: torch.Tensor | None,
        window: Window | None,
        progress: bool,
        callback: Callable[[int, torch.Tensor], None] | None,
    ) -> tuple[torch.Tensor, int]:
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
            ).float()
        return latents, stats.steps

    @torch.no_grad()
    def denoise_video(self, latents: torch.Tensor, y: torch.Tensor | None, chunk_frames: int) -> torch.Tensor:
        rows = []
        for i in range(latents.shape[0]):  # one video at a time, as the official denoising_batch_size 1
            row_y = None if y is None else y[i : i + 1]
            rows.append(video.denoise_video(self.flow, latents[i : i + 1], row_y, chunk_frames))
        return torch.cat(rows)

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor, progress: bool) -> np.ndarray:
        if self.vae is None:  # pixel models: the samples are the frames
            return latents.float().permute(0, 1, 3, 4, 2).cpu().numpy()
        videos = []
        for i in range(latents.shape[0]):
            chunks = []
            bar = tqdm(total=latents.shape[1], desc="decoding", unit="latent frame", disable=not progress)
            for chunk in self.vae.iter_decode(latents[i : i + 1]):
                chunks.append(chunk.permute(0, 1, 3, 4, 2).cpu().numpy())
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
