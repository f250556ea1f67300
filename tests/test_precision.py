"""Number formats: --dtype auto, bfloat16 images against float32 ones, T5 never in float16, and
the dtypes / quantization recorded with every image."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import starflow_mlx.pipeline as mlx_pipeline
import starflow_torch.pipeline as torch_pipeline
from starflow_core.generation.precision import Precision, resolve_dtype, text_dtype
from tests.helpers.tiny_pipeline import make_tiny_pipeline

PROMPTS = ["a photo of a cat", "two dogs in the park"]
SEEDS = [0, 5]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("precision"))


def test_auto_is_bfloat16_on_a_gpu_and_float32_on_cpu():
    assert resolve_dtype("auto", accelerated=True) == "bfloat16"
    assert resolve_dtype("auto", accelerated=False) == "float32"
    assert resolve_dtype("float16", accelerated=True) == "float16"
    assert mlx_pipeline.auto_dtype("auto") == ("bfloat16" if mx.default_device() == mx.gpu else "float32")
    assert torch_pipeline.auto_dtype("auto", "cpu") == "float32"
    assert torch_pipeline.auto_dtype("auto", "cuda") == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("float8", accelerated=False)


def test_text_encoder_never_runs_in_float16(folder):
    assert text_dtype("float16") == "bfloat16" and text_dtype("float32") == "float32"
    pipe = mlx_pipeline.StarFlowPipeline.from_pretrained(folder, dtype="float16")
    encoder = pipe.load_text_encoder()
    assert {v.dtype for _, v in tree_flatten(encoder.model.parameters())} == {mx.bfloat16}
    assert pipe.flow.blocks[-1].proj_in.weight.dtype == mx.float16


# bfloat16 keeps 8 mantissa bits: each weight and activation is rounded by up to 0.4%. The flow's
# scale, shift, log-det and guidance stay fp32, so the rounding enters only through the network's
# outputs; on the tiny random pipeline the images (in [-1, 1]) moved by at most 0.039 (MLX) and
# 0.038 (torch), 0.006 on average, the latents by 1.3% of their range. Bounds ~2.5x those: a
# bf16 guidance or affine map (errors compounding over the tokens) exceeds them.
IMAGE_MAX, IMAGE_MEAN, LATENT_RELATIVE = 0.1, 0.02, 0.03


@pytest.mark.parametrize("twin", [mlx_pipeline, torch_pipeline], ids=["mlx", "torch"])
@pytest.mark.parametrize("jacobi", [False, True], ids=["sequential", "jacobi"])
def test_bfloat16_images_agree_with_float32(folder, twin, jacobi):
    results = {}
    for dtype in ("float32", "bfloat16"):
        pipe = twin.StarFlowPipeline.from_pretrained(folder, dtype=dtype)
        results[dtype] = pipe.generate(PROMPTS, seeds=SEEDS, jacobi=jacobi)
        weight = pipe.flow.blocks[-1].attn_blocks[0].mlp.main[0].weight
        assert str(weight.dtype).endswith(dtype)  # the flow (and its KV cache) really ran in `dtype`
    full, half = results["float32"], results["bfloat16"]
    difference = np.abs(full.images - half.images)
    assert 0 < difference.max() <= IMAGE_MAX  # > 0: the bf16 run really ran in bf16
    assert difference.mean() <= IMAGE_MEAN
    assert np.abs(full.latents - half.latents).max() <= LATENT_RELATIVE * np.abs(full.latents).max()
    assert half.precision == Precision("bfloat16")


def test_precision_goes_into_the_png_metadata(folder):
    pipe = mlx_pipeline.StarFlowPipeline.from_pretrained(
        folder, dtype="bfloat16", quantize=8, text_quantize=8
    )
    meta = pipe.generate("a cat", seeds=1).metadata(0)
    assert meta["dtype"] == "bfloat16" and meta["text_dtype"] == "bfloat16"
    assert meta["quantization"] == "flow 8-bit, text encoder 8-bit (group size 64)"
    plain = torch_pipeline.StarFlowPipeline.from_pretrained(folder).generate("a cat", seeds=1).metadata(0)
    assert plain["dtype"] == "float32" and plain["quantization"] == "none"
    with pytest.raises(ValueError, match="MLX-only"):
        torch_pipeline.StarFlowPipeline.from_pretrained(folder, text_quantize=8)


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_flow_arithmetic_stays_float32_in_bfloat16_models(twin):
    """A bf16 model's scale, shift, affine map and guidance are float32: only the network runs
    in bf16. A bf16 step here would round x (values ~4) to 2^-6 and differ by ~1e-2."""
    import torch

    from starflow_core.presets import preset

    rng = np.random.default_rng(0)
    z, shift, raw = (rng.standard_normal((2, 16, 4)).astype(np.float32) * 4 for _ in range(3))
    if twin == "mlx":
        from starflow_mlx import StarFlow
        from starflow_mlx.flow_math import guide_scale_shift, scale_and_log_scale, to_data

        block = StarFlow(preset("tiny")).blocks[-1]
        block.set_dtype(mx.bfloat16)
        a, b = block.head(mx.random.normal((2, 16, 64)).astype(mx.bfloat16))
        dtypes = {a.dtype, b.dtype}
        cast = lambda v: mx.array(v).astype(mx.bfloat16)  # noqa: E731 - network outputs in bf16
        scale, _ = scale_and_log_scale(cast(raw), True)
        x = to_data(mx.array(z), cast(shift), scale)
        guided, _ = guide_scale_shift(cast(shift), scale, cast(shift * 0.5), scale * 1.5, 2.0)
        out = [np.array(v) for v in (scale, x, guided)]
        assert dtypes == {mx.float32}
    else:
        from starflow_torch import StarFlow
        from starflow_torch.flow_math import guide_scale_shift, scale_and_log_scale, to_data

        block = StarFlow(preset("tiny")).blocks[-1].to(torch.bfloat16)
        a, b = block.head(torch.randn(2, 16, 64).to(torch.bfloat16))
        assert {a.dtype, b.dtype} == {torch.float32}
        cast = lambda v: torch.from_numpy(v).to(torch.bfloat16)  # noqa: E731
        scale, _ = scale_and_log_scale(cast(raw), True)
        x = to_data(torch.from_numpy(z), cast(shift), scale)
        guided, _ = guide_scale_shift(cast(shift), scale, cast(shift * 0.5), scale * 1.5, 2.0)
        out = [v.float().numpy() for v in (scale, x, guided)]
    rounded = lambda v: torch.from_numpy(v).to(torch.bfloat16).float().numpy().astype(np.float64)  # noqa: E731
    scale64 = np.log1p(np.exp(rounded(raw) + 0.541324854612918))
    x64 = z.astype(np.float64) * out[0] + rounded(shift)
    assert all(v.dtype == np.float32 for v in out)
    np.testing.assert_allclose(out[0], scale64, rtol=1e-5)  # fp32 softplus of the bf16 network output
    np.testing.assert_allclose(out[1], x64, rtol=1e-5, atol=1e-5)  # fp32 affine map
