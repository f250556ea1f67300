"""Tiny random video pipelines: a text-to-video flow (temporal_causal, frame-local shallow blocks,
the conditional learned denoiser) through a tiny Wan2.2 VAE and a tiny T5, and a label-conditioned
pixel video flow (the demo's kind: no VAE, labels through the text path)."""

from __future__ import annotations

from pathlib import Path

import torch

from starflow_core.generation.settings import GenerationSettings
from starflow_core.sources.pipeline_folder import PipelineParts, write_pipeline_folder
from starflow_core.video.settings import VideoDefaults

from .tiny_components import TINY_T5_CONFIG, make_tiny_t5_folder, randomize_
from .tiny_pipeline import TINY_TEXT_FLOW, make_flow_folder

# Wan2.2's layout at toy widths: 16x spatial (patch 2 x three halvings), 4x temporal, 4 latent channels
TINY_WAN = dict(
    base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], temperal_downsample=[False, True, True]
)
# latent 4 x 4 x 4 per frame -> 64 x 64 pixels; frames ordered in time, frame-local shallow blocks
TINY_VIDEO_FLOW = TINY_TEXT_FLOW.replace(
    img_size=4,
    temporal_causal=2,
    shallow_block_local=True,
    learnable_self_denoiser=True,
    conditional_denoiser=True,
    denoiser_window=1,
    noise_std=0.3,
)
# 8x8 grey pixel frames, two classes through the text path (as the moving-digits demo)
TINY_LABEL_VIDEO_FLOW = TINY_VIDEO_FLOW.replace(
    in_channels=1,
    img_size=8,
    patch_size=2,
    num_classes=2,
    txt_size=1,
    txt_dim=3,  # one embedding per class and the null label
    learnable_self_denoiser=False,
    conditional_denoiser=False,
    denoiser_window=None,
    noise_std=0.05,
)
TINY_VIDEO_SETTINGS = GenerationSettings(guidance=1.5, jacobi=False, block_size=4, tol=1e-4, max_iter=16)
# 5 frames (2 latent) in training, the 7B's template
TINY_VIDEO_DEFAULTS = VideoDefaults(
    num_frames=5, fps=8, fps_cond=True, cond_noise_level=True, mix_aspect=True, temporal_scale=0.6
)


def make_tiny_wan_vae_folder(path: Path, seed: int = 0) -> Path:
    """A diffusers AutoencoderKLWan folder (random weights and latent statistics)."""
    import diffusers

    generator = torch.Generator().manual_seed(seed + 3)
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKLWan(
        **TINY_WAN,
        num_res_blocks=1,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        latents_mean=(torch.randn(4, generator=generator) * 0.3).tolist(),
        latents_std=(torch.rand(4, generator=generator) + 0.5).tolist(),
    )
    randomize_(vae, seed=seed + 1, spread=0.05)
    vae.save_pretrained(path)
    return path


def make_tiny_video_pipeline(root: Path) -> Path:
    """root/video_pipeline: text-to-video, tiny T5 + tiny video flow + tiny Wan VAE."""
    make_tiny_t5_folder(root / "t5")
    make_tiny_wan_vae_folder(root / "wan_vae")
    make_flow_folder(root / "video_flow", TINY_VIDEO_FLOW.replace(txt_dim=TINY_T5_CONFIG["d_model"]), seed=4)
    parts = PipelineParts(
        name="tiny-t2v",
        transformer=root / "video_flow",
        vae=root / "wan_vae",
        text_encoder=root / "t5",
        tokenizer=root / "t5",
        sampling=TINY_VIDEO_SETTINGS,
        default_prompts=("a red fox running in the snow",),
        video=TINY_VIDEO_DEFAULTS,
    )
    write_pipeline_folder(parts, root / "video_pipeline")
    return root / "video_pipeline"


def make_label_video_pipeline(root: Path) -> Path:
    """root/label_video_pipeline: 8x8 grey pixel videos of two classes, 3 frames in training."""
    make_flow_folder(root / "label_video_flow", TINY_LABEL_VIDEO_FLOW, seed=5)
    parts = PipelineParts(
        name="tiny-label-video",
        transformer=root / "label_video_flow",
        sampling=TINY_VIDEO_SETTINGS,
        labels=("zero", "one"),
        video=VideoDefaults(num_frames=3, fps=8),
    )
    write_pipeline_folder(parts, root / "label_video_pipeline")
    return root / "label_video_pipeline"
