"""Prompt -> image with STARFlow in MLX: text encoding, flow sampling, denoising, VAE decoding.

    pipe = StarFlowPipeline.from_pretrained("starflow-3b-t2i-256")   # or a folder / Hub repo id
    images = pipe(["a film still of a cat playing piano"], seeds=[0, 1])  # PIL images (a sequence)
    images.seeds, images.save("outputs/")   # seeds (drawn when not given); files as the CLI writes
    result = pipe.generate(prompts, seeds=[0])   # raw arrays (numpy, NHWC) and settings

The steps, settings and sizes are framework-free (starflow_core.generation.pipeline.PipelineBase);
this class does the MLX array work. Label-conditioned models take class names or indices as
prompts; unconditional models ignore them. Pixel models (no VAE) map [-1, 1] samples straight
to pixels. Noise comes from numpy per seed, identical in both twins.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np

from starflow_core.config import FlowConfig
from starflow_core.generation.pipeline import PipelineBase
from starflow_core.generation.precision import Precision, resolve_dtype
from starflow_core.generation.settings import GenerationSettings
from starflow_core.sources.pipeline_folder import PipelineParts

from . import hub
from .model import StarFlow
from .sampling import SamplingStats
from .text import TextEncoder
from .vae import AutoencoderKL

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def dtype_name(dtype: str | mx.Dtype) -> str:
    """ "auto", a dtype name, or an mx.Dtype -> its name."""
    if isinstance(dtype, str):
        return dtype
    names = [name for name, value in DTYPES.items() if value == dtype]
    if not names:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} (or 'auto'), got {dtype}")
    return names[0]


def auto_dtype(name: str) -> str:
    """`--dtype auto`: bfloat16 where MLX's default device is a GPU (Metal, CUDA), else float32."""
    return resolve_dtype(name, accelerated=mx.default_device() == mx.gpu)


class StarFlowPipeline(PipelineBase):
    framework = "mlx"

    def __init__(
        self,
        parts: PipelineParts,
        flow: StarFlow | None,
        vae: AutoencoderKL | None,
        decoder: AutoencoderKL | None = None,
        text_encoder: TextEncoder | None = None,
        precision: Precision | None = None,
        strict: bool = False,
    ):
        """`flow` None: loaded from `parts` on first use, after the prompts are encoded, so the
        flow and T5 are not in memory together. `text_encoder` given here stays loaded;
        otherwise T5 is loaded for each encoding and its weights freed before sampling."""
        self.parts, self._vae, self._decoder = parts, vae, decoder
        self._flow = flow
        self.flow_config = flow.config if flow is not None else parts.flow_config
        self.text_encoder = text_encoder
        self.precision = precision or Precision()
        self.dtype = DTYPES[self.precision.dtype]
        self.strict = strict
        self.prompt_features = {}

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | PipelineParts,
        *,
        dtype: str | mx.Dtype = "auto",
        decoder: str | Path | None = None,
        quantize: int | None = None,
        group_size: int = 64,
        text_quantize: int | None = None,
        keep_text_encoder: bool = False,
        strict: bool = False,
        flow_config: FlowConfig | None = None,
    ) -> StarFlowPipeline:
        """Load from a pipeline folder, a release name, a Hub repo id (see starflow_core.sources)
        or already resolved parts.

        `dtype`: "auto" (bfloat16 on a GPU, float32 on CPU), a dtype name or an mx.Dtype; the
        flow's scale, shift, log-det and guidance stay fp32, T5 never runs in float16.
        `decoder`: a VAE folder or weights file fine-tuned on noisy latents, used instead of
        score denoising. `quantize`: 4 or 8 bit flow weights, quantized layer by layer as they
        load; `text_quantize`: 8-bit T5. `strict`: refuse checkpoints carrying tensors the
        model does not use (else skipped with a warning). `flow_config` replaces a release's
        flow configuration (tests). The flow itself loads on first use (see __init__).
        """
        precision = Precision(auto_dtype(dtype_name(dtype)), quantize, text_quantize, group_size)
        parts = hub.resolve(source, flow_config=flow_config, dtype=precision.dtype, strict=strict)
        parts = parts.with_decoder(decoder)
        pipe = cls(parts, None, None, precision=precision, strict=strict)
        pipe.decoder  # noqa: B018 - a --decoder given is loaded now: a bad file fails before any work
        if keep_text_encoder:
            pipe.text_encoder = pipe.load_text_encoder()
        return pipe

    @property
    def flow(self) -> StarFlow:
        """The flow model, loaded (tensor by tensor, quantized as it loads) on first use."""
        if self._flow is None:
            precision = self.precision
            self._flow = hub.load_flow(
                self.parts, self.dtype, precision.quantize, precision.group_size, self.strict
            )
        return self._flow

    @property
    def vae(self) -> AutoencoderKL | None:
        """The VAE, loaded on first use (at decoding: it is not resident while sampling)."""
        if self._vae is None and self.parts.vae is not None:
            self._vae = hub.load_vae(self.parts, self.dtype)
        return self._vae

    @property
    def decoder(self) -> AutoencoderKL | None:
        if self._decoder is None and self.parts.decoder is not None:
            self._decoder = hub.load_decoder(self.parts, self.dtype)
        return self._decoder

    # ----- array work (PipelineBase runs the steps) ------------------------------------------
    def load_text_encoder(self) -> TextEncoder:
        precision = self.precision
        return hub.load_text_encoder(
            self.parts, DTYPES[precision.text_dtype], precision.text_quantize, precision.group_size
        )

    def _text_encoder(self) -> TextEncoder:
        return self.text_encoder or self.load_text_encoder()

    def release_memory(self) -> None:
        mx.clear_cache()

    def concatenate(self, rows: list[mx.array]) -> mx.array:
        return mx.concatenate(rows)

    def label_array(self, labels: list[int]) -> mx.array:
        return mx.array(labels, dtype=mx.int32)

    def encode_text(self, prompts: list[str], guided: bool) -> tuple[mx.array, mx.array | None]:
        config = self.config
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
            self.release_memory()
        return y, y_null

    def noise_array(self, noise: np.ndarray) -> mx.array:
        return mx.array(noise.transpose(0, 2, 3, 1)).astype(self.dtype)  # (B, h, w, C)

    def sample_flow(
        self,
        noise: mx.array,
        y: mx.array | None,
        y_null: mx.array | None,
        settings: GenerationSettings,
        progress: bool,
        callback: Callable[[int, mx.array], None] | None = None,
    ) -> tuple[mx.array, int]:
        stats = SamplingStats()
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
        ).astype(mx.float32)
        mx.eval(latents)
        return latents, stats.steps

    def to_numpy(self, array: mx.array) -> np.ndarray:
        return np.array(array.astype(mx.float32))

    def denoise(self, latents: mx.array, y: mx.array | None, noise_std: float | None = None) -> mx.array:
        """One score (Tweedie) step per sample, one at a time to bound the backward pass's memory."""
        rows = []
        for i in range(latents.shape[0]):
            row = self.flow.denoise(latents[i : i + 1], None if y is None else y[i : i + 1], noise_std)
            mx.eval(row)
            rows.append(row)
        return mx.concatenate(rows)

    def encode(self, images: mx.array) -> mx.array:
        """Images (B, H, W, C) in [-1, 1] -> VAE latents (posterior mean); pixel models: the images."""
        if self.vae is None:
            return images
        latents = self.vae.encode(images).astype(mx.float32)
        mx.eval(latents)
        return latents

    def invert_flow(
        self,
        latents: mx.array,
        y: mx.array | None,
        y_null: mx.array | None,
        settings: GenerationSettings,
    ) -> mx.array:
        noise, _ = self.flow.invert(latents.astype(mx.float32), y, y_null, settings.guidance)
        noise = noise.astype(mx.float32)
        mx.eval(noise)
        return noise

    def log_prob(self, latents: mx.array, y: mx.array | None) -> mx.array:
        return self.flow.log_prob(latents.astype(mx.float32), y)

    def from_numpy(self, array: np.ndarray) -> mx.array:
        return mx.array(np.ascontiguousarray(array, dtype=np.float32))  # already NHWC

    def decode(self, latents: mx.array, use_decoder: bool = False) -> mx.array:
        """Flow samples -> images (B, H, W, 3) in [-1, 1] (pixel models: the samples themselves)."""
        vae = self.decoder if use_decoder else self.vae
        if vae is None:
            return latents
        return vae.decode(latents, batch_size=1)
