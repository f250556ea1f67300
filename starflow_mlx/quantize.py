"""Weight-only quantization of the transformer linears (MLX affine, 4 or 8 bits per weight).

Quantized: every Linear inside the transformer layers (attention qkv/proj; MLP main.0/main.2,
or gate_proj/up_proj/down_proj with SwiGLU) whose input width is a multiple of the group size. Kept in full precision: the flow's
input/output projections proj_in and proj_out (the affine map's shift and scale come
straight out of proj_out, and both are tiny) and proj_txt. The rule lives in
`is_quantized`, and `quantize_model` is what checkpoint.load_pretrained calls for a
folder whose config.json records `quantization: [bits, group_size]`, and also, with
`quantize=(bits, group_size)`, to quantize a full-precision folder layer by layer as it loads.

On Apple GPUs quantized matmuls cut weight traffic (what bounds sequential sampling);
on the Linux CPU backend they mainly save memory (the CPU kernels are slower than BLAS).
"""

from __future__ import annotations

import mlx.nn as nn

FULL_PRECISION_LINEARS = ("proj_in", "proj_out", "proj_txt")


def is_quantized(path: str, module: nn.Module, group_size: int) -> bool:
    """Whether the module at `path` (e.g. "blocks.5.attn_blocks.0.mlp.main.0") gets quantized."""
    if not isinstance(module, nn.Linear):
        return False
    if path.rsplit(".", 1)[-1] in FULL_PRECISION_LINEARS:
        return False
    return module.weight.shape[1] % group_size == 0  # weight (out, in): groups run along `in`


def quantize_model(model: nn.Module, bits: int, group_size: int) -> None:
    """Replace the selected Linears of `model` by QuantizedLinear, in place (weights quantized now)."""
    nn.quantize(
        model,
        group_size=group_size,
        bits=bits,
        class_predicate=lambda path, module: is_quantized(path, module, group_size),
    )


def quantize(model: nn.Module, bits: int = 8, group_size: int = 64) -> nn.Module:
    """Quantize `model` in place and record (bits, group_size) in its config; returns the model.

    `save_pretrained` then writes the packed weights with their scales and biases, and
    config.json carries `quantization`, so `StarFlow.from_pretrained` rebuilds it.
    """
    if model.config.quantization is not None:
        raise ValueError(f"model is already quantized {model.config.quantization}; load full weights")
    model.config.replace(quantization=(bits, group_size))  # validates bits and group_size first
    quantize_model(model, bits, group_size)
    record_quantization(model, bits, group_size)
    return model


def record_quantization(model: nn.Module, bits: int, group_size: int) -> None:
    """Record (bits, group_size) in the config of the model and of its blocks."""
    config = model.config.replace(quantization=(bits, group_size))  # validates bits and group_size
    model.config = config
    for block in model.blocks:
        if hasattr(block, "config"):
            block.config = config
