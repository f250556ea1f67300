"""Prompt -> image with STARFlow in MLX: text encoding, flow sampling, denoising, VAE decoding.

    pipe = StarFlowPipeline.from_pretrained("starflow-3b-t2i-256")   # or a folder / Hub repo id
    images = pipe(["a film still of a cat playing piano"], seeds=[0, 1])  # PIL images
    result = pipe.generate(prompts, seeds=[0])   # raw arrays (numpy, NHWC) and settings

Label-conditioned models take class names or indices as prompts; unconditional models
ignore them. Pixel models (no VAE) map [-1, 1] samples straight to pixels. Noise comes
from numpy per seed (starflow_core.generation.inputs.make_noise), identical in both twins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx
import numpy as np

from starflow_core.config import FlowConfig
from starflow_core.generation.inputs import batch_prompts_and_seeds, check_size, make_noise, prompts_to_labels
from starflow_core.generation.result import Generation
from starflow_core.generation.settings import check_finite
from starflow_core.sources.pipeline_folder import PipelineParts

from . import hub
from .model import StarFlow
from .sampling import SamplingStats
from .text import TextEncoder
from .vae import AutoencoderKL


class StarFlowPipeline:
    def __init__(
        self,
        parts: PipelineParts,
        flow: StarFlow,
        vae: AutoencoderKL | None,
        decoder: AutoencoderKL | None = None,
        text_encoder: TextEncoder | None = None,
        dtype: mx.Dtype = mx.float32,
    ):
        """`text_encoder` given here stays loaded; otherwise T5 is loaded for each call and its
        weights freed before sampling (the flow and T5 are then never in memory together
        beyond the encoding step)."""
        self.parts, self.flow, self.vae, self.decoder = parts, flow, vae, decoder
        self.text_encoder = text_encoder
        self.dtype = dtype

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | PipelineParts,
        *,
        dtype: mx.Dtype = mx.float32,
        decoder: str | Path | None = None,
        quantize: int | None = None,
        group_size: int = 64,
        keep_text_encoder: bool = False,
        flow_config: FlowConfig | None = None,
    ) -> StarFlowPipeline:
        """Load from a pipeline folder, a release name, a Hub repo id (see starflow_core.sources)
        or already resolved parts.

        `decoder`: a VAE folder or weights file fine-tuned on noisy latents, used instead of
        score denoising. `quantize`: 4 or 8 bit flow weights. `flow_config` replaces a
        release's flow configuration (tests).
        """
        if quantize is not None:
            quantizer()  # fail before loading gigabytes of weights
        parts = hub.resolve(source, flow_config=flow_config).with_decoder(decoder)
        flow = hub.load_flow(parts, dtype)
        if quantize is not None:
            quantize_flow(flow, quantize, group_size)
        text_encoder = hub.load_text_encoder(parts, dtype) if keep_text_encoder else None
        return cls(
            parts, flow, hub.load_vae(parts, dtype), hub.load_decoder(parts, dtype), text_encoder, dtype
        )

    # ----- sizes ---------------------------------------------------------------------------
    @property
    def config(self) -> FlowConfig:
        return self.flow.config

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: VAE downsampling x patch size."""
        return self.parts.vae_downsample * self.config.patch_size

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
    def _text_encoder(self) -> TextEncoder:
        return self.text_encoder or hub.load_text_encoder(self.parts, self.dtype)

    def conditions(self, prompts: list[str], guided: bool) -> tuple[mx.array | None, mx.array | None]:
        """(y, y_null) for the flow: T5 features of the prompts and of "", labels, or None."""
        config = self.config
        if config.label_conditioned or (config.family == "tarflow" and config.num_classes):
            labels = prompts_to_labels(prompts, config.num_classes, self.parts.labels)
            return mx.array(labels, dtype=mx.int32), None
        if config.txt_dim == 0:
            return None, None
        encoder = self._text_encoder()
        if encoder.d_model != config.txt_dim:
            raise ValueError(
                f"the text encoder has width {encoder.d_model} but the flow expects txt_dim={config.txt_dim}"
            )
        y = encoder.encode(prompts, config.txt_size)  # (B, txt_size, d_model)
        y_null = None
        if guided:
            y_null = mx.broadcast_to(encoder.encode([""], config.txt_size), y.shape)
        if encoder is not self.text_encoder:  # free T5 before sampling
            encoder.unload()
            del encoder
            mx.clear_cache()
        return y, y_null

    # ----- generation ----------------------------------------------------------------------
    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        seeds: int | Sequence[int],
        guidance: float | None = None,
        jacobi: bool | None = None,
        block_size: int | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        height: int | None = None,
        width: int | None = None,
        denoise: bool = True,
        progress: bool = False,
    ) -> Generation:
        """Sample one image per (prompt, seed) pair; settings left None take the model's defaults."""
        prompts, seeds = batch_prompts_and_seeds(prompts, seeds)
        settings = self.parts.sampling.merged(
            guidance=guidance, jacobi=jacobi, block_size=block_size, tol=tol, max_iter=max_iter
        )
        height, width = height or self.default_size, width or self.default_size
        self.check_size(height, width)
        factor = self.parts.vae_downsample
        y, y_null = self.conditions(prompts, settings.guidance > 0)
        noise = make_noise(seeds, self.config.in_channels, height // factor, width // factor)
        stats = SamplingStats()
        latents = self.flow.sample(
            mx.array(noise.transpose(0, 2, 3, 1)).astype(self.dtype),  # (B, h, w, C)
            y,
            y_null,
            settings.guidance,
            jacobi=settings.jacobi,
            block_size=settings.block_size,
            tol=settings.tol,
            max_iter=settings.max_iter,
            progress=progress,
            stats=stats,
        ).astype(mx.float32)
        mx.eval(latents)
        check_finite(np.array(latents), seeds, "flow samples")
        mode = self._denoise_mode(denoise)
        if mode == "score":
            latents = self.denoise(latents, y)
        images = self.decode(latents, use_decoder=mode == "decoder")
        result = np.array(images.astype(mx.float32))
        check_finite(result, seeds, "decoded images")
        return Generation(
            model=self.parts.name,
            prompts=prompts,
            seeds=seeds,
            settings=settings,
            height=height,
            width=width,
            denoise=mode,
            steps=stats.steps,
            latents=np.array(latents),
            images=result,
        )

    def __call__(self, prompts: str | Sequence[str], **kwargs) -> list:
        """Same arguments as `generate`; returns PIL images."""
        return self.generate(prompts, **kwargs).pil_images()

    def _denoise_mode(self, denoise: bool) -> str:
        if not denoise or self.config.noise_std <= 0:
            return "none"
        return "decoder" if self.decoder is not None else "score"

    def denoise(self, latents: mx.array, y: mx.array | None) -> mx.array:
        """One score (Tweedie) step per sample, one at a time to bound the backward pass's memory."""
        rows = []
        for i in range(latents.shape[0]):
            row = self.flow.denoise(latents[i : i + 1], None if y is None else y[i : i + 1])
            mx.eval(row)
            rows.append(row)
        return mx.concatenate(rows)

    def decode(self, latents: mx.array, use_decoder: bool = False) -> mx.array:
        """Flow samples -> images (B, H, W, 3) in [-1, 1] (pixel models: the samples themselves)."""
        vae = self.decoder if use_decoder else self.vae
        if vae is None:
            return latents
        return vae.decode(latents, batch_size=1)


def quantize_flow(flow: StarFlow, bits: int, group_size: int = 64) -> None:
    """Quantize the flow's weights in place (starflow_mlx.quantize)."""
    quantizer()(flow, bits, group_size)


def quantizer():
    """starflow_mlx.quantize.quantize_model, or a clear error when this version lacks it."""
    try:
        from .quantize import quantize_model
    except ImportError as err:
        raise NotImplementedError(
            "quantization is not available in this version of starflow_mlx (no starflow_mlx.quantize); "
            "run without --quantize"
        ) from err
    return quantize_model
