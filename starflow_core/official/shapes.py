"""Every weight name and shape a FlowConfig implies, without building a model.

The twins build exactly this set (a test asserts it), so a checkpoint can be checked
against a configuration before any framework or memory is involved.
"""

from __future__ import annotations

from starflow_core.config import FlowConfig


def expected_weight_shapes(config: FlowConfig) -> dict[str, tuple[int, ...]]:
    token_dim, channels = config.token_dim, config.channels
    hidden = channels * config.expansion
    out_dim = 2 * token_dim if config.nvp else token_dim
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(prefix: str, fan_in: int, fan_out: int, bias: bool = True) -> None:
        shapes[f"{prefix}.weight"] = (fan_out, fan_in)
        if bias:
            shapes[f"{prefix}.bias"] = (fan_out,)

    for i, num_layers in enumerate(config.layers_per_block):
        if num_layers == 0:
            continue  # identity block: no parameters
        block = f"blocks.{i}"
        linear(f"{block}.proj_in", token_dim, channels)
        linear(f"{block}.proj_out", channels, out_dim)
        if config.uses_pos_embed:
            shapes[f"{block}.pos_embed"] = (config.grid_size**2, channels)
        if config.family == "tarflow" and config.num_classes:
            shapes[f"{block}.class_embed"] = (config.num_classes, 1, channels)
        if config.sos:
            shapes[f"{block}.sos_embed"] = (1, 1, token_dim)
        if config.block_has_text(i):
            linear(f"{block}.proj_txt", config.txt_dim, channels)
        if config.use_final_norm:
            shapes[f"{block}.final_norm.weight"] = (channels,)
        for layer in range(num_layers):
            prefix = f"{block}.attn_blocks.{layer}"
            for norm in ("attention.norm", "mlp.norm"):
                shapes[f"{prefix}.{norm}.weight"] = (channels,)
                shapes[f"{prefix}.{norm}.bias"] = (channels,)
            linear(f"{prefix}.attention.qkv", channels, 3 * channels, config.use_bias)
            linear(f"{prefix}.attention.proj", channels, channels, config.use_bias)
            linear(f"{prefix}.mlp.main.0", channels, hidden, config.use_bias)
            linear(f"{prefix}.mlp.main.2", hidden, channels, config.use_bias)
    if config.family == "tarflow":
        shapes["var"] = (config.grid_size**2, token_dim)
    return shapes
