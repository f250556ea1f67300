"""Build the same random model in both twins (torch builds, MLX loads the saved folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from starflow_core.config import FlowConfig

# a small text-conditioned STARFlow: RoPE, sos, a zero-layer block, text in the deep block only
TEXT_CONFIG = FlowConfig(
    in_channels=2,
    img_size=4,
    patch_size=1,
    channels=32,
    num_blocks=3,
    layers_per_block=(1, 0, 2),
    head_dim=32,
    rope=True,
    sos=True,
    txt_size=3,
    txt_dim=8,
    cond_top_only=True,
    use_softplus=True,
    use_final_norm=True,
    soft_clip=2.0,
    seq_order="L2R",
)


def random_torch_model(config: FlowConfig, seed: int = 0, scale: float = 0.05):
    """A torch StarFlow with non-trivial weights: proj_out (it starts at zero) and every norm
    weight perturbed, so each norm (query_norm and key_norm too) has weights of its own."""
    from starflow_torch import StarFlow

    torch.manual_seed(seed)
    model = StarFlow(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "proj_out" in name or "norm" in name:
                param.add_(scale * torch.randn_like(param))
    return model


def twin_models(config: FlowConfig, folder: Path, seed: int = 0, scale: float = 0.05):
    """(torch model, MLX model) with identical weights, exchanged through our folder format."""
    from starflow_mlx import StarFlow as MlxStarFlow

    torch_model = random_torch_model(config, seed, scale)
    torch_model.save_pretrained(folder)
    return torch_model, MlxStarFlow.from_pretrained(folder)


def random_inputs(config: FlowConfig, batch: int, height: int, width: int, seed: int = 0):
    """(x NCHW, text features or labels or None) as numpy arrays."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, config.in_channels, height, width)).astype(np.float32)
    if config.txt_dim and not config.label_conditioned:
        y = rng.standard_normal((batch, max(config.txt_size, 1), config.txt_dim)).astype(np.float32)
    elif config.num_classes:
        y = rng.integers(0, config.num_classes, size=batch).astype(np.int64)
    else:
        y = None
    return x, y
