"""Tiny random pipeline folders (flow + tiny VAE + tiny T5) and a fake Hugging Face cache.

The flow's proj_out (zero at init, which makes a flow the identity) and every other
parameter get random offsets, so sampling, guidance and denoising all do something.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from starflow_core.config import FlowConfig
from starflow_core.generation.settings import GenerationSettings
from starflow_core.sources.pipeline_folder import PipelineParts, write_pipeline_folder

from .tiny_components import (
    TINY_T5_CONFIG,
    TINY_VAE_CONFIG,
    make_tiny_t5_folder,
    make_tiny_vae_folder,
    make_vae_folder,
    randomize_,
)

# latent 8x8x4 through the tiny VAE (downsample 2) -> 16x16 images; txt_dim = tiny T5 width
TINY_TEXT_FLOW = FlowConfig(
    in_channels=4,
    img_size=8,
    patch_size=1,
    channels=64,
    num_blocks=3,
    layers_per_block=(1, 1, 2),
    head_dim=32,
    rope=True,
    sos=True,
    txt_size=6,
    txt_dim=TINY_T5_CONFIG["d_model"],
    cond_top_only=True,
    use_softplus=True,
    use_final_norm=True,
    soft_clip=4.0,
    seq_order="L2R",
    noise_std=0.3,
)
# class-conditional STARFlow on 8x8 RGB pixels (no VAE, no text encoder)
TINY_LABEL_FLOW = TINY_TEXT_FLOW.replace(
    in_channels=3, num_classes=3, txt_size=1, txt_dim=4, noise_std=0.05, num_blocks=2, layers_per_block=(1, 2)
)
# unconditional latent STARFlow (through the tiny VAE), no text encoder
TINY_UNCONDITIONAL_FLOW = TINY_TEXT_FLOW.replace(
    txt_size=0, txt_dim=0, cond_top_only=False, noise_std=0.2, num_blocks=2, layers_per_block=(1, 2)
)
# class-conditional TARFlow on 8x8 RGB pixels: no sos, learned positions, guidance on raw outputs
TINY_TARFLOW = FlowConfig(
    family="tarflow",
    in_channels=3,
    img_size=8,
    patch_size=2,
    channels=32,
    head_dim=16,
    num_blocks=2,
    layers_per_block=(1, 1),
    num_classes=2,
    noise_std=0.05,
)
TINY_SETTINGS = GenerationSettings(guidance=1.5, jacobi=False, block_size=4, tol=1e-4, max_iter=16)


def make_flow_folder(path: Path, config: FlowConfig, seed: int = 0, nan: bool = False) -> Path:
    from starflow_torch import StarFlow

    torch.manual_seed(seed)
    model = StarFlow(config)
    randomize_(model, seed, spread=0.05)
    if config.family == "tarflow":  # a prior variance other than one, so code that ignores it fails
        with torch.no_grad():
            model.var.copy_(
                0.8 + 0.4 * torch.rand(model.var.shape, generator=torch.Generator().manual_seed(seed))
            )
    if nan:
        with torch.no_grad():
            model.blocks[-1].proj_out.weight[0, 0] = float("nan")
    model.save_pretrained(path)
    return path


def make_tiny_pipeline(root: Path) -> Path:
    """root/pipeline: a text-to-image pipeline folder of tiny random parts."""
    make_tiny_t5_folder(root / "t5")
    make_tiny_vae_folder(root / "vae")
    make_flow_folder(root / "flow", TINY_TEXT_FLOW)
    parts = PipelineParts(
        name="tiny-t2i",
        transformer=root / "flow",
        vae=root / "vae",
        text_encoder=root / "t5",
        tokenizer=root / "t5",
        sampling=TINY_SETTINGS,
        default_prompts=("a photo of a cat",),
    )
    write_pipeline_folder(parts, root / "pipeline")
    return root / "pipeline"


def make_nan_pipeline(pipeline: Path, root: Path) -> Path:
    """A copy of `pipeline` (files hard-linked) whose flow weights hold a NaN."""
    from starflow_core.sources.pipeline_folder import read_pipeline_folder

    parts = read_pipeline_folder(pipeline)
    flow = make_flow_folder(root / "nan_flow", parts.flow_config, nan=True)
    write_pipeline_folder(dataclasses.replace(parts, transformer=flow), root / "nan_pipeline")
    return root / "nan_pipeline"


def make_label_pipeline(root: Path) -> Path:
    make_flow_folder(root / "label_flow", TINY_LABEL_FLOW, seed=1)
    parts = PipelineParts(
        name="tiny-labels",
        transformer=root / "label_flow",
        sampling=TINY_SETTINGS,
        labels=("cat", "dog", "bird"),
    )
    write_pipeline_folder(parts, root / "label_pipeline")
    return root / "label_pipeline"


def make_unconditional_pipeline(root: Path) -> Path:
    """root/unconditional_pipeline: a latent flow without conditioning (so no guidance), through a
    tiny VAE with scaling_factor 1: latents of unit scale, where the random flow is well conditioned
    (at the 0.2 scale of the default tiny VAE its inverse amplifies float32 rounding to ~1e-3)."""
    make_vae_folder(root / "unit_vae", {**TINY_VAE_CONFIG, "scaling_factor": 1.0})
    make_flow_folder(root / "unconditional_flow", TINY_UNCONDITIONAL_FLOW, seed=2)
    parts = PipelineParts(
        name="tiny-unconditional",
        transformer=root / "unconditional_flow",
        vae=root / "unit_vae",
        sampling=dataclasses.replace(TINY_SETTINGS, guidance=0.0),
    )
    write_pipeline_folder(parts, root / "unconditional_pipeline")
    return root / "unconditional_pipeline"


def make_tarflow_pipeline(root: Path) -> Path:
    make_flow_folder(root / "tarflow_flow", TINY_TARFLOW, seed=3)
    parts = PipelineParts(
        name="tiny-tarflow", transformer=root / "tarflow_flow", sampling=TINY_SETTINGS, labels=("cat", "dog")
    )
    write_pipeline_folder(parts, root / "tarflow_pipeline")
    return root / "tarflow_pipeline"


def add_to_fake_hub(cache: Path, repo_id: str, files: dict[str, Path], commit: str) -> Path:
    """Lay files out as huggingface_hub does: blobs/, snapshots/<commit>/ symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for index, (name, source) in enumerate(sorted(files.items())):
        blob = repo / "blobs" / f"{commit[:8]}{index:032x}"
        shutil.copyfile(source, blob)
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path("../" * (len(Path(name).parts) + 1)) / "blobs" / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
