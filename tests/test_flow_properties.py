"""Mathematical properties of the flow, in both twins.

- reverse(forward(x)) == x (to 1e-4: float32 round trip through every block);
- the log-det equals log|det dz/dx| from the brute-force autograd Jacobian (1e-4 of
  its scale, float32 Jacobian by finite-free autograd);
- the KV-cached sampler equals a reference loop that re-runs the whole causal
  sequence without a cache for every token (1e-5: same kernels, different shapes),
  also with grouped key/value heads (the cache then holds only the shared heads);
- the score step of an identity flow is exactly (1 - sigma^2) x.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import max_relative_error, to_nchw, to_nhwc
from helpers.twins import TEXT_CONFIG, random_inputs, twin_models

from starflow_core.config import FlowConfig
from starflow_mlx import StarFlow as MlxStarFlow
from starflow_torch import StarFlow as TorchStarFlow

NO_SOS_CONFIG = FlowConfig(
    in_channels=3,
    img_size=4,
    patch_size=2,
    channels=32,
    num_blocks=2,
    layers_per_block=(1, 1),
    head_dim=16,
    rope=False,
    sos=False,
    seq_order="R2L",
)

# the official options: 4 query heads in 2 groups, each sharing one key/value head (the KV
# cache holds 2), SwiGLU, qk-norm, post-norm; head_dim 16 with text (RoPE on the text coordinate)
VARIANT_CONFIG = TEXT_CONFIG.replace(
    channels=64,
    head_dim=16,
    num_kv_heads=2,
    use_swiglu=True,
    use_qk_norm=True,
    use_post_norm=True,
    norm_type="rms_norm",
)


@pytest.mark.parametrize(
    "config", [TEXT_CONFIG, NO_SOS_CONFIG, VARIANT_CONFIG], ids=["text_sos", "no_sos_patch2", "variant_gqa"]
)
def test_inverse_of_forward_is_identity(config, tmp_path):
    torch_model, mlx_model = twin_models(config, tmp_path, scale=0.2)
    x, y = random_inputs(config, 2, config.img_size, config.img_size)
    z_t, _ = torch_model(torch.from_numpy(x), None if y is None else torch.from_numpy(y))
    back_t = torch_model.sample(z_t.detach(), None if y is None else torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(back_t, x, atol=1e-4, rtol=0)
    assert np.abs(z_t.detach().numpy() - x).max() > 1e-2
    z_m, _ = mlx_model(to_nhwc(x), None if y is None else mx.array(y))
    back_m = to_nchw(mlx_model.sample(z_m, None if y is None else mx.array(y)))
    np.testing.assert_allclose(back_m, x, atol=1e-4, rtol=0)


def test_logdet_equals_brute_force_jacobian_torch(tmp_path):
    config = TEXT_CONFIG
    torch_model, _ = twin_models(config, tmp_path, scale=0.3)
    x, y = random_inputs(config, 1, 4, 4)
    y_t = torch.from_numpy(y).double()
    model = torch_model.double()
    x_t = torch.from_numpy(x).double()
    jacobian = torch.autograd.functional.jacobian(
        lambda v: model(v.view_as(x_t), y_t)[0].flatten(), x_t.flatten()
    )
    _, brute = torch.linalg.slogdet(jacobian)
    _, logdet = model(x_t, y_t)
    # the weights run in float64, but the flow arithmetic (scale, log-det) is fp32 by design
    assert abs(logdet.item() - brute.item()) < 1e-6 * max(1.0, abs(brute.item()))


def test_logdet_equals_brute_force_jacobian_mlx(tmp_path):
    config = NO_SOS_CONFIG
    _, model = twin_models(config, tmp_path, scale=0.3)
    x, _ = random_inputs(config, 1, 4, 4)
    flat = mx.array(x.transpose(0, 2, 3, 1).reshape(-1))
    shape = (1, 4, 4, 3)

    def flow(v):
        return model(v.reshape(shape))[0].reshape(-1)

    rows = [mx.grad(lambda v, i=i: flow(v)[i])(flat) for i in range(flat.size)]
    jacobian = np.array(mx.stack(rows)).astype(np.float64)
    _, brute = np.linalg.slogdet(jacobian)
    _, logdet = model(flat.reshape(shape))
    assert abs(float(logdet[0]) - brute) < 1e-4 * max(1.0, abs(brute))


def _reference_sample_torch(model, noise, text):
    """Invert block by block, re-running the full causal sequence (no cache) for every token."""
    from starflow_torch.flow_math import scale_and_log_scale, to_data

    tokens = model.patchify(noise).float()
    H, W = noise.shape[2:]
    for i in reversed(range(len(model.blocks))):
        if model.is_identity(i):
            continue
        block = model.blocks[i]
        rope = model.rope(i, H, W, text.shape[1], noise.device)
        z = block.permute(tokens)
        x = z.clone()
        offset = 0 if model.config.sos else 1
        for t in range(offset, z.shape[1]):
            raw, shift = block.predict(x, text if block.has_text else None, rope)
            scale, _ = scale_and_log_scale(raw, model.config.use_softplus)
            x[:, t] = to_data(z[:, t], shift[:, t], scale[:, t])
        tokens = block.permute(x)
    return model.unpatchify(tokens, H, W)


@pytest.mark.parametrize("config", [TEXT_CONFIG, VARIANT_CONFIG], ids=["text_sos", "variant_gqa"])
def test_kv_cached_sampler_equals_cache_free_reference(config, tmp_path):
    torch_model, mlx_model = twin_models(config, tmp_path, scale=0.2)
    noise, y = random_inputs(config, 2, 4, 4, seed=3)
    with torch.no_grad():
        reference = _reference_sample_torch(torch_model, torch.from_numpy(noise), torch.from_numpy(y)).numpy()
    cached_t = torch_model.sample(torch.from_numpy(noise), torch.from_numpy(y)).numpy()
    cached_m = to_nchw(mlx_model.sample(to_nhwc(noise), mx.array(y)))
    assert max_relative_error(cached_t, reference) < 1e-5
    assert max_relative_error(cached_m, reference) < 1e-4


def test_log_prob_and_bits_per_dim_are_consistent(tmp_path):
    config = TEXT_CONFIG
    torch_model, mlx_model = twin_models(config, tmp_path)
    x, y = random_inputs(config, 2, 4, 4)
    lp_t = torch_model.log_prob(torch.from_numpy(x), torch.from_numpy(y)).detach().numpy()
    lp_m = np.array(mlx_model.log_prob(to_nhwc(x), mx.array(y)))
    assert max_relative_error(lp_m, lp_t) < 1e-5
    bpd = torch_model.bits_per_dim(torch.from_numpy(x), torch.from_numpy(y)).detach().numpy()
    np.testing.assert_allclose(bpd, -lp_t / (x[0].size * np.log(2)), rtol=1e-6)
    z, logdet = torch_model(torch.from_numpy(x), torch.from_numpy(y))
    manual = (
        -0.5 * (z.detach().numpy() ** 2 + np.log(2 * np.pi)).reshape(2, -1).sum(1) + logdet.detach().numpy()
    )
    np.testing.assert_allclose(lp_t, manual, rtol=1e-5)


def test_denoise_moves_along_the_score(tmp_path):
    config = TEXT_CONFIG.replace(noise_std=0.3)
    torch_model, mlx_model = twin_models(config.replace(noise_std=0.0), tmp_path)
    torch_model.config = config
    x, y = random_inputs(config, 2, 4, 4)
    den_t = torch_model.denoise(torch.from_numpy(x), torch.from_numpy(y), noise_std=0.3).numpy()
    den_m = to_nchw(mlx_model.denoise(to_nhwc(x), mx.array(y), noise_std=0.3))
    np.testing.assert_allclose(den_m, den_t, atol=1e-4)
    # for a standard normal prior and a near-identity flow the score is about -x
    assert np.corrcoef((den_t - x).ravel(), -x.ravel())[0, 1] > 0.5


@pytest.mark.parametrize("use_softplus", [True, False], ids=["softplus", "exp"])
def test_denoise_of_an_identity_flow_is_exactly_one_minus_sigma_squared_x(use_softplus, tmp_path):
    """proj_out zero (weight and bias): z = x and log p(x) = log N(x; 0, I), so the score is -x and
    Tweedie's step x + sigma^2 * score is (1 - sigma^2) x (SPEC section 3). The scale is exactly 1
    (softplus(0 + 0.5413...) and exp(0) round to 1.0 in float32), so both twins compute
    x + sigma^2 * (-x) bit for bit; it differs from (1 - sigma^2) * x by float32 rounding only."""
    config = TEXT_CONFIG.replace(use_softplus=use_softplus, noise_std=0.3)
    torch.manual_seed(0)
    torch_model = TorchStarFlow(config).eval()
    with torch.no_grad():
        for block in torch_model.blocks:
            if hasattr(block, "proj_out"):
                block.proj_out.bias.zero_()  # the weight is zero-initialised
    torch_model.save_pretrained(tmp_path)
    mlx_model = MlxStarFlow.from_pretrained(tmp_path)
    x, y = random_inputs(config, 2, 4, 6)  # a non-square grid
    sigma = np.float32(0.3)
    for denoised in (
        torch_model.denoise(torch.from_numpy(x), torch.from_numpy(y)).numpy(),
        to_nchw(mlx_model.denoise(to_nhwc(x), mx.array(y))),
    ):
        np.testing.assert_array_equal(denoised, x + sigma**2 * -x)
        # 1 - sigma^2 rounded first: at most one float32 step apart (|x| < 4, spacing 2.4e-7 there)
        np.testing.assert_allclose(denoised, (1 - sigma**2) * x, rtol=0, atol=2.4e-7)
