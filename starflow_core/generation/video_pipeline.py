"""The framework-free half of the video pipeline (STARFlow-V): the steps of text- and
image-to-video in the official sample.py's order, each twin supplying the array work.

    prompts  -> the official prompt template (fps, noise level, aspect ratio) -> T5 features of
                them and of the wrapped "" (guidance); label models: labels, no template
    seeds    -> noise (numpy (B, T', C, h, w), T' latent frames)
    --image  -> resized and centre-cropped, VAE-encoded, plus noise_std noise: the first frame
    flow.sample(noise, ..., first_frame, window)   (the sliding window beyond the training length)
    the learned self-denoiser in chunks (or the score step for models without one)
    Wan2.2 VAE decode (its temporal scale undone), frame by frame -> video in [-1, 1]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from starflow_core.generation.edit_inputs import describe_input, load_image
from starflow_core.generation.inputs import aspect_ratio_size, batch_prompts_and_seeds, draw_seeds
from starflow_core.generation.settings import GenerationSettings, check_finite
from starflow_core.generation.video_result import GeneratedVideos, VideoGeneration
from starflow_core.video.prompts import wrap_prompts
from starflow_core.video.settings import (
    VideoDefaults,
    Window,
    center_crop_box,
    latent_frames,
    make_video_noise,
    sliding_window,
)

Array = Any


@dataclasses.dataclass(frozen=True)
class VideoRequest:
    """One video run's shape, as the pipeline resolved it."""

    num_frames: int  # pixel frames
    latent_frames: int
    fps: int
    height: int
    width: int
    aspect_ratio: str | None  # what the template says (mix_aspect models), else None
    window: Window | None


class VideoPipelineBase:
    """Mixed into each twin's video pipeline (with that twin's StarFlowPipeline); the twin
    implements the array methods below."""

    # ----- array work, one implementation per twin -------------------------------------------
    def video_noise_array(self, noise: np.ndarray) -> Array:
        """(B, T, C, h, w) float32 numpy -> the flow's video layout, dtype and device."""
        raise NotImplementedError

    def frame_array(self, frame: np.ndarray) -> Array:
        """(B, H, W, C) float32 numpy in [-1, 1] -> the twin's image layout on its device."""
        raise NotImplementedError

    def encode_frame(self, frame: Array) -> Array:
        """One frame per row (B, ...) -> its latent frame (the VAE's; pixel models: itself)."""
        raise NotImplementedError

    def sample_video(
        self,
        noise: Array,
        y: Array | None,
        y_null: Array | None,
        settings: GenerationSettings,
        first_frame: Array | None,
        window: Window | None,
        progress: bool,
        callback: Callable[[int, Array], None] | None,
    ) -> tuple[Array, int]:
        """The flow's video sample (fp32) and its network evaluations."""
        raise NotImplementedError

    def denoise_video(self, latents: Array, y: Array | None, chunk_frames: int) -> Array:
        """The learned self-denoiser in chunks of `chunk_frames` latent frames."""
        raise NotImplementedError

    def decode_video(self, latents: Array, progress: bool) -> np.ndarray:
        """Latent video -> float32 numpy (B, T, H, W, C) in [-1, 1], frame by frame."""
        raise NotImplementedError

    # ----- sizes ---------------------------------------------------------------------------
    @property
    def video_defaults(self) -> VideoDefaults | None:
        """The model's clip length, rate and template (None: a video flow without them)."""
        return self.parts.video

    def video_request(
        self,
        num_frames: int | None,
        fps: int | None,
        height: int | None,
        width: int | None,
        aspect_ratio: str | None,
    ) -> VideoRequest:
        given = self.video_defaults
        if given is None and num_frames is None:
            raise ValueError("this model names no video length; give num_frames (--num-frames)")
        defaults = given or VideoDefaults(num_frames=num_frames, fps=fps or 8)
        num_frames = defaults.num_frames if num_frames is None else num_frames
        fps = defaults.fps if fps is None else fps
        if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
            raise ValueError(f"fps must be a whole number >= 1, got {fps!r}")
        temporal = self.parts.vae_temporal_downsample
        frames = latent_frames(num_frames, temporal)
        self.config.check_video(frames)
        factor, base = self.parts.vae_downsample, self.default_size
        multiple = factor * self.config.patch_size
        if height is None and width is None:
            height, width = aspect_ratio_size(base, aspect_ratio, multiple) if aspect_ratio else (base, base)
        elif height is None or width is None:
            raise ValueError("give both height and width, or neither (then aspect_ratio sets them)")
        self.check_size(height, width)
        template_ratio = (aspect_ratio or "1:1") if defaults.mix_aspect else None  # official default 1:1
        trained = latent_frames(defaults.num_frames, temporal) if given else frames
        window = sliding_window(self.config.local_attn_window, trained, frames)
        return VideoRequest(num_frames, frames, fps, height, width, template_ratio, window)

    # ----- conditioning --------------------------------------------------------------------
    def video_prompts(self, prompts: Sequence[str], request: VideoRequest) -> list[str]:
        """The prompts as the model saw them in training (label models: unchanged)."""
        config = self.config
        if config.label_conditioned or config.txt_dim == 0:
            return list(prompts)
        return wrap_prompts(
            list(prompts),
            (self.video_defaults or VideoDefaults()).template,
            fps=request.fps,
            noise_std=config.noise_std,
            aspect_ratio=request.aspect_ratio,
        )

    def video_conditions(
        self, wrapped: list[str], null: str, guided: bool
    ) -> tuple[Array | None, Array | None]:
        """(y, y_null): as `conditions`, but the guidance prompt is the wrapped "" (the official
        sample.py wraps the empty captions it appends with the others)."""
        config = self.config
        if config.label_conditioned or config.txt_dim == 0:
            return self.conditions(wrapped, guided)
        y, _ = self.conditions(wrapped, False)
        if not guided:
            return y, None
        y_null, _ = self.conditions([null], False)
        return y, self.concatenate([y_null] * len(wrapped))

    # ----- image-to-video ------------------------------------------------------------------
    def first_frame(self, image: Any, seeds: list[int], request: VideoRequest) -> Array:
        """--image: resized (PIL bilinear, as torchvision's Resize on a PIL image) so it covers the
        frame, centre-cropped, encoded, plus noise_std noise (seeded per row from its seed, apart
        from the video's noise)."""
        pixels = load_image(image, self.image_channels, "--image")
        (resized_h, resized_w), box = center_crop_box(*pixels.shape[:2], request.height, request.width)
        left, top, right, bottom = box
        pixels = _resize(pixels, resized_h, resized_w)[top:bottom, left:right]
        rows = np.stack([pixels] * len(seeds))
        latents = self.to_numpy_frame(self.encode_frame(self.frame_array(rows)))
        noise = np.stack(
            [
                np.random.default_rng([int(seed), 1]).standard_normal(latents.shape[1:], np.float32)
                for seed in seeds
            ]
        )
        return self.latent_frame_array(latents + self.config.noise_std * noise)

    def to_numpy_frame(self, frame: Array) -> np.ndarray:
        """A latent frame (B, ...) in the twin's layout -> float32 numpy (B, C, h, w)."""
        raise NotImplementedError

    def latent_frame_array(self, frame: np.ndarray) -> Array:
        """float32 numpy (B, C, h, w) -> a latent frame in the twin's layout, dtype and device."""
        raise NotImplementedError

    # ----- generation ----------------------------------------------------------------------
    def generate_video(
        self,
        prompts: str | Sequence[str],
        *,
        seeds: int | Sequence[int] | None = None,
        num_frames: int | None = None,
        fps: int | None = None,
        aspect_ratio: str | None = None,
        height: int | None = None,
        width: int | None = None,
        guidance: float | None = None,
        jacobi: bool | None = None,
        block_size: int | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        image: Any = None,
        denoise: bool = True,
        progress: bool = False,
        callback: Callable[[int, np.ndarray], None] | None = None,
    ) -> VideoGeneration:
        """One video per (prompt, seed); settings left None take the model's defaults.

        `num_frames` pixel frames (4k + 1 through the Wan VAE; beyond the training length the
        deep block samples through its sliding window), `fps` the rate written and told to
        fps_cond models, `aspect_ratio` "W:H" (the size at the training area, and the template
        of mix_aspect models). `image` (a path, PIL image or array) makes this image-to-video.
        `callback(block_index, latents)` gets the state after each flow block (numpy, the
        twin's layout converted to (B, T, C, h, w))."""
        drawn = seeds is None
        if drawn:
            seeds = draw_seeds(1 if isinstance(prompts, str) else max(len(prompts), 1))
        prompts, seeds = batch_prompts_and_seeds(prompts, seeds)
        settings = self.parts.sampling.merged(
            guidance=guidance, jacobi=jacobi, block_size=block_size, tol=tol, max_iter=max_iter
        )
        request = self.video_request(num_frames, fps, height, width, aspect_ratio)
        wrapped = self.video_prompts(prompts, request)
        null = self.video_prompts([""], request)[0]
        y, y_null = self.video_conditions(wrapped, null, settings.guidance > 0)
        first = self.first_frame(image, seeds, request) if image is not None else None
        factor, config = self.parts.vae_downsample, self.config
        noise = make_video_noise(
            seeds,
            request.latent_frames,
            config.in_channels,
            request.height // factor,
            request.width // factor,
        )
        on_block = (
            None if callback is None else (lambda index, state: callback(index, self.video_numpy(state)))
        )
        latents, steps = self.sample_video(
            self.video_noise_array(noise), y, y_null, settings, first, request.window, progress, on_block
        )
        check_finite(self.video_numpy(latents), seeds, "flow samples")
        mode = "none"
        if denoise and config.noise_std > 0:
            if config.learnable_self_denoiser:
                mode = "learned"
                chunk = request.window.frames if request.window else request.latent_frames
                latents = self.denoise_video(latents, y, chunk)
            else:
                mode = "score"
                latents = self.denoise(latents, y)
        frames = self.decode_video(latents, progress)
        check_finite(frames, seeds, "decoded videos")
        return VideoGeneration(
            model=self.parts.name,
            prompts=prompts,
            seeds=seeds,
            settings=settings,
            num_frames=frames.shape[1],
            fps=request.fps,
            aspect_ratio=aspect_ratio,
            height=request.height,
            width=request.width,
            denoise=mode,
            steps=steps,
            frames=frames,
            precision=self.precision,
            source=self.parts.source,
            framework=self.framework,
            seeds_drawn=drawn,
            image=describe_input(image) if image is not None else None,
        )

    def video_numpy(self, latents: Array) -> np.ndarray:
        """A latent video in the twin's layout -> float32 numpy (B, T, C, h, w)."""
        raise NotImplementedError

    def video(self, prompts: str | Sequence[str], **kwargs) -> GeneratedVideos:
        """Same arguments as `generate_video`; returns the videos (uint8 frames, seeds, fps, save)."""
        return GeneratedVideos(self.generate_video(prompts, **kwargs))


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 (H, W, C) in [-1, 1] -> (height, width, C), bilinear as torchvision's Resize on PIL
    images, through 8-bit pixels (the official path: a PIL image resized, then ToTensor)."""
    from PIL import Image

    pixels = np.clip(np.round((array + 1.0) * 127.5), 0, 255).astype(np.uint8)
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode=mode)
    resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    resized = resized[..., None] if resized.ndim == 2 else resized
    return resized / 127.5 - 1.0
