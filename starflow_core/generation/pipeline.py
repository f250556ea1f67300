"""The framework-free half of `StarFlowPipeline`: settings, sizes, conditions and the order of
the steps. Each twin's pipeline subclasses `PipelineBase` and supplies the array work.

    prompts -> conditions (labels, or T5 features of the prompts and of "")
    seeds   -> noise (numpy, NCHW; starflow_core.generation.inputs.make_noise)
    flow.sample(noise, conditions, guidance)   -> noisy latents (or pixels)
    score step x + sigma^2 grad log p(x|y), or a decoder fine-tuned on noisy latents
    VAE decode                                  -> images in [-1, 1]

With `image=` (and `mask_image=`) the same steps edit an image: image-to-image and
inpainting through the flow's exact inverse (starflow_core.generation.editing). `score`
gives the exact log-likelihood of images.

Arrays crossing this layer are the twin's own (mx.array / torch.Tensor); what comes back
to the caller is numpy, NHWC, the same in both twins (`Generation`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from starflow_core.config import FlowConfig
from starflow_core.generation import editing
from starflow_core.generation.inputs import (
    batch_prompts_and_seeds,
    check_size,
    draw_seeds,
    make_noise,
    prompts_to_labels,
)
from starflow_core.generation.precision import Precision
from starflow_core.generation.result import GeneratedImages, Generation
from starflow_core.generation.scoring import score_images
from starflow_core.generation.settings import GenerationSettings, check_finite
from starflow_core.sources.pipeline_folder import PipelineParts

Array = Any  # the twin's array type: mx.array (NHWC) or torch.Tensor (NCHW)
BlockCallback = Callable[[int, np.ndarray], None]  # (block index, state after it: float32 NHWC)


class PipelineBase:
    """What both twins' pipelines share. Subclasses set `parts`, `flow_config`, `precision`,
    `flow` (a StarFlow), `vae`, `decoder` (twins load these on first use: the flow after the
    text is encoded, the VAE at decoding) and `text_encoder` (None where absent) and implement
    the array methods below."""

    framework: str  # "mlx" | "torch", recorded in image metadata
    parts: PipelineParts
    flow_config: FlowConfig
    precision: Precision
    flow: Any
    vae: Any
    decoder: Any
    text_encoder: Any
    # prompt -> its T5 features (1, txt_size, d_model), filled by encode_prompts; "" included
    prompt_features: dict[str, Any]

    # ----- array work, one implementation per twin -------------------------------------------
    def label_array(self, labels: list[int]) -> Array:
        """Integer class labels (B,) on the pipeline's device; -1 is the null label."""
        raise NotImplementedError

    def encode_text(self, prompts: list[str], guided: bool) -> tuple[Array, Array | None]:
        """T5 features of the prompts, and of "" when guided (padding rows zero). T5 is loaded
        for the call and freed before returning unless `text_encoder` holds it."""
        raise NotImplementedError

    def load_text_encoder(self) -> Any:
        """The T5 TextEncoder, loaded now in the pipeline's text dtype / quantization."""
        raise NotImplementedError

    def release_memory(self) -> None:
        """Give freed buffers back (MLX's cache, CUDA's caching allocator)."""
        raise NotImplementedError

    def concatenate(self, rows: list[Array]) -> Array:
        """Arrays (1, ...) -> one (B, ...) array, in order."""
        raise NotImplementedError

    def noise_array(self, noise: np.ndarray) -> Array:
        """(B, C, h, w) float32 numpy noise -> the flow's input layout, dtype and device."""
        raise NotImplementedError

    def sample_flow(
        self,
        noise: Array,
        y: Array | None,
        y_null: Array | None,
        settings: GenerationSettings,
        progress: bool,
        callback: Callable[[int, Array], None] | None = None,
    ) -> tuple[Array, int]:
        """Invert the flow; returns the samples (fp32) and the number of network evaluations.
        `callback(block_index, state)` is passed on to StarFlow.sample."""
        raise NotImplementedError

    def denoise(self, latents: Array, y: Array | None, noise_std: float | None = None) -> Array:
        """One score (Tweedie) step, x + sigma^2 grad_x log p(x | y) (SPEC section 3); sigma is
        noise_std, by default the model's training noise."""
        raise NotImplementedError

    def encode(self, images: Array) -> Array:
        """Images in [-1, 1] -> the flow's data: VAE latents (posterior mean x scaling factor), or
        the images themselves for pixel models."""
        raise NotImplementedError

    def invert_flow(
        self, latents: Array, y: Array | None, y_null: Array | None, settings: GenerationSettings
    ) -> Array:
        """The exact inverse of `sample_flow` under the same conditions and guidance (fp32)."""
        raise NotImplementedError

    def log_prob(self, latents: Array, y: Array | None) -> Array:
        """Exact log p(latents | y) in nats, (B,), under the flow (no guidance)."""
        raise NotImplementedError

    def from_numpy(self, array: np.ndarray) -> Array:
        """float32 numpy (B, H, W, C) -> the twin's layout and device, float32 (the inverse of to_numpy)."""
        raise NotImplementedError

    def decode(self, latents: Array, use_decoder: bool = False) -> Array:
        """Flow samples -> images in [-1, 1] (pixel models: the samples themselves)."""
        raise NotImplementedError

    def to_numpy(self, array: Array) -> np.ndarray:
        """An image-shaped array -> float32 numpy (B, H, W, C)."""
        raise NotImplementedError

    # ----- sizes ---------------------------------------------------------------------------
    @property
    def config(self) -> FlowConfig:
        """The flow's configuration (known before its weights are loaded)."""
        return self.flow_config

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: VAE downsampling x patch size."""
        return self.parts.vae_downsample * self.config.patch_size

    @property
    def image_channels(self) -> int:
        """Channels of the images this pipeline makes and edits (the VAE's, or the flow's for pixels)."""
        return self.parts.image_channels

    @property
    def default_size(self) -> int:
        return self.config.img_size * self.parts.vae_downsample

    def check_size(self, height: int, width: int) -> None:
        why = f"VAE downsample {self.parts.vae_downsample} x patch size {self.config.patch_size}"
        check_size(height, width, self.size_multiple, why)
        if self.config.uses_pos_embed and (height, width) != (self.default_size, self.default_size):
            raise ValueError(
                f"this model has a learned position embedding and only makes {self.default_size}x"
                f"{self.default_size} images, not {height}x{width}"
            )

    # ----- conditioning --------------------------------------------------------------------
    def conditions(self, prompts: list[str], guided: bool) -> tuple[Array | None, Array | None]:
        """(y, y_null) for the flow: labels, T5 features of the prompts and of "", or None.

        Label models take class names or indices as prompts ("" is the null label) and need
        no y_null; unconditional models ignore the prompts."""
        config = self.config
        if config.label_conditioned or (config.family == "tarflow" and config.num_classes):
            return self.label_array(prompts_to_labels(prompts, config.num_classes, self.parts.labels)), None
        if config.txt_dim == 0:
            return None, None
        features = self.prompt_features
        if all(prompt in features for prompt in [*prompts, ""]):
            y = self.concatenate([features[prompt] for prompt in prompts])
            return y, (self.concatenate([features[""]] * len(prompts)) if guided else None)
        return self.encode_text(prompts, guided)

    def encode_prompts(self, prompts: Sequence[str], batch_size: int = 8) -> None:
        """Encode `prompts` and "" now, loading T5 once, and keep their features for `generate`.

        A run of many batches then never holds T5 and the flow together (T5 is freed here,
        before the flow is loaded); the features are small (1 MB a prompt for the 3B model).
        """
        config = self.config
        if config.txt_dim == 0 or config.label_conditioned or self.parts.text_encoder is None:
            return
        missing = [p for p in dict.fromkeys([*prompts, ""]) if p not in self.prompt_features]
        if not missing:
            return
        kept = self.text_encoder
        if kept is None:
            self.text_encoder = self.load_text_encoder()
        try:
            for first in range(0, len(missing), batch_size):
                chunk = missing[first : first + batch_size]
                y, _ = self.encode_text(chunk, guided=False)
                self.prompt_features.update({prompt: y[i : i + 1] for i, prompt in enumerate(chunk)})
        finally:
            if kept is None:
                self.text_encoder.unload()
                self.text_encoder = None
                self.release_memory()

    def denoise_mode(self, denoise: bool) -> str:
        """ "score" (Tweedie step), "decoder" (fine-tuned decoder) or "none"."""
        if not denoise or self.config.noise_std <= 0:
            return "none"
        return "decoder" if self.decoder is not None else "score"

    # ----- generation ----------------------------------------------------------------------
    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        seeds: int | Sequence[int] | None = None,
        guidance: float | None = None,
        jacobi: bool | None = None,
        block_size: int | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        height: int | None = None,
        width: int | None = None,
        denoise: bool = True,
        progress: bool = False,
        callback: BlockCallback | None = None,
        image: Any = None,
        strength: float | None = None,
        mask_image: Any = None,
        source_prompt: str | Sequence[str] | None = None,
        inpaint_rounds: int = editing.DEFAULT_ROUNDS,
    ) -> Generation:
        """Sample one image per (prompt, seed) pair; settings left None take the model's defaults.

        `seeds` None draws one at random per prompt (reported in the result's `.seeds`).
        `callback(block_index, latents)` is called after each flow block with the samples so
        far as float32 numpy (B, h, w, C), before denoising and decoding (`decode_latents`
        makes pictures of them); blocks run from the last index down to 0.

        `image` (a path, PIL image or array; one or one per pair) turns this into image-to-image
        at `strength` (0 keeps the image, 1 regenerates it; default 0.8 without a mask), or, with
        `mask_image` (white / 1 = regenerate), inpainting (default strength 1). The image sets
        the size unless height and width are given (it is then resized). `source_prompt`
        conditions the inversion of the image (default: the prompt). See docs/editing.md.
        """
        drawn = seeds is None
        if drawn:
            seeds = draw_seeds(1 if isinstance(prompts, str) else max(len(prompts), 1))
        prompts, seeds = batch_prompts_and_seeds(prompts, seeds)
        settings = self.parts.sampling.merged(
            guidance=guidance, jacobi=jacobi, block_size=block_size, tol=tol, max_iter=max_iter
        )
        on_block = None if callback is None else (lambda index, state: callback(index, self.to_numpy(state)))
        if image is not None or mask_image is not None or strength is not None or source_prompt is not None:
            request = editing.prepare_request(
                self, len(prompts), image, strength, mask_image, source_prompt, inpaint_rounds, height, width
            )
            return editing.edit(self, prompts, seeds, settings, request, denoise, progress, on_block, drawn)
        height = self.default_size if height is None else height  # 0 is an error, not "not given"
        width = self.default_size if width is None else width
        self.check_size(height, width)
        factor = self.parts.vae_downsample
        y, y_null = self.conditions(prompts, settings.guidance > 0)
        noise = make_noise(seeds, self.config.in_channels, height // factor, width // factor)
        latents, steps = self.sample_flow(self.noise_array(noise), y, y_null, settings, progress, on_block)
        check_finite(self.to_numpy(latents), seeds, "flow samples", settings.guidance)
        mode = self.denoise_mode(denoise)
        if mode == "score":
            latents = self.denoise(latents, y)
        images = self.to_numpy(self.decode(latents, use_decoder=mode == "decoder"))
        check_finite(images, seeds, "decoded images", settings.guidance)
        return Generation(
            model=self.parts.name,
            prompts=prompts,
            seeds=seeds,
            settings=settings,
            height=height,
            width=width,
            denoise=mode,
            steps=steps,
            latents=self.to_numpy(latents),
            images=images,
            precision=self.precision,
            source=self.parts.source,
            decoder=str(self.parts.decoder.resolve()) if mode == "decoder" else None,
            framework=self.framework,
            seeds_drawn=drawn,
        )

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """Flow samples (float32 numpy (B, h, w, C), e.g. a callback's) -> images in [-1, 1],
        numpy (B, H, W, C), with the VAE (pixel models: unchanged); no denoising."""
        return self.to_numpy(self.decode(self.from_numpy(latents)))

    def __call__(self, prompts: str | Sequence[str], **kwargs) -> GeneratedImages:
        """Same arguments as `generate`; returns the PIL images (a sequence, with `.images`,
        `.seeds`, `.parameters` and `.save(path_or_folder)`)."""
        return GeneratedImages(self.generate(prompts, **kwargs))

    def score(self, images: Any, prompts: str | Sequence[str] = "") -> np.ndarray:
        """Exact log-likelihood of images as bits per dimension (B,), float64; see scoring.py."""
        return score_images(self, images, prompts).bits_per_dim
