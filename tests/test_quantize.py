"""8- and 4-bit MLX quantization of the transformer linears (starflow_mlx/quantize.py)."""

from __future__ import annotations

import json

# isort: off
import mlx.core as mx

# isort: on
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from starflow_core.bench.settings import BenchSettings
from starflow_core.bench.weights import build_random_folder
from starflow_core.presets import preset
from starflow_core.sources.pipeline_folder import PipelineParts
from starflow_mlx import StarFlow, StarFlowPipeline

GROUP_SIZE = 64


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_flow")
    build_random_folder(preset("tiny"), path, BenchSettings(proj_out_std=0.05))
    return path


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    config = preset("tiny")
    x = rng.standard_normal((2, config.img_size, config.img_size, config.in_channels), dtype=np.float32)
    y = rng.standard_normal((2, config.txt_size, config.txt_dim), dtype=np.float32)
    return mx.array(x), mx.array(y)


# Affine quantization rounds each weight to within half a step of its group's grid,
# step = (max - min) / (2^bits - 1): 17x coarser at 4 bits than at 8 (255 / 15). On this
# random tiny model (seeded, so deterministic) the observed max |dz| / max |z| is 1.9e-3
# (8-bit) and 4.2e-2 (4-bit), and bits/dim moves by 1.2e-3 and 1.6e-2. These bounds only say
# the quantized model still computes the same function; that each layer really is quantized
# with the requested bits and group size is asserted on the layers themselves.
Z_BOUND = {8: 2e-2, 4: 3e-1}
BITS_PER_DIM_BOUND = {8: 5e-3, 4: 6e-2}


def assert_quantized_as_requested(model: StarFlow, bits: int, group_size: int) -> int:
    """Every QuantizedLinear has these bits and group size, and its packed weight, scales and
    biases have the shapes they imply; returns how many there are."""
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.QuantizedLinear):
            continue
        count += 1
        out_features, packed = module.weight.shape
        in_features = packed * 32 // bits  # uint32 words, 32 / bits weights each
        assert (module.bits, module.group_size) == (bits, group_size), name
        assert module.weight.dtype == mx.uint32, name
        assert module.scales.shape == module.biases.shape == (out_features, in_features // group_size), name
    return count


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_output_close_to_full_precision(folder, data, bits):
    x, y = data
    full = StarFlow.from_pretrained(folder)
    quantized = StarFlow.from_pretrained(folder).quantize(bits, GROUP_SIZE)
    layers = sum(len(block.attn_blocks) for block in quantized.blocks if hasattr(block, "attn_blocks"))
    assert (
        assert_quantized_as_requested(quantized, bits, GROUP_SIZE) == 4 * layers
    )  # qkv, proj, main.0, main.2
    z_full, logdet_full = full(x, y)
    z_quant, logdet_quant = quantized(x, y)
    deviation = float(mx.max(mx.abs(z_quant - z_full)) / mx.max(mx.abs(z_full)))
    assert deviation < Z_BOUND[bits]
    assert deviation > 0  # the quantized path really ran
    bpd_delta = float(mx.max(mx.abs(quantized.bits_per_dim(x, y) - full.bits_per_dim(x, y))))
    assert bpd_delta < BITS_PER_DIM_BOUND[bits]


def test_skip_rule(folder):
    model = StarFlow.from_pretrained(folder).quantize(8, GROUP_SIZE)
    for block in model.blocks:
        if not hasattr(block, "proj_out"):
            continue
        for name in ("proj_in", "proj_out", "proj_txt"):
            if hasattr(block, name):
                assert type(getattr(block, name)) is nn.Linear, name
        for layer in block.attn_blocks:
            linears = [layer.attention.qkv, layer.attention.proj, layer.mlp.main[0], layer.mlp.main[2]]
            assert all(isinstance(linear, nn.QuantizedLinear) for linear in linears)


def test_input_width_not_multiple_of_group_stays_full_precision():
    config = preset("tiny").replace(channels=96, head_dim=32)  # 96 % 64 != 0; MLP out-proj reads 384
    model = StarFlow(config).quantize(8, GROUP_SIZE)
    layer = model.blocks[-1].attn_blocks[0]
    # starflow_mlx.layers.Linear subclasses nn.Linear; QuantizedLinear does not
    assert isinstance(layer.attention.qkv, nn.Linear) and isinstance(layer.attention.proj, nn.Linear)
    assert isinstance(layer.mlp.main[0], nn.Linear)
    assert isinstance(layer.mlp.main[2], nn.QuantizedLinear)


@pytest.mark.parametrize("bits", [8, 4])
def test_round_trip_through_save_pretrained(folder, data, tmp_path, bits):
    x, y = data
    quantized = StarFlow.from_pretrained(folder).quantize(bits, GROUP_SIZE)
    quantized.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantization"] == [bits, GROUP_SIZE]
    loaded = StarFlow.from_pretrained(tmp_path)
    assert loaded.config.quantization == (bits, GROUP_SIZE)
    assert assert_quantized_as_requested(loaded, bits, GROUP_SIZE) > 0
    saved = dict(tree_flatten(quantized.parameters()))
    assert set(saved) == set(dict(tree_flatten(loaded.parameters())))
    assert any(name.endswith(".scales") for name in saved)
    z_saved, logdet_saved = quantized(x, y)
    z_loaded, logdet_loaded = loaded(x, y)
    assert np.array_equal(np.array(z_saved), np.array(z_loaded))
    assert np.array_equal(np.array(logdet_saved), np.array(logdet_loaded))


def test_quantizing_twice_is_an_error(folder):
    model = StarFlow.from_pretrained(folder).quantize(8, GROUP_SIZE)
    with pytest.raises(ValueError, match="already quantized"):
        model.quantize(4, GROUP_SIZE)


def test_variant_linears_follow_the_rule(tmp_path, data):
    """SwiGLU's gate/up/down projections and a grouped-head qkv (no biases) are transformer
    linears like the others: quantized, and the model stays close to full precision."""
    x, y = data
    config = preset("tiny").replace(use_swiglu=True, num_kv_heads=1, use_qk_norm=True, use_bias=False)
    build_random_folder(config, tmp_path / "full", BenchSettings(proj_out_std=0.05))
    full = StarFlow.from_pretrained(tmp_path / "full")
    quantized = StarFlow.from_pretrained(tmp_path / "full").quantize(8, GROUP_SIZE)
    for block in quantized.blocks:
        assert type(block.proj_in) is nn.Linear and type(block.proj_out) is nn.Linear
        for layer in block.attn_blocks:
            mlp, attention = layer.mlp, layer.attention
            linears = [attention.qkv, attention.proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
            assert all(isinstance(linear, nn.QuantizedLinear) for linear in linears)
            assert attention.qkv.weight.shape[0] == 64 + 2 * 32  # 2 query heads, 1 key/value head
    z_full, _ = full(x, y)
    z_quant, _ = quantized(x, y)
    deviation = float(mx.max(mx.abs(z_quant - z_full)) / mx.max(mx.abs(z_full)))
    assert 0 < deviation < Z_BOUND[8]  # the 8-bit bound above (same widths, same grid step); measured 1.6e-3
    quantized.save_pretrained(tmp_path / "q8")
    z_loaded, _ = StarFlow.from_pretrained(tmp_path / "q8")(x, y)
    assert np.array_equal(np.array(z_quant), np.array(z_loaded))


def test_quantize_on_load_uses_the_requested_group_size(folder, data, tmp_path):
    """from_pretrained(quantize=4, group_size=32) (not the default 64): the layers, the config and
    the saved folder all say 32, and the numbers are those of quantizing after loading."""
    x, y = data
    loaded = StarFlow.from_pretrained(folder, quantize=4, group_size=32)
    assert loaded.config.quantization == (4, 32)
    layers = sum(len(block.attn_blocks) for block in loaded.blocks if hasattr(block, "attn_blocks"))
    assert assert_quantized_as_requested(loaded, 4, 32) == 4 * layers
    after = StarFlow.from_pretrained(folder).quantize(4, 32)
    z_loaded, _ = loaded(x, y)
    assert np.array_equal(np.array(z_loaded), np.array(after(x, y)[0]))  # the same rounding, exactly
    loaded.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantization"] == [4, 32]
    reloaded = StarFlow.from_pretrained(tmp_path)
    assert assert_quantized_as_requested(reloaded, 4, 32) == 4 * layers
    assert np.array_equal(np.array(reloaded(x, y)[0]), np.array(z_loaded))
    # the pipeline passes the group size on to the flow it loads
    pipe = StarFlowPipeline.from_pretrained(PipelineParts("tiny", folder), quantize=4, group_size=32)
    assert assert_quantized_as_requested(pipe.flow, 4, 32) == 4 * layers
