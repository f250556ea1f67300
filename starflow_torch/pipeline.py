"""Prompt -> image with STARFlow in PyTorch: text encoding, flow sampling, denoising, VAE decoding.

    pipe = StarFlowPipeline.from_pretrained("starflow-3b-t2i-256", device="cuda")
    images = pipe(["a film still of a cat playing piano"], seeds=[0, 1])  # PIL images
    result = pipe.generate(prompts, seeds=[0])   # raw arrays (numpy, NHWC) and settings

The twin of starflow_mlx.pipeline: same names, same numpy noise per seed (drawn NCHW),
so both twins make the same image from the same seed. Returned arrays are numpy NHWC
like the MLX twin's; the modules work on NCHW tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

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
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        """`text_encoder` given here stays loaded; otherwise T5 is loaded for each call and
        freed before sampling."""
        self.parts, self.flow, self.vae, self.decoder = parts, flow, vae, decoder
        self.text_encoder = text_encoder
        self.dtype = dtype
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | PipelineParts,
        *,
        dtype: torch.dtype = torch.float32,
        decoder: str | Path | None = None,
        quantize: int | None = None,
        group_size: int = 64,
        keep_text_encoder: bool = False,
        flow_config: FlowConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> StarFlowPipeline:
        """Load from a pipeline folder, a release name, a Hub repo id (see starflow_core.sources)
        or already resolved parts.

        `decoder`: a VAE folder or weights file fine-tuned on noisy latents, used instead of
        score denoising. `quantize` exists for symmetry with MLX and is refused here.
        """
        if quantize is not None:
            raise ValueError("weight quantization is MLX-only; use starflow_mlx or run without --quantize")
        parts = hub.resolve(source, flow_config=flow_config).with_decoder(decoder)
        device = str(device)
        flow = hub.load_flow(parts, dtype, device)
        text_encoder = hub.load_text_encoder(parts, dtype, device) if keep_text_encoder else None
        vae, fine_tuned = hub.load_vae(parts, dtype, device), hub.load_decoder(parts, dtype, device)
        return cls(parts, flow, vae, fine_tuned, text_encoder, dtype, device)

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
        return self.text_encoder or hub.load_text_encoder(self.parts, self.dtype, str(self.device))

    def conditions(self, prompts: list[str], guided: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(y, y_null) for the flow: T5 features of the prompts and of "", labels, or None."""
        config = self.config
        if config.label_conditioned or (config.family == "tarflow" and config.num_classes):
            labels = prompts_to_labels(prompts, config.num_classes, self.parts.labels)
            return torch.tensor(labels, dtype=torch.long, device=self.device), None
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
            y_null = encoder.encode([""], config.txt_size).expand_as(y)
        if encoder is not self.text_encoder:  # free T5 before sampling
            encoder.unload()
            del encoder
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
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
            torch.from_numpy(noise).to(self.device, self.dtype),  # (B, C, h, w)
            y,
            y_null,
            settings.guidance,
            jacobi=settings.jacobi,
            block_size=settings.block_size,
            tol=settings.tol,
            max_iter=settings.max_iter,
            progress=progress,
            stats=stats,
        ).float()
        check_finite(_to_numpy(latents), seeds, "flow samples")
        mode = self._denoise_mode(denoise)
        if mode == "score":
            latents = self.denoise(latents, y)
        images = _to_numpy(self.decode(latents, use_decoder=mode == "decoder"))
        check_finite(images, seeds, "decoded images")
        return Generation(
            model=self.parts.name,
            prompts=prompts,
            seeds=seeds,
            settings=settings,
            height=height,
            width=width,
            denoise=mode,
            steps=stats.steps,
            latents=_to_numpy(latents),
            images=images,
        )

    def __call__(self, prompts: str | Sequence[str], **kwargs) -> list:
        """Same arguments as `generate`; returns PIL images."""
        return self.generate(prompts, **kwargs).pil_images()

    def _denoise_mode(self, denoise: bool) -> str:
        if not denoise or self.config.noise_std <= 0:
            return "none"
        return "decoder" if self.decoder is not None else "score"

    def denoise(self, latents: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """One score (Tweedie) step per sample, one at a time to bound the backward pass's memory."""
        rows = [
            self.flow.denoise(latents[i : i + 1], None if y is None else y[i : i + 1])
            for i in range(latents.shape[0])
        ]
        return torch.cat(rows)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, use_decoder: bool = False) -> torch.Tensor:
        """Flow samples -> images (B, 3, H, W) in [-1, 1] (pixel models: the samples themselves)."""
        vae = self.decoder if use_decoder else self.vae
        if vae is None:
            return latents
        return vae.decode(latents, batch_size=1)


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) tensor -> (B, H, W, C) float32 numpy, the layout both twins return."""
    return x.detach().float().permute(0, 2, 3, 1).cpu().numpy()
