"""Prompt -> image with STARFlow in PyTorch: text encoding, flow sampling, denoising, VAE decoding.

    pipe = StarFlowPipeline.from_pretrained("starflow-3b-t2i-256", device="cuda")
    images = pipe(["a film still of a cat playing piano"], seeds=[0, 1])  # PIL images (a sequence)
    images.seeds, images.save("outputs/")   # seeds (drawn when not given); files as the CLI writes
    result = pipe.generate(prompts, seeds=[0])   # raw arrays (numpy, NHWC) and settings

The twin of starflow_mlx.pipeline: the steps, settings and sizes are framework-free
(starflow_core.generation.pipeline.PipelineBase) and the numpy noise per seed is the same,
so both twins make the same image from the same seed. Returned arrays are numpy NHWC
like the MLX twin's; the modules work on NCHW tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from starflow_core.config import FlowConfig
from starflow_core.generation.pipeline import PipelineBase
from starflow_core.generation.precision import Precision, resolve_dtype
from starflow_core.generation.settings import GenerationSettings
from starflow_core.sources.pipeline_folder import PipelineParts

from . import hub
from .model import StarFlow
from .sampling import SamplingStats

if TYPE_CHECKING:  # imported where loaded (starflow_torch.hub): diffusers and transformers are slow
    from .text import TextEncoder
    from .vae import AutoencoderKL

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: str | torch.dtype) -> str:
    """ "auto", a dtype name, or a torch.dtype -> its name."""
    if isinstance(dtype, str):
        return dtype
    names = [name for name, value in DTYPES.items() if value == dtype]
    if not names:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} (or 'auto'), got {dtype}")
    return names[0]


def auto_dtype(name: str, device: str | torch.device) -> str:
    """`--dtype auto`: bfloat16 on CUDA, else float32."""
    return resolve_dtype(name, accelerated=torch.device(device).type == "cuda")


class StarFlowPipeline(PipelineBase):
    framework = "torch"

    def __init__(
        self,
        parts: PipelineParts,
        flow: StarFlow | None,
        vae: AutoencoderKL | None,
        decoder: AutoencoderKL | None = None,
        text_encoder: TextEncoder | None = None,
        precision: Precision | None = None,
        strict: bool = False,
        device: str | torch.device = "cpu",
    ):
        """`flow` None: loaded from `parts` on first use, after the prompts are encoded, so the
        flow and T5 are not in memory together. `text_encoder` given here stays loaded;
        otherwise T5 is loaded for each encoding and freed before sampling."""
        self.parts, self._vae, self._decoder = parts, vae, decoder
        self._flow = flow
        self.flow_config = flow.config if flow is not None else parts.flow_config
        self.text_encoder = text_encoder
        self.precision = precision or Precision()
        self.dtype = DTYPES[self.precision.dtype]
        self.strict = strict
        self.device = torch.device(device)
        self.prompt_features = {}

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | PipelineParts,
        *,
        dtype: str | torch.dtype = "auto",
        decoder: str | Path | None = None,
        quantize: int | None = None,
        group_size: int = 64,
        text_quantize: int | None = None,
        keep_text_encoder: bool = False,
        strict: bool = False,
        flow_config: FlowConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> StarFlowPipeline:
        """Load from a pipeline folder, a release name, a Hub repo id (see starflow_core.sources)
        or already resolved parts.

        `dtype`: "auto" (bfloat16 on CUDA, float32 on CPU), a dtype name or a torch.dtype; the
        flow's scale, shift, log-det and guidance stay fp32, T5 never runs in float16.
        `decoder`: a VAE folder or weights file fine-tuned on noisy latents, used instead of
        score denoising. `quantize` and `text_quantize` exist for symmetry with MLX and are
        refused here. `strict`: refuse checkpoints carrying tensors the model does not use.
        The flow itself loads on first use (see __init__).
        """
        if quantize is not None or text_quantize is not None:
            raise ValueError(
                "weight quantization is MLX-only; use starflow_mlx or run without --quantize/--quantize-text"
            )
        precision = Precision(auto_dtype(dtype_name(dtype), device), group_size=group_size)
        parts = hub.resolve(source, flow_config=flow_config, dtype=precision.dtype, strict=strict)
        parts = parts.with_decoder(decoder)
        pipe = cls(parts, None, None, precision=precision, strict=strict, device=device)
        pipe.decoder  # noqa: B018 - a --decoder given is loaded now: a bad file fails before any work
        if keep_text_encoder:
            pipe.text_encoder = pipe.load_text_encoder()
        return pipe

    @property
    def flow(self) -> StarFlow:
        """The flow model, loaded (tensor by tensor, in the pipeline's dtype) on first use."""
        if self._flow is None:
            self._flow = hub.load_flow(self.parts, self.dtype, str(self.device), self.strict)
        return self._flow

    @property
    def vae(self) -> AutoencoderKL | None:
        """The VAE, loaded on first use (at decoding: it is not resident while sampling)."""
        if self._vae is None and self.parts.vae is not None:
            self._vae = hub.load_vae(self.parts, self.dtype, str(self.device))
        return self._vae

    @property
    def decoder(self) -> AutoencoderKL | None:
        if self._decoder is None and self.parts.decoder is not None:
            self._decoder = hub.load_decoder(self.parts, self.dtype, str(self.device))
        return self._decoder

    # ----- array work (PipelineBase runs the steps) ------------------------------------------
    def load_text_encoder(self) -> TextEncoder:
        return hub.load_text_encoder(self.parts, DTYPES[self.precision.text_dtype], str(self.device))

    def _text_encoder(self) -> TextEncoder:
        return self.text_encoder or self.load_text_encoder()

    def release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def concatenate(self, rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(rows)

    def label_array(self, labels: list[int]) -> torch.Tensor:
        return torch.tensor(labels, dtype=torch.long, device=self.device)

    def encode_text(self, prompts: list[str], guided: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        config = self.config
        encoder = self._text_encoder()
        if encoder.d_model != config.txt_dim:
            raise ValueError(
                f"the text encoder has width {encoder.d_model} but the flow expects txt_dim={config.txt_dim}"
            )
        y = encoder.encode(prompts, config.txt_size)  # (B, txt_size, d_model)
        y_null = None
        if guided:
            y_null = encoder.encode([""], config.txt_size).expand_as(y)
        if encoder is not self.text_encoder:  # free T5 before sampling
            encoder.unload()
            del encoder
            self.release_memory()
        return y, y_null

    def noise_array(self, noise: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(noise).to(self.device, self.dtype)  # (B, C, h, w)

    def sample_flow(
        self,
        noise: torch.Tensor,
        y: torch.Tensor | None,
        y_null: torch.Tensor | None,
        settings: GenerationSettings,
        progress: bool,
        callback: Callable[[int, torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, int]:
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
        ).float()
        return latents, stats.steps

    def to_numpy(self, array: torch.Tensor) -> np.ndarray:
        """(B, C, H, W) tensor -> (B, H, W, C) float32 numpy, the layout both twins return."""
        return array.detach().float().permute(0, 2, 3, 1).cpu().numpy()

    def denoise(
        self, latents: torch.Tensor, y: torch.Tensor | None, noise_std: float | None = None
    ) -> torch.Tensor:
        """One score (Tweedie) step per sample, one at a time to bound the backward pass's memory."""
        rows = [
            self.flow.denoise(latents[i : i + 1], None if y is None else y[i : i + 1], noise_std)
            for i in range(latents.shape[0])
        ]
        return torch.cat(rows)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> VAE latents (posterior mean); pixel models: the images."""
        if self.vae is None:
            return images
        return self.vae.encode(images).float()

    @torch.no_grad()
    def invert_flow(
        self,
        latents: torch.Tensor,
        y: torch.Tensor | None,
        y_null: torch.Tensor | None,
        settings: GenerationSettings,
    ) -> torch.Tensor:
        noise, _ = self.flow.invert(latents.float(), y, y_null, settings.guidance)
        return noise.float()

    @torch.no_grad()
    def log_prob(self, latents: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.flow.log_prob(latents.float(), y)

    def from_numpy(self, array: np.ndarray) -> torch.Tensor:
        """(B, H, W, C) float32 numpy -> (B, C, H, W) tensor on the pipeline's device."""
        return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2), dtype=np.float32)).to(
            self.device
        )

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, use_decoder: bool = False) -> torch.Tensor:
        """Flow samples -> images (B, 3, H, W) in [-1, 1] (pixel models: the samples themselves)."""
        vae = self.decoder if use_decoder else self.vae
        if vae is None:
            return latents
        return vae.decode(latents, batch_size=1)
