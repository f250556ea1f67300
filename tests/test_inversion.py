"""The guided sampler's exact inverse, StarFlow.invert, in both twins.

- sample(invert(x)) == x under every guidance form (STARFlow Gaussian, TARFlow linear on raw
  outputs, annealed weights, attention temperature; grouped key/value heads and the other
  official variants), to 1e-4: a float32 round trip through
  every block, as for the forward pass (test_flow_properties);
- without guidance invert is the forward pass (TARFlow: divided by sqrt(var)), to 1e-6;
- its log-det is log|det d invert / dx| from the brute-force float64 autograd Jacobian, so
  log N(invert(x)) + log-det is the exact log-density of the guided sampler's output;
- the twins agree (1e-5 of the scale: same maths, different kernels).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import max_relative_error, to_nchw, to_nhwc
from helpers.twins import TEXT_CONFIG as SHARED_TEXT_CONFIG
from helpers.twins import random_inputs, twin_models

from starflow_core.config import FlowConfig

TEXT_CONFIG = SHARED_TEXT_CONFIG.replace(
    cond_top_only=False  # guidance in every block, so the shallow blocks' inverse is guided too
)
VARIANT_CONFIG = TEXT_CONFIG.replace(  # the official architectural options (issue 13) together
    head_dim=16,
    num_heads=4,  # 4 x 16 query dims on 32 channels: query_heads set apart from channels // head_dim
    num_kv_heads=2,
    use_swiglu=True,
    use_qk_norm=True,
    use_post_norm=True,
    hf_style_rope=True,
    norm_type="rms_norm",
    use_bias=False,
)
LABEL_CONFIG = TEXT_CONFIG.replace(num_classes=3, txt_size=1, txt_dim=4, cond_top_only=True)
TARFLOW_CONFIG = FlowConfig(
    family="tarflow",
    in_channels=3,
    img_size=4,
    patch_size=2,
    channels=32,
    head_dim=16,
    num_blocks=2,
    layers_per_block=(1, 1),
    num_classes=2,
)
CASES = {
    "text_guided": (TEXT_CONFIG, {"guidance": 2.0}),
    "text_annealed_temp": (TEXT_CONFIG, {"guidance": 2.0, "annealed_guidance": True, "attn_temp": 0.8}),
    "label_guided": (LABEL_CONFIG, {"guidance": 1.5}),
    "variants_gqa_guided": (VARIANT_CONFIG, {"guidance": 2.0, "attn_temp": 0.8}),
    "tarflow_guided": (TARFLOW_CONFIG, {"guidance": 1.5, "annealed_guidance": True, "attn_temp": 1.3}),
}


def null_condition(config: FlowConfig, y: np.ndarray | None):
    """y_null for text models (the null prompt's features: zeros here); labels use the null label."""
    if config.txt_dim and not config.label_conditioned:
        return np.zeros_like(y)
    return None


def models_and_inputs(config, tmp_path):
    # All variants together at weight scale 0.2 give a guided sampler that amplifies a 1e-6 change
    # of z 5,000-fold (measured at attn_temp 0.8), so float32 rounding alone moved the round trip
    # by 7e-3 (float64 weights: 2e-3); at 0.1 the gain is ~12 and the round trip holds to 1e-5.
    scale = 0.1 if config is VARIANT_CONFIG else 0.2
    torch_model, mlx_model = twin_models(config, tmp_path, scale=scale)
    if config.family == "tarflow":  # a prior variance other than one
        with torch.no_grad():
            torch_model.var.uniform_(0.7, 1.3)
        torch_model.save_pretrained(tmp_path)
        mlx_model = type(mlx_model).from_pretrained(tmp_path)
    x, y = random_inputs(config, 2, config.img_size, config.img_size)
    return torch_model, mlx_model, x, y, null_condition(config, y)


def as_torch(array):
    return None if array is None else torch.from_numpy(array)


def as_mlx(array):
    return None if array is None else mx.array(array)


@pytest.mark.parametrize("case", list(CASES))
def test_sample_inverts_invert(case, tmp_path):
    config, options = CASES[case]
    torch_model, mlx_model, x, y, y_null = models_and_inputs(config, tmp_path)
    options = {"annealed_guidance": False, "attn_temp": 1.0, **options}
    guidance = options.pop("guidance")
    with torch.no_grad():
        z_t, logdet_t = torch_model.invert(
            torch.from_numpy(x), as_torch(y), as_torch(y_null), guidance, **options
        )
        back_t = torch_model.sample(z_t, as_torch(y), as_torch(y_null), guidance, **options).numpy()
    np.testing.assert_allclose(back_t, x, atol=1e-4, rtol=0)
    z_m, logdet_m = mlx_model.invert(to_nhwc(x), as_mlx(y), as_mlx(y_null), guidance, **options)
    back_m = to_nchw(mlx_model.sample(z_m, as_mlx(y), as_mlx(y_null), guidance, **options))
    np.testing.assert_allclose(back_m, x, atol=1e-4, rtol=0)
    # the guided inverse is not the plain forward pass (else this test would not test guidance)
    with torch.no_grad():
        plain, _ = torch_model(torch.from_numpy(x), as_torch(y))
    assert np.abs(plain.numpy() - z_t.numpy()).max() > 1e-2
    assert max_relative_error(to_nchw(z_m), z_t.numpy()) < 1e-5
    assert max_relative_error(np.array(logdet_m), logdet_t.numpy()) < 1e-5
    # sequential and converged Jacobi sampling are the same map, so Jacobi inverts it as well
    if config.sos:
        jacobi = to_nchw(
            mlx_model.sample(
                z_m, as_mlx(y), as_mlx(y_null), guidance, jacobi=True, block_size=4, tol=1e-12, **options
            )
        )
        np.testing.assert_allclose(jacobi, x, atol=1e-4, rtol=0)


@pytest.mark.parametrize("config", [TEXT_CONFIG, TARFLOW_CONFIG], ids=["starflow", "tarflow"])
def test_unguided_inverse_is_the_forward_pass(config, tmp_path):
    torch_model, mlx_model, x, y, _ = models_and_inputs(config, tmp_path)
    with torch.no_grad():
        z, logdet = torch_model(torch.from_numpy(x), as_torch(y))
        inverted, inverted_logdet = torch_model.invert(torch.from_numpy(x), as_torch(y))
    var = torch_model.var.numpy() if config.family == "tarflow" else None
    if var is not None:  # the forward pass leaves the prior variance to log_prob
        tokens = torch_model.patchify(z) / torch.from_numpy(var).sqrt()
        z = torch_model.unpatchify(tokens, 4, 4)
        logdet = logdet - 0.5 * np.log(var).sum()
    np.testing.assert_allclose(inverted.numpy(), z.numpy(), atol=1e-6, rtol=0)  # same ops, fp32
    np.testing.assert_allclose(inverted_logdet.numpy(), logdet.numpy(), rtol=1e-6)
    z_m, logdet_m = mlx_model.invert(to_nhwc(x), as_mlx(y))
    assert max_relative_error(to_nchw(z_m), z.numpy()) < 1e-5  # twins: 1e-5 of the scale


@pytest.mark.parametrize("case", ["text_annealed_temp", "tarflow_guided", "variants_gqa_guided"])
def test_guided_logdet_equals_brute_force_jacobian(case, tmp_path):
    config, options = CASES[case]
    torch_model, _, x, y, y_null = models_and_inputs(config, tmp_path)
    model = torch_model.double()
    x_t = torch.from_numpy(x[:1]).double()
    y_t = None if y is None else torch.from_numpy(y[:1])
    y_t = y_t.double() if y_t is not None and y_t.is_floating_point() else y_t
    y_null_t = None if y_null is None else torch.from_numpy(y_null[:1]).double()
    jacobian = torch.autograd.functional.jacobian(
        lambda v: model.invert(v.view_as(x_t), y_t, y_null_t, **options)[0].flatten(), x_t.flatten()
    )
    _, brute = torch.linalg.slogdet(jacobian)
    _, logdet = model.invert(x_t, y_t, y_null_t, **options)
    # float64 weights, but the affine arithmetic (scales, log-det) is fp32 by design: 1e-5 of the scale
    assert abs(logdet.item() - brute.item()) < 1e-5 * max(1.0, abs(brute.item()))
