"""Peak memory of loading, quantized loading, sampling and the score step (MLX, mx.get_peak_memory).

MLX counts the bytes its arrays hold (on CPU as on a GPU), so each ratio below is measured the
same way on this machine as on a Mac. Shapes are small but chosen so that the old behaviour
breaks each bound: the largest tensor is a few percent of a model (loading), and the score
step runs over enough tokens and layers that keeping every layer's activations costs several
times the weights.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from starflow_core.presets import preset
from starflow_mlx import StarFlow
from starflow_mlx.t5 import T5Encoder
from tests.helpers.tiny_components import make_tiny_t5_folder
from tests.helpers.twins import random_torch_model

# Loading may hold the model in the target dtype plus the tensor being converted: the largest
# tensor here is 2% of the parameters, so 1.15x leaves room for allocator rounding only.
LOAD_BOUND = 1.15
# A guided sample and its score step may hold the weights, the KV caches and one layer's
# activations (issue 17: 1.5x the flow's weight bytes at the 3B model's 1,024 tokens).
RUN_BOUND = 1.5

# 18 layers of width 128: 3.6M parameters, largest tensor (128 x 512) 1.8% of them.
LOAD_CONFIG = preset("bench-small").replace(channels=128, head_dim=64, txt_size=8, txt_dim=64)
# 12 layers of width 128 over 8x8 latent tokens + 8 text tokens: the score step without
# recompute holds ~4x the weights, with it ~1.3x.
RUN_CONFIG = preset("bench-small").replace(
    channels=128, head_dim=64, img_size=8, txt_size=8, txt_dim=64, layers_per_block=(2, 2, 2, 2, 2, 2)
)


def weight_bytes(model) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def peak_of(run):
    """(result, peak bytes above what was allocated before `run`)."""
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    result = run()
    return result, mx.get_peak_memory() - base


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    random_torch_model(LOAD_CONFIG).save_pretrained(root / "fp32")
    random_torch_model(LOAD_CONFIG).save_pretrained(root / "bf16", dtype=torch.bfloat16)
    random_torch_model(RUN_CONFIG, scale=0.1).save_pretrained(root / "run")
    return root


@pytest.mark.parametrize(
    "folder, dtype",
    [("fp32", mx.float32), ("fp32", mx.bfloat16), ("bf16", mx.bfloat16), ("fp32", None)],
    ids=["fp32-as-fp32", "fp32-as-bf16", "bf16-as-bf16", "as-stored"],
)
def test_loading_peak_is_the_target_dtype_bytes(folders, folder, dtype):
    model, peak = peak_of(lambda: StarFlow.from_pretrained(folders / folder, dtype=dtype))
    target = weight_bytes(model)
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {dtype or mx.float32}
    assert peak <= LOAD_BOUND * target, f"peak {peak / target:.2f}x the {dtype} weights"


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_loading_never_holds_the_full_precision_model(folders, bits):
    """Quantized as it loads: the peak is the quantized model plus about one full-precision layer,
    and the result is exactly the full load quantized afterwards; the folder saves and reloads."""
    model, peak = peak_of(lambda: StarFlow.from_pretrained(folders / "fp32", quantize=bits))
    quantized = weight_bytes(model)
    layer = max(
        v.nbytes for name, v in tree_flatten(StarFlow(LOAD_CONFIG).parameters()) if "attn_blocks" in name
    )
    assert peak <= LOAD_BOUND * (quantized + layer), f"peak {peak / quantized:.2f}x the {bits}-bit weights"
    assert model.config.quantization == (bits, 64)

    reference = StarFlow.from_pretrained(folders / "fp32").quantize(bits)
    rng = np.random.default_rng(0)
    x = mx.array(rng.standard_normal((1, 4, 4, 4), dtype=np.float32))  # 16 tokens: MLX's CPU qmm is slow
    y = mx.array(rng.standard_normal((1, 8, 64), dtype=np.float32))
    assert np.array_equal(np.array(model(x, y)[0]), np.array(reference(x, y)[0]))

    model.save_pretrained(folders / f"q{bits}")
    assert json.loads((folders / f"q{bits}" / "config.json").read_text())["quantization"] == [bits, 64]
    again = StarFlow.from_pretrained(folders / f"q{bits}")
    assert np.array_equal(np.array(again(x, y)[0]), np.array(reference(x, y)[0]))


def test_t5_loads_in_the_target_dtype_and_quantized(tmp_path):
    """fp32 T5 weights (as on the Hub) read straight into bf16 or 8 bits, never fp32 first."""
    from transformers import T5Config, T5EncoderModel

    make_tiny_t5_folder(tmp_path)  # tokenizer files; weights replaced by an 8-layer, width-64 encoder
    config = T5Config(vocab_size=260, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=8)
    config.feed_forward_proj, config.dense_act_fn, config.is_gated_act = "gated-gelu", "gelu_new", True
    torch.manual_seed(0)
    reference = T5EncoderModel(config).eval()  # transformers' initialisation: T5's weight scales
    reference.save_pretrained(tmp_path)
    model, peak = peak_of(lambda: T5Encoder.from_pretrained(tmp_path, dtype=mx.bfloat16))
    assert peak <= LOAD_BOUND * weight_bytes(model)
    quantized, peak = peak_of(lambda: T5Encoder.from_pretrained(tmp_path, dtype=mx.float32, quantize=8))
    largest = 260 * 64 * 4  # the embedding in fp32, the largest tensor read
    assert peak <= LOAD_BOUND * (weight_bytes(quantized) + largest)
    assert weight_bytes(quantized) < 0.35 * weight_bytes(T5Encoder.from_pretrained(tmp_path))

    ids = torch.tensor([[5, 9, 17, 33, 1]])
    with torch.no_grad():
        expected = reference(input_ids=ids).last_hidden_state.numpy()
    got = np.array(quantized(mx.array(ids.numpy()), mx.ones(ids.shape, dtype=mx.int32)))
    # 8-bit affine weights (step (max - min) / 255 per group of 64) through 8 layers: measured
    # 2.6% of the feature scale (fp32 unquantized: 1e-6); 6% would be a wrong group size or bits.
    assert 0 < np.abs(got - expected).max() < 0.06 * np.abs(expected).max()


@pytest.fixture(scope="module")
def run_model(folders):
    model = StarFlow.from_pretrained(folders / "run")
    rng = np.random.default_rng(0)
    noise = mx.array(rng.standard_normal((1, 8, 8, 4), dtype=np.float32))
    y = mx.array(rng.standard_normal((1, 8, 64), dtype=np.float32))
    return model, noise, y


@pytest.mark.parametrize("jacobi", [False, True], ids=["sequential", "jacobi"])
def test_guided_denoised_generation_peak(run_model, jacobi):
    model, noise, y = run_model
    weights = weight_bytes(model)

    def generate():
        x = model.sample(noise, y, mx.zeros_like(y), 2.0, jacobi=jacobi, block_size=8, max_iter=4)
        mx.eval(x)
        denoised = model.denoise(x, y)
        mx.eval(denoised)
        return denoised

    before = mx.get_active_memory()
    denoised, peak = peak_of(generate)
    assert np.isfinite(np.array(denoised)).all()
    assert peak + weights <= RUN_BOUND * weights, f"{(peak + weights) / weights:.2f}x the weights"
    # sampling leaves nothing behind (the compiled steps once kept every block's KV cache: 1.1x
    # the caches of this model, about 12% of its weights)
    assert mx.get_active_memory() - before - denoised.nbytes < 0.01 * weights


@pytest.mark.parametrize("head_groups", [False, True], ids=["all-heads", "one-head-groups"])
def test_recompute_gives_the_same_score_in_bounded_memory(run_model, head_groups, monkeypatch):
    """Per-layer recompute, attention and MLP recomputed apart, attention in head groups (forced
    to one head a group here; at these 72 positions all heads fit the scratch budget)."""
    import starflow_mlx.layers as layers

    if head_groups:
        monkeypatch.setattr(layers, "ATTENTION_SCRATCH_BYTES", 1)
    model, noise, y = run_model
    x = noise * 0.5

    def score(recompute):
        grad = mx.grad(lambda v: mx.sum(model.log_prob(v, y, recompute=recompute)))(x)
        mx.eval(grad)
        return grad

    weights = weight_bytes(model)
    kept, kept_peak = peak_of(lambda: score(False))
    recomputed, recomputed_peak = peak_of(lambda: score(True))
    # the same arithmetic, the attention of a head group in its own kernel call (a different GEMM
    # blocking): fp32 round-off through 12 layers' backward, observed 1.1e-5 of the largest
    # gradient (~3e3); a wrong rope, mask or head slice moves it by order 1.
    kept, recomputed = np.array(kept), np.array(recomputed)
    assert np.abs(recomputed - kept).max() <= 1e-4 * np.abs(kept).max()
    print(
        f"score step: {(kept_peak + weights) / weights:.2f}x keeping every layer's activations, "
        f"{(recomputed_peak + weights) / weights:.2f}x recomputing"
    )
    assert (kept_peak + weights) / weights > RUN_BOUND  # this shape shows the effect (measured 1.71)
    assert (recomputed_peak + weights) / weights <= RUN_BOUND


def test_torch_recompute_gives_the_same_score(monkeypatch):
    """torch.utils.checkpoint per layer, per sub-block and per head group (forced to one head) in
    the torch twin's score step: the same gradient."""
    import starflow_torch.layers as layers

    monkeypatch.setattr(layers, "ATTENTION_SCRATCH_BYTES", 1)
    model = random_torch_model(RUN_CONFIG, scale=0.1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=generator).requires_grad_(True)
    y = torch.randn(1, 8, 64, generator=generator)
    kept = torch.autograd.grad(model.log_prob(x, y).sum(), x)[0]
    recomputed = torch.autograd.grad(model.log_prob(x, y, recompute=True).sum(), x)[0]
    # fp32 round-off only (per-group attention kernels), as in the MLX test above
    assert (recomputed - kept).abs().max() <= 1e-4 * kept.abs().max()
    assert torch.equal(model.denoise(x.detach(), y), model.denoise(x.detach(), y))


def test_vae_convolutions_in_bands_are_exact_and_smaller(monkeypatch):
    """MLX's CPU convolution unfolds its whole input; bands of rows bound that scratch and give
    the same numbers (each output pixel is the same dot product over the same inputs)."""
    import mlx.nn as nn

    import starflow_mlx.vae as vae

    conv = vae.Conv2d(32, 16, kernel_size=3, padding=1)
    x = mx.random.normal((1, 96, 64, 32))
    mx.eval(conv.parameters(), x)

    def convolve(call):
        out = call(conv, x)
        mx.eval(out)
        return out

    whole, whole_peak = peak_of(lambda: convolve(nn.Conv2d.__call__))
    monkeypatch.setattr(vae, "CONV_SCRATCH_BYTES", 256 * 1024)  # ~10 rows of 64 x 32 x 9 floats
    banded, banded_peak = peak_of(lambda: convolve(vae.Conv2d.__call__))
    # the same dot products: equal up to the BLAS's blocking (observed bit-identical)
    np.testing.assert_allclose(np.array(banded), np.array(whole), rtol=0, atol=1e-5)
    assert banded_peak < 0.5 * whole_peak


def test_recompute_with_grouped_query_heads_and_variants(monkeypatch):
    """Per-head-group recompute with grouped key/value heads (2 query heads per key/value head),
    SwiGLU, RMS norms and qk-norm: the same score as keeping everything, in both twins."""
    import starflow_mlx.layers as mlx_layers
    import starflow_torch.layers as torch_layers

    monkeypatch.setattr(mlx_layers, "ATTENTION_SCRATCH_BYTES", 1)  # one key/value group at a time
    monkeypatch.setattr(torch_layers, "ATTENTION_SCRATCH_BYTES", 1)
    config = RUN_CONFIG.replace(
        head_dim=32,  # 4 query heads over 2 key/value heads
        layers_per_block=(1, 1, 1, 1, 1, 2),
        num_kv_heads=2,
        use_swiglu=True,
        norm_type="rms_norm",
        use_qk_norm=True,
    )
    torch_model = random_torch_model(config, scale=0.1)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    y = torch.randn(1, 8, 64, generator=generator)
    grads = []
    for recompute in (False, True):
        v = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(torch_model.log_prob(v, y, recompute=recompute).sum(), v)[0])
    assert (grads[1] - grads[0]).abs().max() <= 1e-4 * grads[0].abs().max()  # fp32 round-off

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        torch_model.save_pretrained(folder)
        model = StarFlow.from_pretrained(folder)
    xs, ys = mx.array(x.permute(0, 2, 3, 1).numpy()), mx.array(y.numpy())
    scores = [
        np.array(mx.grad(lambda v, r=r: mx.sum(model.log_prob(v, ys, recompute=r)))(xs))
        for r in (False, True)
    ]
    assert np.abs(scores[1] - scores[0]).max() <= 1e-4 * np.abs(scores[0]).max()
    np.testing.assert_allclose(
        scores[1].transpose(0, 3, 1, 2), grads[0].numpy(), rtol=0, atol=1e-3 * np.abs(scores[0]).max()
    )


def test_pieces_one_at_a_time_bound_the_gradients_scratch():
    """in_order: attention head by head and an MLP by quarters of the positions give the plain
    gradients bit for bit, with a fraction of the scratch (measured at 1,152 positions: attention
    285 -> 79 MB, MLP 227 -> 67 MB; here 512 positions, 8 heads)."""
    from starflow_mlx.layers import in_order, position_pieces

    q, k, v = (mx.random.normal((1, 8, 512, 32), key=mx.random.key(i)) for i in range(3))
    mx.eval(q, k, v)

    def attend(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask="causal")

    heads = [(i, i + 1) for i in range(8)]

    def gradient(attention):
        grads = mx.grad(lambda a, b, c: mx.sum(attention(a, b, c) ** 2), argnums=(0, 1, 2))(q, k, v)
        mx.eval(grads)
        return grads

    plain, plain_peak = peak_of(lambda: gradient(attend))
    ordered, ordered_peak = peak_of(
        lambda: gradient(lambda a, b, c: in_order(attend, [a, b, c], [1, 1, 1], [heads] * 3, 1))
    )
    for got, want in zip(ordered, plain, strict=True):
        np.testing.assert_array_equal(np.array(got), np.array(want))  # the same operations, piece by piece
    # measured 12.9 vs 29.1 MB (0.44); without the order 30.2 MB (1.04): 0.6 tells them apart
    assert ordered_peak < 0.6 * plain_peak, (ordered_peak, plain_peak)

    weight = mx.random.normal((256, 8192), key=mx.random.key(5)) * 0.05  # a wide hidden layer
    x = mx.random.normal((1, 512, 256), key=mx.random.key(6))
    mx.eval(weight, x)

    def mlp(h):
        return mx.tanh(h @ weight) @ weight.T

    def mlp_gradient(f):
        grad = mx.grad(lambda h: mx.sum(f(h) ** 2))(x)
        mx.eval(grad)
        return grad

    whole, whole_peak = peak_of(lambda: mlp_gradient(mlp))
    pieces, pieces_peak = peak_of(
        lambda: mlp_gradient(lambda h: in_order(mlp, [h], [1], [position_pieces(512)], 1))
    )
    np.testing.assert_allclose(
        np.array(pieces), np.array(whole), rtol=1e-5, atol=1e-6
    )  # row blocks of a GEMM
    # measured 35 vs 68 MB (0.52): the four hidden quarters never coexist
    assert pieces_peak < 0.7 * whole_peak, (pieces_peak, whole_peak)
