"""Every weight name and shape a FlowConfig implies, without building a model.

The twins build exactly this set (a test asserts it), so a checkpoint can be checked
against a configuration before any framework or memory is involved.
"""

from __future__ import annotations

from starflow_core.config import FlowConfig


def expected_weight_shapes(config: FlowConfig) -> dict[str, tuple[int, ...]]:
    token_dim, channels = config.token_dim, config.channels
    query_width = config.query_heads * config.head_dim
    kv_width = config.kv_heads * config.head_dim
    hidden = config.mlp_width
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
                if config.norm_type != "none":
                    shapes[f"{prefix}.{norm}.weight"] = (channels,)
                if config.norm_type == "layer_norm":
                    shapes[f"{prefix}.{norm}.bias"] = (channels,)
            bias = config.use_bias
            linear(f"{prefix}.attention.qkv", channels, query_width + 2 * kv_width, bias)
            linear(f"{prefix}.attention.proj", query_width, channels, bias)
            if config.use_qk_norm:
                shapes[f"{prefix}.attention.query_norm.weight"] = (config.head_dim,)
                shapes[f"{prefix}.attention.key_norm.weight"] = (config.head_dim,)
            if config.use_swiglu:
                linear(f"{prefix}.mlp.gate_proj", channels, hidden, bias)
                linear(f"{prefix}.mlp.up_proj", channels, hidden, bias)
                linear(f"{prefix}.mlp.down_proj", hidden, channels, bias)
            else:
                linear(f"{prefix}.mlp.main.0", channels, hidden, bias)
                linear(f"{prefix}.mlp.main.2", hidden, channels, bias)
            if config.use_post_norm:
                shapes[f"{prefix}.attention.post_norm.weight"] = (channels,)
                shapes[f"{prefix}.mlp.post_norm.weight"] = (channels,)
    if config.family == "tarflow":
        shapes["var"] = (config.grid_size**2, token_dim)
    return shapes
