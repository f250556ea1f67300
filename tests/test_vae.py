"""MLX SD-VAE and the torch twin against diffusers' AutoencoderKL (the oracle).

Tolerance 1e-4 in float32: the same arithmetic in another order (MLX vs torch convolution
and matmul kernels, fused vs explicit attention) differs by float32 rounding, measured
around 1e-6 on the tiny model; 1e-4 leaves room for other BLAS builds without hiding
a wrong layer (those give errors of order 1e-1).
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
import safetensors.torch
import torch
from helpers.tiny_components import (
    SD_VAE_CONFIG,
    make_tiny_vae_folder,
    make_vae_folder,
    official_finetuned_vae_state,
)

from starflow_mlx.vae import AutoencoderKL
from starflow_torch.vae import AutoencoderKL as TorchAutoencoderKL

FP32_TOLERANCE = 1e-4


def to_nhwc(tensor: torch.Tensor) -> mx.array:
    return mx.array(tensor.permute(0, 2, 3, 1).numpy())


def to_nchw(array: mx.array) -> np.ndarray:
    return np.array(array.astype(mx.float32)).transpose(0, 3, 1, 2)


def max_error(mlx_nhwc: mx.array, torch_nchw: torch.Tensor) -> float:
    return float(np.abs(to_nchw(mlx_nhwc) - torch_nchw.detach().numpy()).max())


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_vae")
    reference = make_tiny_vae_folder(folder)
    return folder, reference


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 16, 24, generator=generator) * 2 - 1  # (B, C, H, W), non-square


def reference_latents(reference, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return reference.encode(images).latent_dist.mean * reference.config.scaling_factor


def reference_images(reference, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return reference.decode(latents / reference.config.scaling_factor).sample


def test_encode_mean_matches_diffusers(tiny_vae, images):
    folder, reference = tiny_vae
    vae = AutoencoderKL.from_pretrained(folder)
    assert max_error(vae.encode(to_nhwc(images)), reference_latents(reference, images)) < FP32_TOLERANCE


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_decode_matches_diffusers_in_any_slice_size(tiny_vae, images, batch_size):
    folder, reference = tiny_vae
    vae = AutoencoderKL.from_pretrained(folder)
    latents = reference_latents(reference, images)
    decoded = vae.decode(to_nhwc(latents), batch_size=batch_size)
    assert decoded.shape == (3, 16, 24, 3)
    assert max_error(decoded, reference_images(reference, latents)) < FP32_TOLERANCE


def test_encode_sample_is_mean_plus_std_times_noise(tiny_vae, images):
    folder, reference = tiny_vae
    vae = AutoencoderKL.from_pretrained(folder)
    key = mx.random.key(7)
    sampled = vae.encode(to_nhwc(images), sample=True, key=key)
    assert np.array_equal(np.array(sampled), np.array(vae.encode(to_nhwc(images), sample=True, key=key)))
    with torch.no_grad():
        posterior = reference.encode(images).latent_dist
    noise = np.array(mx.random.normal(sampled.shape, key=key)).transpose(0, 3, 1, 2)
    expected = (posterior.mean + posterior.std * torch.from_numpy(noise)) * reference.config.scaling_factor
    assert max_error(sampled, expected) < FP32_TOLERANCE


def test_torch_twin_matches_diffusers_and_mlx(tiny_vae, images):
    folder, reference = tiny_vae
    twin = TorchAutoencoderKL.from_pretrained(folder)
    vae = AutoencoderKL.from_pretrained(folder)
    with torch.no_grad():
        latents = twin.encode(images)
        decoded = twin.decode(latents, batch_size=2)
        sampled = twin.encode(images, sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(latents, reference_latents(reference, images))
    # Slices of 2 vs one batch of 3: torch's kernels round differently per batch size.
    torch.testing.assert_close(decoded, reference_images(reference, latents), atol=1e-5, rtol=0)
    assert not torch.equal(sampled, latents)
    assert max_error(vae.encode(to_nhwc(images)), latents) < FP32_TOLERANCE
    assert max_error(vae.decode(to_nhwc(latents)), decoded) < FP32_TOLERANCE


def test_twins_have_the_same_parameter_names(tiny_vae):
    from mlx.utils import tree_flatten

    folder, _ = tiny_vae
    mlx_names = {name for name, _ in tree_flatten(AutoencoderKL.from_pretrained(folder).parameters())}
    assert mlx_names == set(TorchAutoencoderKL.from_pretrained(folder).state_dict())


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_official_finetuned_naming_decodes_identically(tiny_vae, images, tmp_path, suffix):
    folder, reference = tiny_vae
    official = official_finetuned_vae_state(reference.state_dict())
    assert {key.split(".")[0] + "." + key.split(".")[1] for key in official} == {
        "encoder.0",
        "encoder.1",
        "decoder.0",
        "decoder.1",
    }
    weights_file = tmp_path / f"pytorch_model{suffix}"
    if suffix == ".bin":
        torch.save(official, weights_file)
    else:
        safetensors.torch.save_file({k: v.contiguous() for k, v in official.items()}, weights_file)
    latents = reference_latents(reference, images)
    expected = AutoencoderKL.from_pretrained(folder).decode(to_nhwc(latents))
    finetuned = AutoencoderKL.from_pretrained(folder, weights_file=weights_file)
    assert np.array_equal(np.array(finetuned.decode(to_nhwc(latents))), np.array(expected))
    twin = TorchAutoencoderKL.from_pretrained(folder, weights_file=weights_file)
    with torch.no_grad():
        torch.testing.assert_close(
            twin.decode(latents), reference_images(reference, latents), atol=1e-5, rtol=0
        )


def test_deprecated_attention_names_load(tiny_vae, images, tmp_path):
    folder, reference = tiny_vae
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in reference.state_dict().items():
        for new, old in old_names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        state[key] = value.contiguous()
    assert any(".query." in key for key in state)
    weights_file = tmp_path / "old.safetensors"
    safetensors.torch.save_file(state, weights_file)
    latents = to_nhwc(reference_latents(reference, images))
    expected = np.array(AutoencoderKL.from_pretrained(folder).decode(latents))
    decoded = AutoencoderKL.from_pretrained(folder, weights_file=weights_file).decode(latents)
    assert np.array_equal(np.array(decoded), expected)


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_half_precision_stays_finite_and_close(tiny_vae, images, dtype):
    folder, reference = tiny_vae
    vae = AutoencoderKL.from_pretrained(folder, dtype=dtype)
    latents = reference_latents(reference, images)
    encoded = vae.encode(to_nhwc(images))
    decoded = vae.decode(to_nhwc(latents) * 50.0)  # large latents: group norm in fp32 must not overflow
    assert encoded.dtype == dtype and decoded.dtype == dtype
    assert bool(mx.isfinite(decoded).all())
    # 8-bit (bf16) / 11-bit (fp16) mantissas through ~12 layers: a few percent of the value range.
    assert max_error(vae.decode(to_nhwc(latents)), reference_images(reference, latents)) < 0.1


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_bad_images_raise_value_error(tiny_vae, twin):
    folder, _ = tiny_vae
    if twin == "mlx":
        vae, make = AutoencoderKL.from_pretrained(folder), lambda *shape: mx.zeros(shape)
        wrong_channels, not_divisible, wrong_latents, latents = (
            (1, 16, 16, 4),
            (1, 15, 16, 3),
            (1, 8, 8, 5),
            (1, 8, 8, 4),
        )
    else:
        vae, make = TorchAutoencoderKL.from_pretrained(folder), lambda *shape: torch.zeros(shape)
        wrong_channels, not_divisible, wrong_latents, latents = (
            (1, 4, 16, 16),
            (1, 3, 15, 16),
            (1, 5, 8, 8),
            (1, 4, 8, 8),
        )
    with pytest.raises(ValueError, match="channels"):
        vae.encode(make(*wrong_channels))
    with pytest.raises(ValueError, match="4D"):
        vae.encode(make(3, 16, 16))
    with pytest.raises(ValueError, match="divisible by 2"):
        vae.encode(make(*not_divisible))
    with pytest.raises(ValueError, match="latents must be 4D"):
        vae.decode(make(*wrong_latents))
    with pytest.raises(ValueError, match="batch_size"):
        vae.decode(make(*latents), batch_size=0)


@pytest.mark.parametrize("vae_class", [AutoencoderKL, TorchAutoencoderKL])
def test_missing_files_name_the_file(tiny_vae, tmp_path, vae_class):
    folder, _ = tiny_vae
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        vae_class.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        vae_class.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("vae_class", [AutoencoderKL, TorchAutoencoderKL])
def test_mismatched_keys_are_listed(tiny_vae, tmp_path, vae_class):
    folder, reference = tiny_vae
    state = {key: value.contiguous() for key, value in reference.state_dict().items()}
    state["decoder.extra.weight"] = state.pop("decoder.conv_out.bias")
    weights_file = tmp_path / "broken.safetensors"
    safetensors.torch.save_file(state, weights_file)
    with pytest.raises(
        ValueError, match=r"broken\.safetensors.*missing keys \['decoder\.conv_out\.bias'\]"
    ) as info:
        vae_class.from_pretrained(folder, weights_file=weights_file)
    assert "unexpected keys ['decoder.extra.weight']" in str(info.value)


def test_config_that_does_not_match_the_weights(tiny_vae, tmp_path):
    folder, _ = tiny_vae
    config = json.loads((folder / "config.json").read_text())
    config["latent_channels"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(
        (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="shapes do not match.*conv_out.weight"):
        AutoencoderKL.from_pretrained(tmp_path)
    config["latent_channels"], config["made_up_key"] = 4, 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="made_up_key"):
        AutoencoderKL.from_pretrained(tmp_path)


@pytest.mark.slow
def test_sd_vae_architecture_matches_diffusers(tmp_path):
    """stabilityai/sd-vae-ft-ema layout (128/256/512/512, 2 layers, 32 groups), random weights, 64x64."""
    reference = make_vae_folder(tmp_path, SD_VAE_CONFIG, seed=3)
    vae = AutoencoderKL.from_pretrained(tmp_path)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    latents = reference_latents(reference, images)
    decoded = reference_images(reference, latents)
    # Deeper and wider than the tiny model: compare relative to the output scale.
    latent_error = max_error(vae.encode(to_nhwc(images)), latents) / float(latents.abs().max())
    image_error = max_error(vae.decode(to_nhwc(latents)), decoded) / float(decoded.abs().max())
    assert latent_error < FP32_TOLERANCE and image_error < FP32_TOLERANCE
