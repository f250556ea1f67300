"""Every weight name and shape a FlowConfig implies, without building a model.

The twins build exactly this set (a test asserts it), so a checkpoint can be checked
against a configuration before any framework or memory is involved.
"""

from __future__ import annotations

from starflow_core.config import FlowConfig

# Transformer layers of the learned self-denoiser (official NonCausalBlock num_layers=8).
DENOISER_LAYERS = 8


def expected_weight_shapes(config: FlowConfig) -> dict[str, tuple[int, ...]]:
    token_dim = config.token_dim
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
        channels = config.block_channels(i)
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
        _layer_shapes(config.layer_config(i), block, num_layers, shapes, linear)
    if config.learnable_self_denoiser:  # official NonCausalBlock: no sos, pos_embed or shift/scale split
        channels, prefix = config.channels, "learnable_self_denoiser"
        linear(f"{prefix}.proj_in", token_dim, channels)
        linear(f"{prefix}.proj_out", channels, token_dim)
        if config.conditional_denoiser:
            linear(f"{prefix}.proj_txt", config.txt_dim, channels)
        if config.use_final_norm:
            shapes[f"{prefix}.final_norm.weight"] = (channels,)
        _layer_shapes(config, prefix, DENOISER_LAYERS, shapes, linear)
    if config.family == "tarflow":
        shapes["var"] = (config.grid_size**2, token_dim)
    return shapes


def _layer_shapes(config: FlowConfig, block: str, num_layers: int, shapes, linear) -> None:
    """The transformer layers `{block}.attn_blocks.{l}` of the width config.channels."""
    channels, hidden = config.channels, config.mlp_width
    query_width = config.query_heads * config.head_dim
    kv_width = config.kv_heads * config.head_dim
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


def official_buffer_shapes(config: FlowConfig) -> dict[str, tuple[int, ...]]:
    """The buffers an official STARFlow state_dict carries besides the weights (SPEC section 2;
    dropped on loading): `var` (P^2, C'), each non-identity block's causal `attn_mask`
    (P^2 + txt_size square) and, with RoPE, the zero `feat_rope.freqs_cos/sin` tables
    (txt_size + P^2, head_dim), P = pt_seq_len or img_size // patch_size."""
    side = config.rope_seq_len
    mask = side**2 + config.txt_size
    shapes: dict[str, tuple[int, ...]] = {"var": (side**2, config.token_dim)}
    for i, num_layers in enumerate(config.layers_per_block):
        if num_layers:
            shapes[f"blocks.{i}.attn_mask"] = (mask, mask)
    if config.rope:
        for name in ("freqs_cos", "freqs_sin"):
            shapes[f"feat_rope.{name}"] = (config.txt_size + side**2, config.head_dim)
    return shapes
